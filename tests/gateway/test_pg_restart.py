"""A PostgreSQL restart or outage under load: the gateway answers 451 while the database is
gone, reconnects by itself when it is back, and every message it acknowledged with 250 is
stored exactly once; the outbox worker and the IMAP poller of ``serve`` carry on too."""

from __future__ import annotations

import smtplib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dovecot import PASSWORD, Dovecot
from helpers import Instance, make_mail
from outboxkit import outbox_config, prepare
from postgres import Server, fresh_database, server
from relay import Relay
from rolekit import IMAP_MAILBOX, Role, wait_until
from sqlalchemy import func, select

from engine.store.models import Message


@pytest.fixture
def pg() -> Iterator[Server]:
    with server() as running:
        yield running


@pytest.fixture
def instance(pg: Server, tmp_path: Path) -> Iterator[Instance]:
    inst = Instance(tmp_path / "instance", db_url=fresh_database(pg.url))
    yield inst
    if inst._engine is not None:
        inst._engine.dispose()


@dataclass
class Senders:
    """Client connections sending unique messages until stopped, recording each reply."""

    port: int
    connections: int = 4
    acked: list[str] = field(default_factory=list)  # Message-IDs that got a 250
    tempfails: int = 0
    other: list[str] = field(default_factory=list)  # anything but 250 and 4xx
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True)
                        for n in range(self.connections)]
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)

    def _run(self, n: int) -> None:
        sequence = 0
        while not self.stopping.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=60) as client:
                    while not self.stopping.is_set():
                        sequence += 1
                        self._send(client, f"<pg-{n}-{sequence}@client.test>")
            except (OSError, smtplib.SMTPServerDisconnected) as exc:
                with self.lock:
                    self.other.append(f"connection: {exc}")
                time.sleep(0.1)

    def _send(self, client: smtplib.SMTP, message_id: str) -> None:
        try:
            client.sendmail("customer@client.test", ["support@example.test"],
                            make_mail("restart", message_id=message_id))
        except smtplib.SMTPDataError as exc:
            with self.lock:
                if 400 <= exc.smtp_code < 500:
                    self.tempfails += 1
                else:
                    self.other.append(f"{exc.smtp_code} {exc.smtp_error!r}")
            time.sleep(0.05)  # as an MTA would: not in a tight loop
            return
        with self.lock:
            self.acked.append(message_id)

    def more_acked(self, than: int, by: int = 30) -> bool:
        return len(self.acked) >= than + by


def _stored_counts(instance: Instance) -> dict[str, int]:
    with instance.engine.connect() as conn:
        return dict(conn.execute(select(Message.message_id_header, func.count())
                                 .group_by(Message.message_id_header)).all())


def test_gateway_answers_451_while_postgres_is_down_and_loses_nothing(
        pg: Server, instance: Instance) -> None:
    instance.write()
    gateway = Role(instance, "gateway", name="gateway").wait_port(instance.smtp)
    senders = Senders(instance.smtp)
    try:
        wait_until(lambda: senders.more_acked(0, 50), 60, "mail flowing")
        pg.restart()  # pg_ctl restart -m fast: every connection is cut
        after_restart = len(senders.acked)
        wait_until(lambda: senders.more_acked(after_restart), 60, "mail after the restart")

        before_outage = senders.tempfails
        pg.stop()
        time.sleep(4)
        during_outage = senders.tempfails - before_outage
        acked_while_down = len(senders.acked)
        time.sleep(1)
        assert len(senders.acked) == acked_while_down  # no 250 without a database
        pg.start()
        wait_until(lambda: senders.more_acked(acked_while_down), 60, "mail after the outage")
        senders.stop()

        assert during_outage > 0  # temporary failures, not a hang
        assert gateway.alive()
        stored = _stored_counts(instance)
        assert all(stored.get(mid) == 1 for mid in senders.acked), "a 250 lost or doubled"
        assert max(stored.values()) == 1
        assert not [o for o in senders.other if not o.startswith("connection")], senders.other
        with smtplib.SMTP("127.0.0.1", instance.smtp, timeout=30) as client:
            client.sendmail("customer@client.test", ["support@example.test"],
                            make_mail("after", message_id="<pg-after@client.test>"))
        assert _stored_counts(instance)["<pg-after@client.test>"] == 1
        assert gateway.stop() == 0
    finally:
        senders.stop()
        gateway.kill()


def test_gateway_started_while_postgres_is_down_waits_for_it(
        pg: Server, instance: Instance) -> None:
    """A gateway starting before its PostgreSQL (a host booting, a failover) waits for the
    database (``database.startup_wait``) instead of exiting, and serves once it is up."""
    instance.write()
    pg.stop()
    gateway = Role(instance, "gateway", name="gateway")
    try:
        wait_until(lambda: "connecting: the store is unavailable" in gateway.log(), 30,
                   "start-up retrying")
        time.sleep(1)
        assert gateway.alive(), gateway.log()
        pg.start()
        gateway.wait_port(instance.smtp, 60)
        _send(instance, "<after-start@client.test>")
        assert _stored_counts(instance) == {"<after-start@client.test>": 1}
        assert gateway.stop() == 0
    finally:
        gateway.kill()


RULES = """\
version: 1
rules:
  - name: ack-everything
    type: auto-acknowledge
    accounts: [support]
    template: ack
"""


def test_serve_keeps_sending_and_polling_across_a_postgres_outage(
        pg: Server, instance: Instance, relay: Relay, dovecot: Dovecot,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTDESK_TEST_IMAP_PW", PASSWORD)
    user = dovecot.new_user()
    prepare(instance, relay, RULES)
    head, relay_driver = outbox_config(relay).split("drivers:\n")  # one drivers: mapping
    mailbox = IMAP_MAILBOX.format(port=dovecot.port, user=user, lease=3)
    instance.write(extra=mailbox + relay_driver + head)
    serve = Role(instance, "serve", name="serve").wait_port(instance.smtp)
    try:
        _send(instance, "<before@client.test>")
        relay.wait_for(1)
        dovecot.deliver(user, make_mail("polled before", message_id="<imap-1@client.test>"))
        wait_until(lambda: "<imap-1@client.test>" in _stored_counts(instance), 30, "polled")

        pg.stop()
        dovecot.deliver(user, make_mail("polled during", message_id="<imap-2@client.test>"))
        time.sleep(5)  # longer than the lease: the poller loses it and must win it back
        pg.start()

        _send(instance, "<after@client.test>")
        relay.wait_for(2, timeout=60)
        wait_until(lambda: "<imap-2@client.test>" in _stored_counts(instance), 60,
                   "polled after the outage")
        dovecot.deliver(user, make_mail("polled after", message_id="<imap-3@client.test>"))
        wait_until(lambda: "<imap-3@client.test>" in _stored_counts(instance), 60,
                   "IDLE again")
        assert max(_stored_counts(instance).values()) == 1
        assert serve.alive() and serve.stop() == 0
    finally:
        serve.kill()


def _send(instance: Instance, message_id: str) -> None:
    with smtplib.SMTP("127.0.0.1", instance.smtp, timeout=30) as client:
        client.sendmail("customer@client.test", ["support@example.test"],
                        make_mail("hello", message_id=message_id))
