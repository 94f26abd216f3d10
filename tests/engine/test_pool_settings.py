"""The ``database:`` pool settings: validated with their location, and on a real PostgreSQL a
process never holds more connections than ``pool_size + max_overflow``, waits at most
``pool_timeout`` for one, and reconnects after a server restart (``pool_pre_ping``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres import Server, fresh_database, server
from sqlalchemy import text
from sqlalchemy.exc import TimeoutError as PoolTimeout

from engine.config import ConfigError, load_settings
from engine.store.database import make_engine


def _settings(tmp_path: Path, database: str) -> Path:
    path = tmp_path / "postdesk.yaml"
    path.write_text(f"database:\n{database}accounts:\n"
                    "  - {name: support, addresses: [support@example.test]}\n")
    return path


def test_pool_settings_default_sensibly() -> None:
    from engine.config import DatabaseSettings

    options = DatabaseSettings().engine_options()
    assert options["pool_size"] == 5 and options["max_overflow"] == 10
    assert options["pool_timeout"] == 30 and options["pool_recycle"] == 1800
    assert DatabaseSettings().engine_options(8)["pool_size"] == 8  # the role's default
    assert DatabaseSettings(pool_size=3).engine_options(8)["pool_size"] == 3


def test_bad_pool_settings_are_reported_with_their_place(tmp_path: Path) -> None:
    path = _settings(tmp_path, "  pool_size: 0\n  max_overflow: -1\n  pool_timeout: 0\n"
                               "  pool_recycle: -2\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={})
    found = {(p.line, p.key) for p in err.value.problems}
    assert found == {(2, "database.pool_size"), (3, "database.max_overflow"),
                     (4, "database.pool_timeout"), (5, "database.pool_recycle")}


@pytest.fixture(scope="module")
def pg() -> Iterator[Server]:
    with server() as running:
        yield running


def _connections(url: str, name: str) -> int:
    probe = make_engine(url, pool_size=1)
    with probe.connect() as conn:
        count = conn.execute(text("SELECT count(*) FROM pg_stat_activity "
                                  "WHERE datname = :d AND pid <> pg_backend_pid()"),
                             {"d": name}).scalar_one()
    probe.dispose()
    return count


def test_a_process_holds_at_most_its_pool_and_waits_pool_timeout(pg: Server,
                                                                 tmp_path: Path) -> None:
    url = fresh_database(pg.url)
    path = _settings(tmp_path, f"  url: {url}\n  pool_size: 2\n  max_overflow: 1\n"
                               "  pool_timeout: 1\n  pool_recycle: 60\n")
    settings = load_settings(path, environ={})
    engine = make_engine(settings.database_url, **settings.database.engine_options())
    held = [engine.connect() for _ in range(3)]
    assert _connections(url, url.rsplit("/", 1)[1]) == 3
    started = time.monotonic()
    with pytest.raises(PoolTimeout):
        engine.connect()
    assert 0.8 < time.monotonic() - started < 5
    for conn in held:
        conn.close()
    assert _connections(url, url.rsplit("/", 1)[1]) == 2  # the overflow one is closed

    pg.restart()  # every pooled connection is dead now
    with engine.connect() as conn:  # pre-ping replaces it: no error reaches the caller
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
    engine.dispose()
