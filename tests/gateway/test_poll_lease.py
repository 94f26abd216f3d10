"""One poller per mailbox across processes: two ``postdesk poll`` on one database (SQLite
and PostgreSQL) against a real Dovecot. Only the lease holder fetches; a frozen holder loses
the mailbox once its lease expires, a killed one at once; every message is stored once."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from dovecot import PASSWORD, Dovecot
from helpers import Instance, make_mail
from rolekit import IMAP_MAILBOX, Role, wait_until
from sqlalchemy import func, select

from engine.leases import holders
from engine.store.models import Message

LEASE = 3  # seconds


@pytest.fixture(autouse=True)
def imap_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTDESK_TEST_IMAP_PW", PASSWORD)


def _holder_pid(instance: Instance) -> int | None:
    lease = holders(instance.engine).get("imap:imapbox/mailbox")
    return int(lease["holder"].split(":")[1]) if lease and not lease["expired"] else None


def _stored(instance: Instance) -> tuple[int, int]:
    with instance.engine.connect() as conn:
        return tuple(conn.execute(select(func.count(),
                                         func.count(Message.message_id_header.distinct()))).one())


def _deliver(dovecot: Dovecot, user: str, start: int, count: int) -> None:
    dovecot.deliver_many(user, [make_mail(f"lease {i}", message_id=f"<lease-{i}@client.test>",
                                          body="Where is my parcel?\n" * 20)
                                for i in range(start, start + count)])


def test_one_poller_fetches_and_the_other_takes_over(dovecot: Dovecot,
                                                    instance: Instance) -> None:
    user = dovecot.new_user()
    instance.write(extra=IMAP_MAILBOX.format(port=dovecot.port, user=user, lease=LEASE))
    first = Role(instance, "poll", name="poll-a")
    second: Role | None = None
    try:
        wait_until(lambda: _holder_pid(instance) == first.pid, 60, "first poller's lease")
        second = Role(instance, "poll", name="poll-b")
        _deliver(dovecot, user, 0, 40)
        wait_until(lambda: _stored(instance) == (40, 40), 60, "first batch stored")
        time.sleep(LEASE)
        assert _holder_pid(instance) == first.pid and second.alive()
        assert "lease taken" not in second.log()  # it never polled
        report = json.loads(instance.cli("status", "--json").stdout)
        assert f":{first.pid}:" in report["imap"][0]["lease"]["holder"]
        assert f":{first.pid}:" in instance.cli("status").stdout  # "polled by host:pid:..."

        # frozen (not dead): its lease runs out, then the other takes the mailbox
        os.kill(first.pid, signal.SIGSTOP)
        frozen_until = holders(instance.engine)["imap:imapbox/mailbox"]["until"]
        _deliver(dovecot, user, 40, 40)
        wait_until(lambda: _holder_pid(instance) == second.pid, 30, "takeover after expiry")
        taken = holders(instance.engine)["imap:imapbox/mailbox"]
        assert taken["since"] >= frozen_until
        wait_until(lambda: _stored(instance) == (80, 80), 60, "second batch stored")
        os.kill(first.pid, signal.SIGCONT)  # it wakes up, finds the lease gone, stands by
        wait_until(lambda: "lease lost" in first.log(), 30, "first poller noticed")
        time.sleep(LEASE)
        assert _holder_pid(instance) == second.pid and first.alive()

        # killed mid-drain: the first takes over and every message is stored once
        _deliver(dovecot, user, 80, 400)
        wait_until(lambda: _stored(instance)[0] >= 100, 60, "third batch started")
        second.kill()
        wait_until(lambda: _holder_pid(instance) == first.pid, 30, "takeover after kill")
        wait_until(lambda: dovecot.count(user, "INBOX") == 0, 90, "INBOX drained")
        assert _stored(instance) == (480, 480)
        assert dovecot.count(user, "Processed") == 480
        assert first.stop() == 0
        assert holders(instance.engine) == {}  # released on a clean stop
    finally:
        for role in (first, second):
            if role is not None:
                if role.alive():
                    os.kill(role.pid, signal.SIGCONT)
                role.kill()
