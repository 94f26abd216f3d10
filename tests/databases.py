"""The databases the suite runs on: SQLite files and a throwaway PostgreSQL cluster.

A ``Backend`` hands each test a fresh database URL. Building a database (migrating, adding
accounts and users) is done once per session per recipe into a *template*; each test gets a
copy: a file copy for SQLite, ``CREATE DATABASE ... TEMPLATE`` for PostgreSQL, both far
cheaper than running the migrations again. The PostgreSQL cluster is started on first use
(``tests/postgres.py``; ``POSTDESK_TEST_POSTGRES`` uses an existing server instead).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from postgres import cluster
from sqlalchemy import Engine, create_engine, text

from engine.store.database import upgrade

BACKENDS = ("sqlite", "postgresql")
Recipe = Callable[[str], None]  # builds a database at the URL it is given


def migrated(url: str) -> None:
    """The recipe of an empty database at the schema's head."""
    upgrade(url)


class PostgresServer:
    """One cluster for the session, started when a test first needs it."""

    def __init__(self) -> None:
        self._stack = ExitStack()
        self._url: str | None = None
        self._admin: Engine | None = None

    @property
    def admin(self) -> Engine:
        if self._admin is None:
            self._url = self._stack.enter_context(cluster())
            self._admin = create_engine(self._url, isolation_level="AUTOCOMMIT")
        return self._admin

    def url_of(self, name: str) -> str:
        self.admin  # noqa: B018 — starts the cluster
        assert self._url is not None
        return self._url.rsplit("/", 1)[0] + "/" + name

    def execute(self, sql: str) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(sql))

    def create(self, template: str | None = None) -> str:
        """A new database (a copy of ``template`` if given); returns its URL."""
        name = "t_" + uuid.uuid4().hex[:12]
        copy = f' TEMPLATE "{template}"' if template else ""
        self.execute(f'CREATE DATABASE "{name}"{copy}')
        return self.url_of(name)

    def drop(self, url: str) -> None:
        """Drop the database of ``url``, closing whatever connections are left."""
        self.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')

    def close(self) -> None:
        if self._admin is not None:
            self._admin.dispose()
        self._stack.close()


class Backend:
    """Fresh databases of one kind; ``name`` is ``sqlite`` or ``postgresql``."""

    def __init__(self, name: str, workdir: Path, server: Callable[[], PostgresServer]) -> None:
        self.name = name
        self._workdir = workdir
        self._server = server
        self._templates: dict[str, str] = {}  # recipe key -> SQLite path or PG database name
        self._made: list[str] = []  # URLs of PostgreSQL databases to drop at the end

    def fresh(self, where: Path, recipe: Recipe = migrated, *, name: str = "postdesk",
              key: str | None = None) -> str:
        """A new database built by ``recipe`` (once per session per ``key``) and its URL.

        SQLite databases are files ``where/NAME.db``; PostgreSQL ones are new databases in
        the session's cluster."""
        key = key or recipe.__qualname__
        template = self._templates.get(key) or self._build(key, recipe)
        if self.name == "sqlite":
            where.mkdir(parents=True, exist_ok=True)
            path = where / f"{name}.db"
            shutil.copyfile(template, path)
            return f"sqlite:///{path}"
        url = self._server().create(template)
        self._made.append(url)
        return url

    def empty(self, where: Path) -> str:
        """A URL to a database with no tables (for tests of the migrations themselves)."""
        if self.name == "sqlite":
            return f"sqlite:///{where / 'postdesk.db'}"
        url = self._server().create()
        self._made.append(url)
        return url

    def _build(self, key: str, recipe: Recipe) -> str:
        if self.name == "sqlite":
            path = self._workdir / ("".join(c if c.isalnum() else "_" for c in key) + ".db")
            recipe(f"sqlite:///{path}")  # the recipe disposes its engines: the WAL is merged
            self._templates[key] = str(path)
        else:
            url = self._server().create()
            recipe(url)
            self._templates[key] = url.rsplit("/", 1)[1]
            self._made.append(url)
        return self._templates[key]

    def drop(self, url: str) -> None:
        """Drop a PostgreSQL test database now (connections still open are closed)."""
        if self.name == "postgresql" and url in self._made:
            self._server().drop(url)
            self._made.remove(url)

    def close(self) -> None:
        """Drop what is left (only matters on a server that outlives the run)."""
        for url in reversed(self._made):
            self._server().drop(url)
        self._made.clear()

