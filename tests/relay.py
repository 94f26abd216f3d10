"""A relay for outbox tests: a real SMTP server on loopback that records what it accepts and
answers 4xx, 5xx or drops the connection on demand; ``down()``/``up()`` stop and restart
listening on the same port."""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from email.policy import default
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from helpers import free_port


@dataclass
class Received:
    mail_from: str
    rcpt_to: list[str]
    raw: bytes
    encrypted: bool = False
    authenticated: bool = False

    @property
    def message(self) -> Message:
        return message_from_bytes(self.raw, policy=default)


@dataclass
class Relay:
    """``mode``: "accept", "tempfail" (451 at DATA), "permfail" (550 at RCPT), "drop"
    (close the connection at DATA)."""

    port: int = field(default_factory=free_port)
    mode: str = "accept"
    tls: tuple[Path, Path] | None = None  # (cert, key): STARTTLS required
    login: tuple[str, str] | None = None  # (user, password): AUTH required (over TLS)
    received: list[Received] = field(default_factory=list)
    attempts: int = 0
    _controller: Controller | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def up(self) -> Relay:
        options: dict[str, object] = {}
        if self.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*map(str, self.tls))
            options |= {"tls_context": context, "require_starttls": True}
        if self.login is not None:
            options |= {"authenticator": self._authenticate, "auth_required": True}
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port,
                                      ready_timeout=10, **options)
        self._controller.start()
        return self

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope,
                      mechanism: str, auth_data: object) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and self.login == (
            auth_data.login.decode(), auth_data.password.decode())
        return AuthResult(success=ok)

    def down(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.05)
        raise TimeoutError(f"relay got {len(self.received)} of {count} messages")


class _Handler:
    def __init__(self, relay: Relay):
        self.relay = relay

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if self.relay.mode == "permfail":
            self.relay.attempts += 1
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.relay.attempts += 1
        if self.relay.mode == "tempfail":
            return "451 4.3.0 Try again later"
        if self.relay.mode == "drop":
            server.transport.close()
            return "421 4.3.0 closing"
        with self.relay._lock:
            self.relay.received.append(Received(
                envelope.mail_from, list(envelope.rcpt_tos),
                bytes(envelope.original_content or b""), session.ssl is not None,
                session.authenticated))
        return "250 2.0.0 Ok: queued"
