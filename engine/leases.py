"""Leases: a job that must run once at a time (polling one IMAP mailbox) across processes
and machines sharing one database.

A lease is a row in ``leases``: a name, the holding process and an expiry. It is taken with
one statement (INSERT … ON CONFLICT DO UPDATE … WHERE the row expired or is ours, on SQLite
and PostgreSQL alike), so two processes never both believe they hold it; the holder renews
it every third of its lifetime and deletes it on a clean stop. A holder that dies (SIGKILL,
a lost machine) just stops renewing: the next process takes over once ``expires_at`` has
passed. Expiry compares the processes' clocks, so hosts sharing a database keep them in sync
(NTP) — a skew counts against the lease time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import socket
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from engine.store.database import writer
from engine.store.models import Lease, utcnow

log = logging.getLogger(__name__)
_INSERT = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def _machine() -> str:
    """This boot of this machine and pid namespace: where a holder's pid can be checked."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return "unknown"
    return hashlib.sha256(f"{boot}:{namespace}".encode()).hexdigest()[:8]


def process_id() -> str:
    """This process's name as a holder: host, pid, machine tag and a nonce."""
    return f"{socket.gethostname()}:{os.getpid()}:{_machine()}:{secrets.token_hex(3)}"


def dead_here(holder: str) -> bool:
    """True if ``holder`` was a process on this machine (same boot, same pid namespace)
    that no longer exists: its lease need not run out before another takes it."""
    parts = holder.split(":")
    if len(parts) != 4 or parts[2] != _machine() or parts[2] == "unknown":
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError):
        return False
    return False


def acquire(engine: Engine, name: str, holder: str, seconds: float) -> bool:
    """Take (or extend) the lease ``name`` for ``seconds`` unless another live holder has it."""
    now = utcnow()
    table = Lease.__table__
    insert = _INSERT[engine.dialect.name](table).values(
        name=name, holder=holder, acquired_at=now, expires_at=now + timedelta(seconds=seconds))
    statement = insert.on_conflict_do_update(
        index_elements=[table.c.name],
        set_={"holder": insert.excluded.holder, "acquired_at": insert.excluded.acquired_at,
              "expires_at": insert.excluded.expires_at},
        where=or_(table.c.expires_at < now, table.c.holder == holder),
    ).returning(table.c.holder)
    with writer(engine).begin() as conn:
        return conn.execute(statement).first() is not None


def take_over(engine: Engine, name: str, dead: str, holder: str, seconds: float) -> bool:
    """Take the lease from the holder ``dead`` (compare and swap: only if it still holds)."""
    now = utcnow()
    with writer(engine).begin() as conn:
        return conn.execute(update(Lease).where(Lease.name == name, Lease.holder == dead)
                            .values(holder=holder, acquired_at=now,
                                    expires_at=now + timedelta(seconds=seconds))
                            ).rowcount == 1


def renew(engine: Engine, name: str, holder: str, seconds: float) -> bool:
    """Push the expiry of our lease on; False if it is no longer ours (taken over)."""
    with writer(engine).begin() as conn:
        return conn.execute(update(Lease).where(Lease.name == name, Lease.holder == holder)
                            .values(expires_at=utcnow() + timedelta(seconds=seconds))
                            ).rowcount == 1


def release(engine: Engine, name: str, holder: str) -> None:
    """Give the lease up now (a clean stop), so a standby need not wait for the expiry."""
    with writer(engine).begin() as conn:
        conn.execute(delete(Lease).where(Lease.name == name, Lease.holder == holder))


def holders(engine: Engine) -> dict[str, dict[str, Any]]:
    """Every lease by name: holder, since when, until when, and whether it has expired."""
    now = utcnow()
    with engine.connect() as conn:
        rows = conn.execute(select(Lease.name, Lease.holder, Lease.acquired_at,
                                   Lease.expires_at)).all()
    return {r.name: {"holder": r.holder, "since": _iso(r.acquired_at),
                     "until": _iso(r.expires_at), "expired": r.expires_at < now} for r in rows}


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="seconds")


class LeaseLost(Exception):
    """Another process holds the lease now, or we could not renew it before it expired."""


class LeaseKeeper:
    """One named lease for an asyncio task: wait to take it, keep it, give it back.

    The database calls are short and run in a thread; a database that is down while we hold
    the lease is retried until our own expiry is near, then the lease counts as lost.
    """

    def __init__(self, engine: Engine, name: str, seconds: float, holder: str | None = None):
        self.engine = engine
        self.name = name
        self.seconds = seconds
        self.holder = holder or process_id()
        self.held = False
        self._valid_until = 0.0  # monotonic: when our last successful claim runs out

    @property
    def retry_every(self) -> float:
        """Pause between attempts of a standby to take the lease."""
        return min(max(self.seconds / 6, 0.5), 10.0)

    async def try_acquire(self) -> bool:
        """One attempt; a database error counts as not acquired."""
        started = time.monotonic()
        try:
            self.held = await asyncio.to_thread(self._acquire)
        except Exception as exc:  # noqa: BLE001 — the database is down: try again later
            log.warning("lease %s: cannot reach the database: %s", self.name, exc)
            self.held = False
        if self.held:
            self._valid_until = started + self.seconds
        return self.held

    def _acquire(self) -> bool:
        if acquire(self.engine, self.name, self.holder, self.seconds):
            return True
        current = holders(self.engine).get(self.name)
        if current is None or not dead_here(current["holder"]):
            return False
        log.warning("lease %s: holder %s is gone; taking over", self.name, current["holder"])
        return take_over(self.engine, self.name, current["holder"], self.holder, self.seconds)

    def valid(self) -> bool:
        """Whether our last claim is still running (a process frozen past its expiry,
        e.g. SIGSTOP, must not go on before its keeper has noticed)."""
        return self.held and time.monotonic() < self._valid_until

    async def keep(self) -> None:
        """Renew every third of the lifetime; raises ``LeaseLost`` when it ends."""
        while True:
            await asyncio.sleep(self.seconds / 3)
            started = time.monotonic()
            try:
                ours = await asyncio.to_thread(renew, self.engine, self.name, self.holder,
                                               self.seconds)
            except Exception as exc:  # noqa: BLE001 — retried until the lease runs out
                if time.monotonic() + self.seconds / 3 >= self._valid_until:
                    self.held = False
                    raise LeaseLost(f"could not renew before expiry: {exc}") from exc
                log.warning("lease %s: renewal failed, retrying: %s", self.name, exc)
                continue
            if not ours:
                self.held = False
                raise LeaseLost("taken over by another process")
            self._valid_until = started + self.seconds

    async def release(self) -> None:
        if self.held:
            self.held = False
            with contextlib.suppress(Exception):  # it expires by itself anyway
                await asyncio.to_thread(release, self.engine, self.name, self.holder)

    def current(self) -> dict[str, Any] | None:
        """The lease row as ``holders`` reports it, or None (best effort, for status)."""
        try:
            return holders(self.engine).get(self.name)
        except Exception:  # noqa: BLE001 — status only
            return None
