"""Database setup: engines for sync and async code, SQLite pragmas, Alembic upgrades.

Users write one URL (``sqlite:///path`` or ``postgresql://...``); this module picks the driver
for each side: pysqlite / psycopg 3 for sync code (console, CLI, the gateway's writer thread)
and aiosqlite / asyncpg for async code.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

T = TypeVar("T")
# The database itself failed (unreachable, restarting, locked past the busy timeout, disk
# full): the caller must retry (the gateway answers 4xx). Other errors, DataError and
# IntegrityError included, are about one statement's data and are isolated instead.
UNAVAILABLE = (OperationalError, InterfaceError)

SYNC_DRIVERS = {"sqlite": "sqlite+pysqlite", "postgresql": "postgresql+psycopg"}
ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}


def driver_url(url: str, *, async_: bool) -> str:
    """Rewrite ``url`` to the driver Postdesk uses for sync or async code."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    table = ASYNC_DRIVERS if async_ else SYNC_DRIVERS
    if backend not in table:
        raise ValueError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")
    return parsed.set(drivername=table[backend]).render_as_string(hide_password=False)


def _sqlite_pragmas(busy_timeout_ms: int) -> Any:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        # pysqlite's own transaction handling defeats SAVEPOINT and BEGIN IMMEDIATE;
        # SQLAlchemy's documented recipe: turn it off and emit BEGIN ourselves.
        if hasattr(dbapi_conn, "isolation_level"):
            dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")  # a 250 must survive power loss, not just a crash
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return on_connect


def _sqlite_begin(conn: Any) -> None:
    conn.exec_driver_sql(f"BEGIN {conn.get_execution_options().get('sqlite_begin', 'DEFERRED')}")


def writer(engine: Engine) -> Engine:
    """The same engine, but SQLite transactions take the write lock when they begin.

    A deferred transaction that reads and then writes fails at once with "database is locked"
    if another process wrote meanwhile; an IMMEDIATE one waits its turn (busy_timeout).
    Readers keep deferred transactions, so they never block the gateway's writer.
    """
    return engine.execution_options(sqlite_begin="IMMEDIATE")


