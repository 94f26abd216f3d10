"""Shared pytest fixtures; the helpers they use live in ``helpers.py``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from databases import BACKENDS, Backend, PostgresServer
from helpers import Instance, accounts_added
from relay import Relay
from sqlalchemy import Engine

from engine.store.database import make_engine


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--database", choices=(*BACKENDS, "both"), default="both",
                     help="run the database tests on one backend only (default: both)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that uses a database, directly or through a fixture, runs once per backend."""
    if "database" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("database")
        names = BACKENDS if chosen == "both" else (chosen,)
        if only := metafunc.definition.get_closest_marker("backends"):
            names = tuple(n for n in names if n in only.args)
        metafunc.parametrize("database", names, indirect=True, scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With ``--database X``, tests marked for other backends only are deselected."""
    chosen = config.getoption("database")
    if chosen == "both":
        return
    other = [item for item in items if (only := item.get_closest_marker("backends"))
             and chosen not in only.args]
    if other:
        config.hook.pytest_deselected(items=other)
        items[:] = [item for item in items if item not in other]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL cluster, started on first use."""
    server = PostgresServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def backends(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Callable[[str], Backend]]:
    """Each backend once for the session, with its template databases. ``database`` is
    parametrized, so pytest tears it down whenever the backend changes, and under xdist's
    loadscope that is at every module (a module's [sqlite] tests, then its [postgresql] ones):
    the templates must outlive it."""
    made: dict[str, Backend] = {}

    def backend(name: str) -> Backend:
        if name not in made:
            made[name] = Backend(name, tmp_path_factory.mktemp(f"templates-{name}"),
                                 lambda: postgres_server)
        return made[name]

    yield backend
    for each in made.values():
        each.close()


@pytest.fixture(scope="session")
def database(request: pytest.FixtureRequest, backends: Callable[[str], Backend]) -> Backend:
    """The backend under test (``[sqlite]`` / ``[postgresql]``): ``database.fresh(dir)``
    gives a new, migrated database's URL."""
    return backends(request.param)


@pytest.fixture
def store(database: Backend, tmp_path: Path) -> Iterator[Engine]:
    """A migrated store with accounts 1 (support) and 2 (sales); no network."""
    url = database.fresh(tmp_path, accounts_added)
    engine = make_engine(url)
    yield engine
    engine.dispose()
    database.drop(url)


def _finish(inst: Instance, database: Backend) -> int | None:
    code = inst.stop()
    if inst._engine is not None:
        inst._engine.dispose()
    database.drop(inst.db_url)
    return code


@pytest.fixture
def instance(database: Backend, tmp_path: Path) -> Iterator[Instance]:
    """A fresh, not yet started instance; stopped and disposed after the test."""
    inst = Instance(tmp_path / "instance", db_url=database.fresh(tmp_path))  # dir: not made yet
    yield inst
    _finish(inst, database)


@pytest.fixture(scope="module")
def gateway(database: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    """One running gateway shared by a test module (default settings, 1 MB size limit)."""
    where = tmp_path_factory.mktemp("gateway")
    inst = Instance(where, db_url=database.fresh(where)).write().start()
    yield inst
    code = _finish(inst, database)
    assert code == 0, f"serve exited with {code}:\n{inst.log()[-3000:]}"


@pytest.fixture
def relay() -> Iterator[Relay]:
    """A test relay on loopback that accepts mail (``relay.mode`` makes it refuse)."""
    r = Relay().up()
    yield r
    r.down()
