"""The SMTP and LMTP gateway over real loopback sessions against ``postdesk serve``."""

from __future__ import annotations

import asyncio
import smtplib
import socket
import subprocess
import time
from pathlib import Path

import aiosmtplib
import pytest
from helpers import POSTDESK, ROOT, Instance, make_mail, wait_port, write_lock_held

from engine.store.database import upgrade


def send(inst: Instance, raw: bytes, rcpts: list[str], sender: str = "customer@client.test"):
    with smtplib.SMTP("127.0.0.1", inst.smtp, timeout=30) as smtp:
        smtp.ehlo("client.test")
        return smtp.sendmail(sender, rcpts, raw)


def by_message_id(inst: Instance, mid: str):
    return [m for m in inst.messages() if m.message_id_header == mid]


def test_message_is_stored_byte_exact_with_queue_id(gateway: Instance) -> None:
    raw = make_mail("Stored?", message_id="<exact-1@client.test>")
    with smtplib.SMTP("127.0.0.1", gateway.smtp, timeout=30) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("customer@client.test")
        smtp.rcpt("support@example.test")
        code, reply = smtp.data(raw)
    assert code == 250 and reply.startswith(b"2.0.0 Ok: queued as ")
    queue_id = int(reply.split()[-1])
    [msg] = by_message_id(gateway, "<exact-1@client.test>")
    assert msg.id == queue_id
    assert msg.raw == raw  # byte-exact: our Received line is kept beside it
    assert msg.received_header.startswith("Received: from client.test ([127.0.0.1])")
    assert msg.subject == "Stored?" and msg.from_addr == "customer@client.test"
    assert msg.state == "queued" and msg.thread_id is not None


def test_unknown_recipient_is_refused_with_5_1_1(gateway: Instance) -> None:
    with smtplib.SMTP("127.0.0.1", gateway.smtp, timeout=30) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("customer@client.test")
        code, reply = smtp.rcpt("nobody@example.test")
    assert code == 550 and reply.startswith(b"5.1.1 <nobody@example.test>")


def test_mixed_recipients_deliver_to_the_known_one(gateway: Instance) -> None:
    raw = make_mail("Mixed", message_id="<mixed-1@client.test>")
    refused = send(gateway, raw, ["nobody@example.test", "sales@example.test"])
    assert refused == {"nobody@example.test": (550, refused["nobody@example.test"][1])}
    assert len(by_message_id(gateway, "<mixed-1@client.test>")) == 1


def test_plus_address_and_case_reach_the_account(gateway: Instance) -> None:
    raw = make_mail("Plus", message_id="<plus-1@client.test>")
    assert send(gateway, raw, ["Support+Orders@Example.TEST"]) == {}
    assert len(by_message_id(gateway, "<plus-1@client.test>")) == 1


def test_one_transaction_to_two_accounts_is_one_message(gateway: Instance) -> None:
    raw = make_mail("Both", to="support@example.test, sales@example.test",
                    message_id="<both-1@client.test>")
    send(gateway, raw, ["support@example.test", "sales@example.test"])
    [msg] = by_message_id(gateway, "<both-1@client.test>")
    listed = gateway.cli_json("message", "show", str(msg.id))
    assert sorted(listed["accounts"]) == ["sales", "support"]


def test_two_deliveries_of_one_mail_are_one_message(gateway: Instance) -> None:
    """Postfix splits per recipient; an MTA retries after a lost 250: stored once."""
    body = make_mail("Twice", to="support@example.test, sales@example.test",
                     message_id="<twice-1@client.test>")
    first = b"Received: from a by mx1; Sun, 22 Nov 2026 10:00:01 +0000\r\n" + body
    second = b"Received: from a by mx2; Sun, 22 Nov 2026 10:00:02 +0000\r\n" + body
    send(gateway, first, ["support@example.test"])
    send(gateway, second, ["sales@example.test"])
    send(gateway, first, ["support@example.test"])  # the retry
    [msg] = by_message_id(gateway, "<twice-1@client.test>")
    assert msg.raw == first
    accounts = gateway.cli_json("message", "show", str(msg.id))["accounts"]
    assert sorted(accounts) == ["sales", "support"]