def _ensure_sqlite_dir(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def _lock_timeout(busy_timeout_ms: int) -> str:
    """PostgreSQL's counterpart of SQLite's busy timeout: how long a statement waits for a
    lock before failing (``OperationalError``, so the gateway answers 451 instead of hanging);
    0 would mean "forever" there, so it becomes 1 ms, as close to SQLite's "fail at once"."""
    return str(max(1, int(busy_timeout_ms)))


def json_text(value: Any) -> str:
    """JSON columns' text: orjson, a sixth of ``json.dumps``' time (a decision with its trace
    took 10 us), and ``json.dumps`` for what orjson refuses (integers past 64 bits). Both
    read back as the same values."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(value)


def make_engine(url: str, *, busy_timeout_ms: int = 10_000, pool_size: int = 5,
                max_overflow: int = 10, pool_timeout: float = 30,
                pool_recycle: int = 1800, pre_ping: bool = True) -> Engine:
    """A sync engine; SQLite gets WAL, FULL sync, a busy timeout and write-first BEGINs;
    PostgreSQL gets the busy timeout as its ``lock_timeout``.

    The pool settings apply to PostgreSQL, whose connections are also checked before use
    (``pre_ping``, the default): after a database restart the first checkout reconnects
    instead of failing on a dead connection."""
    sync_url = driver_url(url, async_=False)
    if make_url(sync_url).get_backend_name() == "sqlite":
        _ensure_sqlite_dir(sync_url)
        engine = create_engine(sync_url, connect_args={"timeout": busy_timeout_ms / 1000},
                               json_serializer=json_text)
        event.listen(engine, "connect", _sqlite_pragmas(busy_timeout_ms))
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    options = {**PG_CONNECT, "options": f"-c lock_timeout={_lock_timeout(busy_timeout_ms)}"}
    return create_engine(sync_url, pool_pre_ping=pre_ping, connect_args=options,
                         json_serializer=json_text,
                         **_pool(pool_size, max_overflow, pool_timeout, pool_recycle))


def make_async_engine(url: str, *, busy_timeout_ms: int = 10_000, pool_size: int = 5,
                      max_overflow: int = 10, pool_timeout: float = 30,
                      pool_recycle: int = 1800) -> AsyncEngine:
    """An async engine (aiosqlite / asyncpg) over the same schema."""
    async_url = driver_url(url, async_=True)
    if make_url(async_url).get_backend_name() == "sqlite":
        _ensure_sqlite_dir(async_url)
        engine = create_async_engine(async_url, json_serializer=json_text)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas(busy_timeout_ms))
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    settings = {"server_settings": {"lock_timeout": _lock_timeout(busy_timeout_ms)}}
    return create_async_engine(async_url, pool_pre_ping=True, connect_args=settings,
                               json_serializer=json_text,
                               **_pool(pool_size, max_overflow, pool_timeout, pool_recycle))


# A server that is down or unreachable must fail fast (the gateway answers 451 and the MTA
# retries), not hang an SMTP transaction: bound connecting and keep TCP probing idle links.
PG_CONNECT = {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 30,
              "keepalives_interval": 10, "keepalives_count": 3}


def _pool(size: int, overflow: int, timeout: float, recycle: int) -> dict[str, Any]:
    return {"pool_size": size, "max_overflow": overflow, "pool_timeout": timeout,
            "pool_recycle": recycle}


def checkpoint_in_background(engine: Engine, every: float = 1.0) -> threading.Event:
    """Move SQLite's WAL checkpoints off ``engine``'s commits onto a daemon thread.

    By default the commit that crosses 1,000 WAL pages copies them into the database file
    and fsyncs it, a multi-millisecond stall every ~50 deliveries that set the gateway's p99.
    Here ``engine``'s connections never checkpoint; a thread with its own connection runs a
    PASSIVE checkpoint (which never blocks writers) every ``every`` seconds until the
    returned event is set.
    """
    stop = threading.Event()
    event.listen(engine, "connect",
                 lambda dbapi_conn, _rec: dbapi_conn.execute("PRAGMA wal_autocheckpoint=0"))

    def loop() -> None:
        import sqlite3

        conn = sqlite3.connect(make_url(engine.url).database, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=1000")
        while not stop.wait(every):
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:  # e.g. busy: the next round catches up
                logging.getLogger(__name__).debug("checkpoint skipped: %s", exc)
        conn.close()

    threading.Thread(target=loop, name="wal-checkpoint", daemon=True).start()
    return stop


class GaveUpWaiting(Exception):
    """The store stayed unavailable for as long as a start-up would wait (not the intake's
    per-delivery ``StoreUnavailable``, which the sender retries)."""


def retry_unavailable(call: Callable[[], T], seconds: float, what: str) -> T:
    """``call()``, retried while the store is unavailable (``UNAVAILABLE``) for up to
    ``seconds``, waiting 0.2 s, then twice as long each time up to 5 s; then
    ``GaveUpWaiting`` saying what failed and why. For start-up writes: a store locked by
    a long transaction or still starting delays a service instead of ending it."""
    deadline = time.monotonic() + seconds
    pause = 0.2
    while True:
        try:
            return call()
        except UNAVAILABLE as exc:
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            left = deadline - time.monotonic()
            if left <= 0:
                raise GaveUpWaiting(f"{what}: the store stayed unavailable for "
                                       f"{seconds:g} s ({reason})") from exc
            print(f"postdesk: {what}: the store is unavailable ({reason}); retrying for up "
                  f"to {left:.0f} s", file=sys.stderr, flush=True)
            time.sleep(min(pause, left))
            pause = min(pause * 2, 5.0)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def async_session_factory(engine: AsyncEngine) -> async_sessionmaker[Any]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Any:
    """An Alembic Config pointing at our migrations, for ``postdesk db upgrade`` and tests."""
    from alembic.config import Config

    here = Path(__file__).parent
    cfg = Config()
    cfg.set_main_option("script_location", str(here / "migrations"))
    cfg.set_main_option("sqlalchemy.url", driver_url(url, async_=False).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head", wait: float = 0) -> None:
    """Bring the database at ``url`` to ``revision`` (creating it when new); with ``wait``,
    first wait up to that many seconds for the database to accept a connection (a service
    starting alongside its PostgreSQL)."""
    from alembic import command

    if make_url(url).get_backend_name() == "sqlite":
        _ensure_sqlite_dir(driver_url(url, async_=False))
    if wait > 0:
        engine = make_engine(url)
        try:
            retry_unavailable(lambda: engine.connect().close(), wait, "connecting")
        finally:
            engine.dispose()
    command.upgrade(alembic_config(url), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
