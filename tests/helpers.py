"""Test helpers: free ports, throwaway instances, a real ``postdesk serve`` process, mails.

Every test talks to real sockets on loopback; ports come from the OS (port 0) so parallel
runs never collide.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ports import free_port
from sqlalchemy import Engine, insert, select, text

from engine.deliveries import Delivery, Envelope, Receipt, store_batch
from engine.mime import parse_message
from engine.store.database import make_engine, upgrade
from engine.store.models import Account, Message

ROOT = Path(__file__).resolve().parent.parent
POSTDESK = [sys.executable, "-m", "gateway.cli"]


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


CONFIG = """\
database:
  url: {db_url}
  busy_timeout_ms: {busy_timeout_ms}
gateway:
  smtp_listen: 127.0.0.1:{smtp}
  lmtp_listen: 127.0.0.1:{lmtp}
  http_listen: 127.0.0.1:{http}
  hostname: postdesk.test
{gateway_extra}  max_message_size: {max_size}
  allowed_networks: {networks}
accounts:
  - name: support
    addresses: [support@example.test, help@example.test, support@lmtp.test]
    from_name: Example Support
  - name: sales
    addresses: [sales@example.test, sales@lmtp.test]
"""


@dataclass
class Instance:
    """A config file plus its database; ``start()`` runs ``postdesk serve`` on it."""

    dir: Path
    smtp: int = field(default_factory=free_port)
    lmtp: int = field(default_factory=free_port)
    http: int = field(default_factory=free_port)
    db_url: str = ""  # default: an SQLite file in ``dir``; fixtures pass the backend's URL
    proc: subprocess.Popen | None = None
    _engine: Engine | None = None

    def __post_init__(self) -> None:
        self.db_url = self.db_url or f"sqlite:///{self.dir / 'postdesk.db'}"

    @property
    def config(self) -> Path:
        return self.dir / "postdesk.yaml"

    def write(self, *, max_size: int = 1_000_000, networks: str = "[127.0.0.0/8]",
              busy_timeout_ms: int = 10_000, extra: str = "",
              gateway_extra: str = "") -> Instance:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(CONFIG.format(
            db_url=self.db_url, smtp=self.smtp, lmtp=self.lmtp, http=self.http,
            max_size=max_size, networks=networks, busy_timeout_ms=busy_timeout_ms,
            gateway_extra=gateway_extra,
        ) + textwrap.dedent(extra))
        return self

    def start(self, timeout: float = 30.0, env: dict[str, str] | None = None) -> Instance:
        log = open(self.dir / "serve.log", "ab")  # noqa: SIM115 — closed with the process
        self.proc = subprocess.Popen(
            [*POSTDESK, "--config", str(self.config), "serve"], cwd=ROOT,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **env} if env else None,
        )
        for port in (self.smtp, self.lmtp, self.http):  # each listens once its server is up
            wait_port(port, timeout, self.proc)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def kill(self) -> None:
        """A crash of the whole server: SIGKILL to the supervisor and every worker at once."""
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.db_url)
        return self._engine

    def messages(self) -> list[Message]:
        from sqlalchemy.orm import Session

        with Session(self.engine) as session:
            return list(session.scalars(select(Message).order_by(Message.id)))

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([*POSTDESK, "--config", str(self.config), *args], cwd=ROOT,
                              capture_output=True, text=True, check=check, timeout=120)

    def cli_json(self, *args: str) -> object:
        return json.loads(self.cli(*args, "--json").stdout)

    def log(self) -> str:
        path = self.dir / "serve.log"
        return path.read_text(errors="replace") if path.exists() else ""


def make_mail(subject: str = "Hello", *, sender: str = "customer@client.test",
              to: str = "support@example.test", body: str = "Hi there.\n",
              message_id: str | None = None, headers: str = "") -> bytes:
    """A small RFC 5322 message with CRLF line ends, as an MTA would relay it."""
    mid = message_id or f"<{time.monotonic_ns()}.{os.getpid()}@client.test>"
    text = (f"From: Customer <{sender}>\nTo: {to}\nSubject: {subject}\n"
            f"Message-ID: {mid}\nDate: Sun, 22 Nov 2026 10:00:00 +0000\n{headers}"
            f"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n{body}")
    return text.replace("\n", "\r\n").encode()


def store_with_accounts(url: str) -> Engine:
    """Migrate ``url`` and add accounts 1 (support) and 2 (sales)."""
    accounts_added(url)
    return make_engine(url)


def accounts_added(url: str) -> None:
    """A database recipe: migrated, with accounts 1 (support) and 2 (sales)."""
    upgrade(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(insert(Account), [
            {"id": 1, "name": "support", "addresses": ["support@example.test"]},
            {"id": 2, "name": "sales", "addresses": ["sales@example.test"]},
        ])
        if engine.dialect.name == "postgresql":  # explicit ids do not advance the sequence
            conn.execute(text("SELECT setval(pg_get_serial_sequence('accounts', 'id'), 2)"))
    engine.dispose()


@contextmanager
def write_lock_held(engine: Engine) -> Iterator[None]:
    """Another client holds the store's write lock until the block ends: the same fault on
    both databases, made the way each allows (SQLite: an exclusive transaction; PostgreSQL:
    a transaction locking the messages table)."""
    hold = {"sqlite": "BEGIN EXCLUSIVE",
            "postgresql": "LOCK TABLE messages IN ACCESS EXCLUSIVE MODE"}[engine.dialect.name]
    blocker = engine.raw_connection()
    try:
        blocker.cursor().execute(hold)
        yield
    finally:
        blocker.rollback()
        blocker.close()


def deliver(engine: Engine, raw: bytes, account: int = 1,
            when: datetime | None = None) -> Receipt:
    """Parse and store one message the way the gateway does, in its own transaction."""
    when = when or datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    env = Envelope("sender@client.test", [(account, "x@example.test")], received_at=when)
    with engine.begin() as conn:
        return store_batch(conn, [Delivery(raw, env, parse_message(raw, when))])[0]
