"""Loop, flood and bounce safety through real SMTP: what must never be auto-answered, two
Postdesk instances acknowledging each other, and delivery reports (handmade and from a real
Postfix) matched to the exact mail that failed by its VERP return path."""

from __future__ import annotations

import shutil
import smtplib
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from databases import Backend
from helpers import ROOT, Instance, free_port, make_mail
from outboxkit import history, prepare, rows, send, stored, wait_until
from relay import Relay
from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.store.models import Thread

FIXTURES = ROOT / "tests" / "fixtures"
ACK_ALL = """\
version: 1
rules:
  - name: ack-everything
    type: auto-acknowledge
    template: ack
"""


@pytest.mark.parametrize(("headers", "sender", "reason"), [
    ("Auto-Submitted: auto-replied\n", "customer@client.test", "out-of-office"),
    ("Auto-Submitted: auto-generated\n", "customer@client.test", "auto-submitted"),
    ("Precedence: bulk\n", "customer@client.test", "precedence"),
    ("List-Id: <news.client.test>\n", "customer@client.test", "mailing-list"),
    ("", "no-reply@client.test", "noreply-sender"),
    ("", "MAILER-DAEMON@client.test", "mailer-daemon"),
    ("X-Loop: support@example.test\n", "customer@client.test", "x-loop"),
    ("", "help@example.test", "own-address"),
])
def test_never_auto_answered(instance: Instance, relay: Relay, headers: str, sender: str,
                             reason: str) -> None:
    prepare(instance, relay, ACK_ALL).start()
    send(instance, make_mail("Hello", sender=sender, headers=headers,
                             message_id="<loop@client.test>"), sender=sender)
    skipped = wait_until(lambda: history(instance, "auto-skipped")
                         or history(instance, "out-of-office"))
    assert rows(instance) == [] and relay.received == []
    if reason == "out-of-office":
        assert stored(instance, "<loop@client.test>").state == "resolved"  # no new case
    else:
        assert skipped[0].detail["reason"] == reason


def test_out_of_office_reply_joins_its_thread_and_opens_no_case(instance: Instance,
                                                                relay: Relay) -> None:
    prepare(instance, relay, ACK_ALL).start()
    send(instance, make_mail("Order 42", message_id="<ooo-1@client.test>"))
    [ack] = relay.wait_for(1)
    ooo = make_mail(f"Automatic reply: {ack.message['Subject']}", message_id="<ooo-2@client.test>",
                    headers="Auto-Submitted: auto-replied\nX-Auto-Response-Suppress: All\n"
                            f"In-Reply-To: {ack.message['Message-ID']}\n")
    send(instance, ooo)
    first, reply = stored(instance, "<ooo-1@client.test>"), stored(instance, "<ooo-2@client.test>")
    assert reply.thread_id == first.thread_id and reply.state == "resolved"
    time.sleep(1)
    assert len(relay.received) == 1


def test_two_instances_acknowledging_each_other_send_one_mail_each(database: Backend,
                                                                   tmp_path: Path) -> None:
    """A's acknowledgement reaches B, whose rules acknowledge everything too: B sees
    Auto-Submitted and stays silent, so the loop ends after one mail."""
    a, b = (Instance(tmp_path / n, db_url=database.fresh(tmp_path, name=n)) for n in "ab")
    to_b, to_a = Relay(port=b.smtp), Relay(port=a.smtp)  # only for the ports
    try:
        prepare(a, to_b, ACK_ALL)
        prepare(b, to_a, ACK_ALL)
        b.config.write_text(b.config.read_text().replace("example.test", "b.test"))
        a.start()
        b.start()
        # a customer of A who is B's support address (say, a partner's help desk)
        send(a, make_mail("Partner question", sender="support@b.test",
                          message_id="<partner@b.test>"), sender="support@b.test")
        wait_until(lambda: any(r.state == "sent" for r in rows(a)))
        got = wait_until(lambda: [m for m in b.messages() if m.subject.startswith("Re:")])
        time.sleep(2)  # time for a loop to show itself
        assert [r.state for r in rows(a)] == ["sent"]
        assert rows(b) == []  # nothing automatic went back
        # our Auto-Submitted: auto-replied marks it an automatic reply: settled, not answered
        assert history(b, "auto-skipped")[0].detail["reason"] == "out-of-office"
        assert len(got) == 1 and got[0].state == "resolved"
    finally:
        for inst in (a, b):
            inst.stop()
            inst.engine.dispose()
            database.drop(inst.db_url)


def dsn_for(verp: str, failed: str) -> bytes:
    text = (FIXTURES / "bounces" / "postfix_user_unknown.eml").read_text()
    text = text.replace("bounces+5v3mq8a2c9bh0z4xyt@support.example.com", verp)
    text = text.replace("nobody@example.com", failed)
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