def test_size_limit_is_advertised_and_enforced(instance: Instance) -> None:
    instance.write(max_size=20_000).start()
    with smtplib.SMTP("127.0.0.1", instance.smtp, timeout=30) as smtp:
        smtp.ehlo("client.test")
        assert smtp.has_extn("size") and smtp.esmtp_features["size"] == "20000"
        code, reply = smtp.mail("customer@client.test", ["SIZE=50000"])
        assert code == 552 and reply.startswith(b"5.3.4")
        smtp.rset()
        smtp.mail("customer@client.test")  # no SIZE given: caught while reading DATA
        smtp.rcpt("support@example.test")
        code, reply = smtp.data(make_mail("Big", body="x" * 60 + "\n") * 400)
    assert code == 552 and reply.startswith(b"5.3.4")
    assert instance.messages() == []


def test_8bit_and_utf8_mail(gateway: Instance) -> None:
    latin = ("From: =?utf-8?q?J=C3=BCrgen?= <juergen@client.test>\r\nTo: support@example.test\r\n"
             "Subject: Gr\xfc\xdfe\r\nMessage-ID: <8bit-1@client.test>\r\n"
             "Content-Type: text/plain; charset=iso-8859-1\r\n"
             "Content-Transfer-Encoding: 8bit\r\n\r\nSch\xf6ne Gr\xfc\xdfe\r\n").encode("latin-1")
    with smtplib.SMTP("127.0.0.1", gateway.smtp, timeout=30) as smtp:
        smtp.ehlo("client.test")
        assert smtp.has_extn("8bitmime") and smtp.has_extn("smtputf8")
        smtp.sendmail("juergen@client.test", ["support@example.test"], latin,
                      mail_options=["BODY=8BITMIME"])
        utf8 = ("From: Jürgen <jürgen@client.test>\r\nTo: support@example.test\r\n"
                "Subject: Grüße 🙂\r\nMessage-ID: <utf8-1@client.test>\r\n"
                "Content-Type: text/plain; charset=utf-8\r\n\r\nSchöne Grüße 🙂\r\n").encode()
        smtp.sendmail("jürgen@client.test", ["support@example.test"], utf8,
                      mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    [m1] = by_message_id(gateway, "<8bit-1@client.test>")
    assert m1.body_text.strip() == "Schöne Grüße" and m1.raw == latin
    [m2] = by_message_id(gateway, "<utf8-1@client.test>")
    assert m2.subject == "Grüße 🙂" and m2.envelope_from == "jürgen@client.test"
    assert m2.from_addr == "jürgen@client.test"


def _read_replies(sock: socket.socket, count: int) -> list[str]:
    """Read ``count`` whole replies; a multi-line reply comes back as one string."""
    buf, replies, current = b"", [], []
    deadline = time.monotonic() + 30
    while len(replies) < count and time.monotonic() < deadline:
        buf += sock.recv(65536)
        *done, buf = buf.split(b"\r\n")
        for line in done:
            current.append(line.decode())
            if line[3:4] == b" ":  # the last line of a reply
                replies.append("\n".join(current))
                current = []
    return replies


def test_pipelining(gateway: Instance) -> None:
    """MAIL, RCPT, RCPT, DATA sent in one write (RFC 2920); replies come in order."""
    raw = make_mail("Pipelined", message_id="<pipe-1@client.test>")
    with socket.create_connection(("127.0.0.1", gateway.smtp), timeout=30) as sock:
        assert _read_replies(sock, 1)[0].startswith("220")
        sock.sendall(b"EHLO client.test\r\n")
        assert "250-PIPELINING" in _read_replies(sock, 1)[0]
        sock.sendall(b"MAIL FROM:<customer@client.test>\r\nRCPT TO:<support@example.test>\r\n"
                     b"RCPT TO:<nobody@example.test>\r\nDATA\r\n")
        replies = _read_replies(sock, 4)
        sock.sendall(raw + b".\r\nQUIT\r\n")
        replies += _read_replies(sock, 2)
    codes = [r[:3] for r in replies]
    assert codes == ["250", "250", "550", "354", "250", "221"], replies
    assert len(by_message_id(gateway, "<pipe-1@client.test>")) == 1


def test_twenty_concurrent_senders(gateway: Instance) -> None:
    async def one(i: int) -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=gateway.smtp, timeout=60)
        async with client:
            for j in range(5):
                raw = make_mail(f"Concurrent {i}-{j}", message_id=f"<conc-{i}-{j}@client.test>")
                await client.sendmail("customer@client.test", ["support@example.test"], raw)

    async def all_of_them() -> None:
        await asyncio.gather(*(one(i) for i in range(20)))

    asyncio.run(all_of_them())
    stored = {m.message_id_header for m in gateway.messages()}
    assert {f"<conc-{i}-{j}@client.test>" for i in range(20) for j in range(5)} <= stored


