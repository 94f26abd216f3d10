"""Shared by the outbox tests: an instance wired to a test relay, and readers of its store."""

from __future__ import annotations

import smtplib
import time
from pathlib import Path
from typing import Any

from helpers import Instance
from relay import Relay
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from engine.config import Settings, load_settings
from engine.store.models import History, Message, Outbox

ACK = """\
Dear {{ INB_FROM_NAME }},

we received your message "{{ INB_SUBJECT }}" on {{ INB_RECEIVED_DATE }} and will answer
soon. Your reference: {{ ACK_REFERENCE }}.
"""
PASSWORD = """\
<p>Hello {{ INB_FROM_NAME }},</p><p>reset your password at <b>example.test/reset</b>.</p>
"""


def outbox_config(relay: Relay, **overrides: object) -> str:
    settings = {"retry_base_seconds": 0.3, "retry_max_seconds": 1, "poll_seconds": 0.1,
                "auto_per_sender": 1000, **overrides}
    lines = "".join(f"  {k}: {v}\n" for k, v in settings.items())
    return (f"rules: [rules.yaml]\ntags: {{current: k1, keys: {{k1: {{file: tag.secret}}}}}}\n"
            f"drivers:\n  relay: {{type: outbound-relay, host: 127.0.0.1, port: {relay.port}, "
            f"tls: none, timeout: 5}}\noutbox:\n{lines}")


def prepare(inst: Instance, relay: Relay, rules: str, **overrides: object) -> Instance:
    from engine.tags import generate_secret

    inst.dir.mkdir(parents=True, exist_ok=True)
    (inst.dir / "rules.yaml").write_text(rules)
    (inst.dir / "tag.secret").write_text(generate_secret())
    templates = inst.dir / "templates"
    templates.mkdir(exist_ok=True)
    (templates / "ack.txt").write_text(ACK)
    (templates / "password-howto.html").write_text(PASSWORD)
    return inst.write(extra=outbox_config(relay, **overrides))


def send(inst: Instance, raw: bytes, sender: str = "customer@client.test",
         to: str = "support@example.test") -> None:
    with smtplib.SMTP("127.0.0.1", inst.smtp, timeout=30) as client:
        client.sendmail(sender, [to], raw)


def rows(inst: Instance) -> list[Outbox]:
    with Session(inst.engine) as session:
        return list(session.scalars(select(Outbox).order_by(Outbox.id)))


def history(inst: Instance, action: str) -> list[History]:
    with Session(inst.engine) as session:
        return list(session.scalars(select(History).where(History.action == action)))


def stored(inst: Instance, message_id: str) -> Message:
    return next(m for m in inst.messages() if m.message_id_header == message_id)


def wait_until(check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.1)
    raise TimeoutError("condition not met")




def relay_settings(tmp_path: Path, relay: Relay, store: Engine) -> Settings:
    """Settings for sending from the console or the engine: the database of ``store``,
    accounts support (from name, signature) and sales, tag keys, the test relay (as
    tests/engine/test_work.py uses)."""
    from engine.tags import generate_secret

    (tmp_path / "tag.secret").write_text(generate_secret())
    (tmp_path / "postdesk.yaml").write_text(
        f"database: {{url: '{store.url.render_as_string(hide_password=False)}'}}\n"
        "gateway: {hostname: postdesk.test}\n"
        "tags: {current: k1, keys: {k1: {file: tag.secret}}}\n"
        f"drivers:\n  relay: {{type: outbound-relay, host: 127.0.0.1, port: {relay.port}, "
        "tls: none, timeout: 5}\n"
        "accounts:\n  - {name: support, addresses: [support@example.test],\n"
        "     from_name: Example Support, signature: \"--\\nExample Support\"}\n"
        "  - {name: sales, addresses: [sales@example.test]}\n")
    return load_settings(tmp_path / "postdesk.yaml", environ={})