def acknowledged(instance: Instance, relay: Relay, message_id: str) -> str:
    """Start, get one mail acknowledged, return the acknowledgement's return path."""
    prepare(instance, relay, ACK_ALL).start()
    send(instance, make_mail("Order 7", message_id=message_id))
    [ack] = relay.wait_for(1)
    wait_until(lambda: rows(instance)[0].state == "sent")
    return ack.mail_from


def report_to(instance: Instance, return_path: str) -> None:
    with smtplib.SMTP("127.0.0.1", instance.smtp, timeout=30) as client:
        client.sendmail("<>", [return_path], dsn_for(return_path, "customer@client.test"))


def test_a_delivery_report_marks_the_exact_mail_failed_and_suppresses_the_address(
        instance: Instance, relay: Relay) -> None:
    report_to(instance, acknowledged(instance, relay, "<b-1@client.test>"))
    row = wait_until(lambda: (r := rows(instance)[0]).state == "failed" and r)
    assert row.status == "5.1.1" and row.last_error.startswith("bounced: 5.1.1")
    report = next(m for m in instance.messages() if m.subject.startswith("Undelivered"))
    original = stored(instance, "<b-1@client.test>")
    assert report.state == "bounce" and report.thread_id == original.thread_id
    with Session(instance.engine) as session:
        assert session.get(Thread, original.thread_id).flagged
    assert instance.cli_json("outbox", "suppressed")[0]["address"] == "customer@client.test"
    send(instance, make_mail("Order 8", message_id="<b-2@client.test>"))
    skipped = wait_until(lambda: (r := rows(instance)) and len(r) == 2
                         and r[1].state == "skipped" and r[1])
    assert skipped.last_error.startswith("suppressed")
    instance.cli("outbox", "suppressed", "--clear", "customer@client.test")
    assert instance.cli_json("outbox", "suppressed") == []


def test_a_report_with_a_forged_return_path_is_kept_but_trusted_for_nothing(
        instance: Instance, relay: Relay) -> None:
    local, _, domain = acknowledged(instance, relay, "<f-1@client.test>").partition("@")
    report_to(instance, f"{local[:-1]}{'a' if local[-1] != 'a' else 'b'}@{domain}")
    wait_until(lambda: history(instance, "untrusted-bounce"))
    report = next(m for m in instance.messages() if m.subject.startswith("Undelivered"))
    assert report.state == "bounce"
    assert rows(instance)[0].state == "sent" and len(rows(instance)) == 1  # never answered
    assert instance.cli_json("outbox", "suppressed") == []


@pytest.fixture
def postfix_relay(database: Backend, tmp_path: Path) -> Iterator[tuple[Instance, int]]:
    """A Postfix in front of and behind the gateway: the outbox relays through it; mail for
    dead.test is accepted, then refused by dead.test's server (550 5.1.1), so Postfix sends
    its DSN to our return path, through itself, to the gateway."""
    if not Path("/usr/sbin/postfix").exists():
        pytest.fail("Debian's postfix is not installed (make test installs it as root)")
    inst = Instance(tmp_path / "instance", db_url=database.fresh(tmp_path))
    dead = Relay(mode="permfail").up()
    workdir = tempfile.mkdtemp(prefix="postfix-")
    port = free_port()
    subprocess.run([FIXTURES / "start-postfix.sh", workdir, str(port), str(inst.smtp),
                    str(inst.lmtp), f"dead.test={dead.port}"], check=True, capture_output=True,
                   timeout=60)
    yield inst, port
    inst.stop()
    inst.engine.dispose()
    database.drop(inst.db_url)
    dead.down()
    subprocess.run([FIXTURES / "stop-postfix.sh", workdir], capture_output=True, timeout=60)
    shutil.rmtree(workdir, ignore_errors=True)


def test_a_real_postfix_dsn_for_a_failed_auto_reply_is_linked_and_fails_it(
        postfix_relay: tuple[Instance, int]) -> None:
    instance, port = postfix_relay
    prepare(instance, Relay(port=port), ACK_ALL).start()
    send(instance, make_mail("Hello from a dead mailbox", sender="gone@dead.test",
                             message_id="<dead@dead.test>"), sender="gone@dead.test")
    row = wait_until(lambda: (r := rows(instance)) and r[0].state == "failed" and r[0],
                     timeout=60)
    assert row.status == "5.1.1"
    report = wait_until(lambda: [m for m in instance.messages() if m.state == "bounce"])[0]
    assert report.thread_id == stored(instance, "<dead@dead.test>").thread_id
    assert report.from_addr.lower().startswith("mailer-daemon@")
    with Session(instance.engine) as session:
        assert session.scalars(select(Thread.flagged).where(
            Thread.id == report.thread_id)).one()
    assert instance.cli_json("outbox", "suppressed")[0]["address"] == "gone@dead.test"
