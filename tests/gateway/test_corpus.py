"""CPython's own email test corpus through the gateway: nothing crashes, hangs or is lost.

Every ``test/test_email/data/msg_*.txt`` of the running Python is sent over SMTP. Each one
must be stored (or refused with a 5xx that says why); for well-formed ones the stored subject
and sender must match what the standard library reports.
"""

from __future__ import annotations

import email
import email.policy
import importlib.util
import smtplib
from pathlib import Path

import pytest
from helpers import Instance


def corpus() -> list[Path]:
    spec = importlib.util.find_spec("test.test_email")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("CPython's test corpus is missing (Debian: libpythonX.Y-testsuite)")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    return sorted(data.glob("msg_*.txt"))


def wire(path: Path) -> bytes:
    """The file as an MTA transmits it: CRLF line ends, a final CRLF (RFC 5321 2.3.8, 4.1.1.4)."""
    raw = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return raw if raw.endswith(b"\r\n") else raw + b"\r\n"


def stdlib_view(raw: bytes) -> tuple[str, str] | None:
    """(subject, from address) where the stdlib parses the headers cleanly, else None."""
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        subject = " ".join(str(msg["subject"] or "").split())
        senders = msg["from"].addresses if msg["from"] is not None else ()
        if msg["subject"] is not None and msg["subject"].defects:
            return None
        addr = senders[0].addr_spec.lower() if len(senders) == 1 else None
        addr = "" if addr == "<>" else addr  # the null sender of a bounce
    except Exception:  # noqa: BLE001 — the stdlib gives up: nothing to compare with
        return None
    return subject, addr


def test_every_corpus_message_is_stored_or_cleanly_refused(gateway: Instance) -> None:
    files = corpus()
    assert len(files) > 40
    results: dict[Path, int] = {}
    with smtplib.SMTP("127.0.0.1", gateway.smtp, timeout=30) as smtp:
        smtp.ehlo("client.test")
        for path in files:
            raw = wire(path)
            smtp.mail("corpus@client.test")
            smtp.rcpt("support@example.test")
            code, reply = smtp.data(raw)
            assert code == 250 or (code >= 500 and reply), (path.name, code, reply)
            if code == 250 and int(reply.split()[-1]) not in results.values():
                results[path] = int(reply.split()[-1])
            elif code != 250:
                smtp.rset()
    # msg_01/03/20/29 share Message-ID and body: one message, later copies are redeliveries
    stored = {m.id: m for m in gateway.messages()}
    assert len(stored) == len(results)
    compared = 0
    for path, queue_id in results.items():
        msg = stored[queue_id]
        assert msg.raw == wire(path)
        expected = stdlib_view(path.read_bytes())
        if expected is None or msg.needs_attention:
            continue
        subject, sender = expected
        assert " ".join(msg.subject.split()) == subject, path.name
        if sender is not None:
            assert msg.from_addr == sender, path.name
        compared += 1
    assert compared > 30
    assert not [m for m in stored.values() if m.needs_attention]
