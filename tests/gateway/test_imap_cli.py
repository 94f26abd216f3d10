"""IMAP polling as processes: ``postdesk poll`` killed and restarted, ``postdesk serve`` with
pollers and /healthz, ``postdesk status --json``, and the configuration of polled accounts."""

from __future__ import annotations

import imaplib
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from dovecot import PASSWORD, Dovecot
from helpers import POSTDESK, ROOT, Instance, make_mail
from sqlalchemy import func, select

from engine.accounts import AccountDirectory
from engine.config import load_settings
from engine.store.models import Message
from gateway.imap import mailboxes

PW_VAR = "POSTDESK_TEST_IMAP_PW"
BAD_VAR = "POSTDESK_TEST_IMAP_BAD_PW"

IMAP_ACCOUNTS = """\
  - name: imapbox
    addresses: [imapbox@example.test]
    inbound: [{{driver: mailbox, PollingInterval: 1}}]
{more}drivers:
  mailbox:
    type: imap-poll
    host: 127.0.0.1
    port: {port}
    tls: none
    user: {user}
    password: {{env: {pw}}}
    PollingInterval: 60
"""

BAD_ACCOUNT = """\
  - name: badbox
    addresses: [badbox@example.test]
    inbound: [{{driver: mailbox, user: {user}, password: {{env: {bad}}}}}]
"""


@pytest.fixture(autouse=True)
def passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PW_VAR, PASSWORD)
    monkeypatch.setenv(BAD_VAR, "not-the-password")


def configure(instance: Instance, dovecot: Dovecot, user: str, more: str = "") -> Instance:
    return instance.write(extra=IMAP_ACCOUNTS.format(port=dovecot.port, user=user, pw=PW_VAR,
                                                     more=more))


def count(instance: Instance) -> tuple[int, int]:
    """(stored messages, distinct Message-IDs)."""
    with instance.engine.connect() as conn:
        return conn.execute(select(func.count(), func.count(Message.message_id_header.distinct()))
                            ).one()


def _holds(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except (OSError, RuntimeError, imaplib.IMAP4.error):
        return False


def wait_until(check: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not _holds(check):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what or check}")
        time.sleep(0.02)


def start_poll(instance: Instance) -> subprocess.Popen:
    log = open(instance.dir / "poll.log", "ab")  # noqa: SIM115 — closed with the process
    return subprocess.Popen([*POSTDESK, "--config", str(instance.config), "poll"], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def test_poller_killed_and_restarted_stores_nothing_twice(dovecot: Dovecot,
                                                          instance: Instance) -> None:
    user = dovecot.new_user()
    total = 800
    dovecot.deliver_many(user, [make_mail(f"kill {i}", message_id=f"<kill-{i}@client.test>",
                                          body="Where is my parcel?\n" * 30)
                                for i in range(total)])
    configure(instance, dovecot, user)
    proc = start_poll(instance)
    try:
        wait_until(lambda: _safe_count(instance) >= 100, 60,
                   "first messages")
        os.killpg(proc.pid, signal.SIGKILL)  # the poller and its writer, mid-drain
        proc.wait()
        stored, distinct = count(instance)
        assert stored == distinct < total, "drained before the kill"
        assert dovecot.count(user, "INBOX") > 0
        proc = start_poll(instance)
        wait_until(lambda: dovecot.count(user, "INBOX") == 0, 60, "INBOX drained")
        assert count(instance) == (total, total)
        assert dovecot.count(user, "Processed") == total
        report = json.loads(instance.cli("status", "--json").stdout)
        [box] = report["imap"]
        assert box["account"] == "imapbox" and box["state"] in ("idle", "polling")
        assert box["fetched"] > 0 and box["last_poll"] and box["last_error"] is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        report = json.loads(instance.cli("status", "--json").stdout)
        assert report["imap"][0]["state"] == "stopped" and report["database"] == "ok"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _safe_count(instance: Instance) -> int:
    try:
        return count(instance)[0]
    except Exception:  # noqa: BLE001 — the schema may not exist yet
        return 0


def test_serve_polls_and_reports_each_mailbox_in_healthz_and_status(
        dovecot: Dovecot, instance: Instance) -> None:
    user = dovecot.new_user()
    configure(instance, dovecot, user, BAD_ACCOUNT.format(user=dovecot.new_user(), bad=BAD_VAR))
    instance.start()
    dovecot.deliver(user, make_mail("Via IMAP", message_id="<served@client.test>",
                                    to="imapbox@example.test"))
    wait_until(lambda: any(m.message_id_header == "<served@client.test>"
                           for m in instance.messages()), 30, "the polled message")

    def health() -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{instance.http}/healthz") as reply:
            return json.loads(reply.read())

    wait_until(lambda: [b["state"] for b in health()["imap"]][1] == "error", 20, "bad login")
    good, bad = health()["imap"]
    assert good["account"] == "imapbox" and good["fetched"] == 1 and good["stored"] == 1
    assert good["idle_supported"] is True and good["last_error"] is None
    assert bad["account"] == "badbox" and "AUTHENTICATIONFAILED" in bad["last_error"]
    assert health()["status"] == "ok"  # one bad mailbox does not make the gateway unhealthy
    report = json.loads(instance.cli("status", "--json").stdout)
    assert [b["account"] for b in report["imap"]] == ["imapbox", "badbox"]
    assert "AUTHENTICATIONFAILED" in report["imap"][1]["last_error"]
    text = instance.cli("status").stdout
    assert "imap badbox/mailbox" in text and "last error:" in text
    [msg] = [m for m in instance.messages() if m.message_id_header == "<served@client.test>"]
    assert "with IMAP" in msg.received_header and dovecot.count(user, "Processed") == 1


def test_polled_accounts_take_driver_defaults_and_account_overrides(tmp_path: Path) -> None:
    config = tmp_path / "postdesk.yaml"
    config.write_text(f"""\
drivers:
  mailbox: {{type: imap-poll, host: imap.example.test, user: a, password: {{env: {PW_VAR}}},
            PollingInterval: 60, ca_file: certs/ca.pem}}
accounts:
  - name: support
    addresses: [support@example.test]
    inbound: [smtp, {{driver: mailbox, PollingInterval: 5, processed_folder: Done}}]
  - name: sales
    addresses: [sales@example.test]
    inbound: [{{driver: mailbox, user: b, tls: starttls, port: 143}}]
""")
    settings = load_settings(config)
    directory = AccountDirectory({}, {1: "support", 2: "sales"})
    support, sales = mailboxes(settings, directory)
    assert (support.interval, support.processed_folder, support.retry_folder) == (5, "Done",
                                                                                  "Retry")
    assert support.server.password == PASSWORD and support.server.tls == "implicit"
    assert support.server.port == 993
    assert support.server.ca_file == (tmp_path / "certs" / "ca.pem").resolve()
    assert (sales.interval, sales.server.user, sales.server.tls, sales.server.port) == (
        60, "b", "starttls", 143)
    assert support.problem is None and [s.account_id for s in (support, sales)] == [1, 2]
