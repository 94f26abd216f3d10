"""The store: migrations match the models (on SQLite and PostgreSQL), WAL pragmas, async and
sync access."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from databases import Backend
from sqlalchemy import Engine, insert, select

from engine.store.database import (
    async_session_factory,
    current_revision,
    driver_url,
    make_async_engine,
    make_engine,
    upgrade,
)
from engine.store.models import ACTIVE_STATES, SETTLED_STATES, Base, Message, MessageState


def test_migrations_build_exactly_the_models(database: Backend, tmp_path: Path) -> None:
    url = database.empty(tmp_path)
    upgrade(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                Base.metadata)
    assert diff == []
    assert current_revision(engine) is not None
    upgrade(url)  # idempotent
    engine.dispose()
    database.drop(url)


@pytest.mark.backends("sqlite")  # SQLite's own durability settings
def test_sqlite_runs_in_wal_with_durable_commits(store: Engine) -> None:
    with store.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000


def test_driver_urls() -> None:  # pure URL rewriting: no database
    assert driver_url("sqlite:///x.db", async_=True) == "sqlite+aiosqlite:///x.db"
    assert driver_url("postgresql://u:p@h/db", async_=False) == "postgresql+psycopg://u:p@h/db"
    assert driver_url("postgresql://u@h/db", async_=True) == "postgresql+asyncpg://u@h/db"


def test_models_work_from_async_code(store: Engine) -> None:
    when = datetime(2026, 11, 22, 8, 30, tzinfo=UTC)
    with store.begin() as conn:
        conn.execute(insert(Message).values(
            dedupe_key="k1", message_id_header="<a@b>", account_id=1, date=when, raw=b"x"))

    async def read() -> list[Message]:
        url = store.url.set(drivername=store.url.get_backend_name())
        engine = make_async_engine(url.render_as_string(hide_password=False))
        async with async_session_factory(engine)() as session:
            rows = (await session.scalars(select(Message))).all()
        await engine.dispose()
        return list(rows)

    [msg] = asyncio.run(read())
    assert msg.date == when and msg.state == MessageState.QUEUED


def test_states_split_into_active_and_settled() -> None:
    assert {s.value for s in ACTIVE_STATES} == {"queued", "assigned", "draft"}
    assert {s.value for s in SETTLED_STATES} == {
        "resolved", "sent", "deleted", "redirected", "auto_replied", "bounce"}


def test_readers_do_not_take_the_write_lock(store: Engine) -> None:
    """A long read (console page, health check) must not stall the gateway's commits."""
    from engine.store.database import writer

    with store.connect() as reader:
        reader.exec_driver_sql("SELECT count(*) FROM messages").scalar()  # read txn open
        with writer(store).begin() as conn:
            conn.execute(insert(Message).values(
                dedupe_key="k2", message_id_header="<b@c>", account_id=1, raw=b"y",
                date=datetime(2026, 1, 1, tzinfo=UTC)))


def test_wal_is_checkpointed_in_the_background_not_by_commits(tmp_path: Path) -> None:
    """The writer's commits never pay for a checkpoint; a thread moves the WAL into the DB.
    SQLite only: WAL files and checkpoints are SQLite's."""
    import os
    import time

    from helpers import store_with_accounts

    from engine.store.database import checkpoint_in_background, writer

    engine = store_with_accounts(f"sqlite:///{tmp_path / 'c.db'}")
    engine.dispose()  # new connections get the no-autocheckpoint pragma
    db_file = tmp_path / "c.db"
    before = os.path.getsize(db_file)
    checkpoint_in_background(engine, every=0.2)
    with writer(engine).begin() as conn:
        conn.execute(insert(Message), [
            {"dedupe_key": f"k{i}", "message_id_header": f"<{i}@c>", "account_id": 1,
             "date": datetime(2026, 1, 1, tzinfo=UTC), "raw": b"x" * 4000} for i in range(500)])
    assert os.path.getsize(db_file) == before  # the commit itself did not checkpoint
    deadline = time.monotonic() + 10
    # the file grows as the checkpoint copies pages: wait for all of them, not the first
    while os.path.getsize(db_file) <= before + 500 * 4000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.path.getsize(db_file) > before + 500 * 4000
    engine.dispose()