def test_lmtp_answers_once_per_recipient(gateway: Instance) -> None:
    raw = make_mail("LMTP", to="support@lmtp.test, sales@lmtp.test",
                    message_id="<lmtp-1@client.test>")
    with socket.create_connection(("127.0.0.1", gateway.lmtp), timeout=30) as sock:
        assert _read_replies(sock, 1)[0].startswith("220")
        sock.sendall(b"LHLO client.test\r\n")
        _read_replies(sock, 1)
        sock.sendall(b"MAIL FROM:<customer@client.test>\r\nRCPT TO:<support@lmtp.test>\r\n"
                     b"RCPT TO:<sales@lmtp.test>\r\nRCPT TO:<nobody@lmtp.test>\r\nDATA\r\n")
        head = _read_replies(sock, 5)
        sock.sendall(raw + b".\r\n")
        per_rcpt = _read_replies(sock, 2)
    assert [r[:3] for r in head] == ["250", "250", "250", "550", "354"]
    assert [r[:9] for r in per_rcpt] == ["250 2.0.0", "250 2.0.0"]
    [msg] = by_message_id(gateway, "<lmtp-1@client.test>")
    assert sorted(gateway.cli_json("message", "show", str(msg.id))["accounts"]) == [
        "sales", "support"]


def test_swaks_as_an_outside_client(gateway: Instance) -> None:
    result = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{gateway.smtp}", "--from", "swaks@client.test",
         "--to", "help@example.test", "--header", "Subject: from swaks",
         "--header", "Message-Id: <swaks-1@client.test>", "--body", "Sent by swaks"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "250 2.0.0 Ok: queued as" in result.stdout
    [msg] = by_message_id(gateway, "<swaks-1@client.test>")
    assert msg.subject == "from swaks" and "Sent by swaks" in msg.body_text
    lmtp = subprocess.run(
        ["swaks", "--protocol", "LMTP", "--server", f"127.0.0.1:{gateway.lmtp}",
         "--from", "swaks@client.test", "--to", "sales@lmtp.test",
         "--header", "Message-Id: <swaks-2@client.test>"],
        capture_output=True, text=True, timeout=60,
    )
    assert lmtp.returncode == 0, lmtp.stdout + lmtp.stderr
    assert len(by_message_id(gateway, "<swaks-2@client.test>")) == 1


def test_client_outside_allowed_networks_gets_554(instance: Instance) -> None:
    instance.write(networks="[10.0.0.0/8]").start()
    with pytest.raises(smtplib.SMTPConnectError) as err:
        smtplib.SMTP("127.0.0.1", instance.smtp, timeout=30)
    assert err.value.smtp_code == 554 and err.value.smtp_error.startswith(b"5.7.1")


def test_database_unavailable_answers_451_then_recovers(instance: Instance) -> None:
    """A locked store is a transient fault: 451 4.3.0, and the retry is stored."""
    instance.write(busy_timeout_ms=300).start()
    raw = make_mail("Locked", message_id="<locked-1@client.test>")
    with write_lock_held(instance.engine):
        with smtplib.SMTP("127.0.0.1", instance.smtp, timeout=30) as smtp:
            smtp.ehlo("client.test")
            smtp.mail("customer@client.test")
            smtp.rcpt("support@example.test")
            code, reply = smtp.data(raw)
        assert code == 451 and reply.startswith(b"4.3.0"), (code, reply)
    assert send(instance, raw, ["support@example.test"]) == {}
    assert len(by_message_id(instance, "<locked-1@client.test>")) == 1


def _serve_while_locked(inst: Instance) -> subprocess.Popen:
    """``postdesk serve`` started on ``inst`` (migrated, no accounts yet: its first write is
    theirs), once it has bound its ports; the caller holds the store's write lock."""
    log = open(inst.dir / "serve.log", "ab")  # noqa: SIM115 — the child keeps it
    with log:
        inst.proc = subprocess.Popen([*POSTDESK, "--config", str(inst.config), "serve"],
                                     cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
    deadline = time.monotonic() + 60
    while f"smtp listening on 127.0.0.1:{inst.smtp}" not in inst.log():
        assert inst.proc.poll() is None and time.monotonic() < deadline, inst.log()
        time.sleep(0.05)
    return inst.proc


def test_start_up_waits_for_a_locked_store_and_refuses_connections_meanwhile(
        tmp_path: Path) -> None:
    """Start-up writes the accounts after binding the port. While another client holds
    the store's write lock, far longer than the busy timeout, start-up retries instead of
    giving up, and a client connecting meanwhile is refused (it retries later), not queued
    behind a start-up that may still fail (it was reset when start-up then gave up)."""
    inst = Instance(tmp_path / "instance").write(busy_timeout_ms=300)
    upgrade(inst.db_url)
    try:
        with write_lock_held(inst.engine):
            proc = _serve_while_locked(inst)
            deadline = time.monotonic() + 2.5  # eight busy timeouts
            while time.monotonic() < deadline:  # bound, and start-up waits for the lock
                with pytest.raises(ConnectionRefusedError):
                    socket.create_connection(("127.0.0.1", inst.smtp), timeout=5).close()
                time.sleep(0.1)
            assert proc.poll() is None, inst.log()
            assert "writing the accounts: the store is unavailable (database is locked)" \
                in inst.log()
        wait_port(inst.smtp, 60, proc)
        with smtplib.SMTP("127.0.0.1", inst.smtp, timeout=30) as smtp:
            assert smtp.sendmail("customer@client.test", ["support@example.test"],
                                 make_mail("After start-up",
                                           message_id="<late-start@client.test>")) == {}
        assert len(by_message_id(inst, "<late-start@client.test>")) == 1
    finally:
        inst.stop()
        inst.engine.dispose()


def test_start_up_gives_up_after_startup_wait(tmp_path: Path) -> None:
    """A store locked for longer than ``database.startup_wait`` ends the start with a
    non-zero exit and the reason, so a supervisor sees it and restarts the service."""
    inst = Instance(tmp_path / "instance").write(busy_timeout_ms=200)
    inst.config.write_text(inst.config.read_text().replace(
        "  busy_timeout_ms: 200\n", "  busy_timeout_ms: 200\n  startup_wait: 1\n"))
    upgrade(inst.db_url)
    try:
        with write_lock_held(inst.engine):
            proc = _serve_while_locked(inst)
            assert proc.wait(30) == 75  # EX_TEMPFAIL
        assert "the store is unavailable (database is locked)" in inst.log()
        assert inst.log().splitlines()[-1] == (
            "postdesk: gave up starting: writing the accounts: the store stayed unavailable "
            "for 1 s (database is locked)")
    finally:
        inst.stop()
        inst.engine.dispose()


def test_health_endpoint(gateway: Instance) -> None:
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{gateway.http}/healthz", timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "ok" and body["database"] == "ok"
    assert body["gateway"]["accepted"] >= 1 and set(body["listeners"]) == {"smtp", "lmtp", "http"}


def test_sigterm_finishes_in_flight_transactions(instance: Instance) -> None:
    instance.write().start()
    with smtplib.SMTP("127.0.0.1", instance.smtp, timeout=30) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("customer@client.test")
        smtp.rcpt("support@example.test")
        smtp.putcmd("data")
        assert smtp.getreply()[0] == 354
        smtp.send(make_mail("During shutdown", message_id="<term-1@client.test>")[:40])
        instance.proc.terminate()  # SIGTERM while DATA is half sent
        time.sleep(0.3)
        smtp.send(make_mail("During shutdown", message_id="<term-1@client.test>")[40:])
        smtp.send(b".\r\n")
        code, _ = smtp.getreply()
    assert code == 250
    assert instance.stop() == 0
    assert len(by_message_id(instance, "<term-1@client.test>")) == 1
