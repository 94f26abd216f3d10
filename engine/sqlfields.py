"""SQL merge fields: an admin's query whose column aliases become merge fields.

Runs when a template is rendered (outbox, console), after ``engine.mergefields`` built the
context: ``SELECT plan AS CP_PLAN_NAME FROM subscriptions WHERE email = :INB_FROM`` binds
``:INB_FROM`` from the context and yields ``{"CP_PLAN_NAME": ...}``.

Two guards, either enough alone:
1. ``check_query`` refuses, before anything runs, all but one SELECT (or WITH ... SELECT):
   no second statement, no INSERT/UPDATE/DELETE/DDL/PRAGMA/ATTACH words outside quotes.
2. The database itself refuses writes: SQLite connections open the file read-only
   (``mode=ro``), set ``PRAGMA query_only``, and an authorizer allows only reads while the
   query runs; PostgreSQL runs it in a ``READ ONLY`` transaction that is rolled back.
A time limit stops runaway queries (SQLite: a progress handler; PostgreSQL:
``statement_timeout``).
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from engine.mergefields import FIELD_NAME, STANDARD_FIELDS, TemplateError
from engine.store.database import driver_url, make_engine

DEFAULT_TIMEOUT = 2.0  # seconds; a merge field runs while an agent waits or the outbox sends

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<comment>--[^\n]*|/\*.*?\*/)
  | (?P<string>'(?:[^']|'')*')
  | (?P<quoted>"(?:[^"]|"")*")
  | (?P<param>(?<!:):[A-Za-z_][A-Za-z0-9_]*)
  | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
  | (?P<other>.)
""", re.VERBOSE | re.DOTALL)
_FORBIDDEN = frozenset({
    "INSERT", "UPDATE", "DELETE", "MERGE", "UPSERT", "INTO", "CREATE", "DROP", "ALTER",
    "TRUNCATE", "RENAME", "ATTACH", "DETACH", "PRAGMA", "VACUUM", "REINDEX", "ANALYZE", "GRANT",
    "REVOKE", "COPY", "CALL", "EXEC", "EXECUTE", "LOCK",
})
_SQLITE_READS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                           sqlite3.SQLITE_RECURSIVE})
_PG_CANCELLED = "57014"  # query_canceled: statement_timeout


class SqlFieldError(TemplateError):
    """An SQL merge field could not give its values; the message says what to change."""


class UnsafeQuery(SqlFieldError):
    """Refused before running: not a single read-only SELECT."""


class QueryTimeout(SqlFieldError):
    """The query ran longer than its time limit and was stopped."""


class NoRows(SqlFieldError):
    """The query returned no row, so its fields have no values."""


@dataclass(frozen=True)
class CheckedQuery:
    """What ``check_query`` accepted: ``sql`` for SQLAlchemy ``text()``, its parameters, and
    its unquoted aliases as written, by folded form (PostgreSQL returns ``AS Plan`` as ``plan``).
    """

    sql: str
    params: tuple[str, ...]
    aliases: Mapping[str, str]


@dataclass(frozen=True)
class SqlMergeField:
    """An admin-defined query (``name`` is its label in errors and the admin UI)."""

    name: str
    sql: str
    timeout: float = DEFAULT_TIMEOUT

    @property
    def params(self) -> tuple[str, ...]:
        return check_query(self.sql).params


def check_query(sql: str) -> CheckedQuery:
    """The query as SQLAlchemy ``text()`` wants it, with its bind parameters and aliases.

    Raises ``UnsafeQuery`` for anything but one SELECT. Comments are dropped; colons inside
    string literals and quoted names are escaped so they are not taken for parameters.
    """
    if "\x00" in sql:
        raise UnsafeQuery("the query contains a NUL character")
    matches = list(_TOKEN.finditer(sql))
    for m in matches:
        if m.lastgroup == "other" and (m.group() in "'\"" or sql.startswith("/*", m.start())):
            raise UnsafeQuery(f"unterminated quote or comment at character {m.start() + 1}")
    tokens = [(m.lastgroup, m.group()) for m in matches]
    code = [(kind, value) for kind, value in tokens if kind not in ("space", "comment")]
    while code and code[-1] == ("other", ";"):
        code.pop()
    if not code:
        raise UnsafeQuery("the query is empty")
    _check_tokens(code)
    params = tuple(dict.fromkeys(value[1:] for kind, value in code if kind == "param"))
    rebuilt = "".join(" " if kind == "comment" else value.replace(":", r"\:")
                      if kind in ("string", "quoted") else value for kind, value in tokens)
    aliases = {value.lower(): value for (_, before), (kind, value) in pairwise(code)
               if before.upper() == "AS" and kind == "word"}
    return CheckedQuery(rebuilt.strip().rstrip(";").strip(), params, aliases)


def _check_tokens(code: list[tuple[str | None, str]]) -> None:
    if code[0][0] != "word" or code[0][1].upper() not in ("SELECT", "WITH"):
        raise UnsafeQuery(f"only a SELECT may run, not {code[0][1]!r}")
    for index, (kind, value) in enumerate(code):
        if value == ";":
            raise UnsafeQuery("only one statement may run (found ';')")
        if value in ("$", "\\") or (kind == "other" and value in "[`"):
            raise UnsafeQuery(f"{value!r} is not allowed: use '...' strings and \"...\" names")
        if kind == "word" and value.upper() in _FORBIDDEN:
            raise UnsafeQuery(f"{value.upper()} is not allowed in a merge-field query "
                              f"(to use it as a name, quote it: \"{value}\")")
        if kind == "string" and "\\" in value:
            raise UnsafeQuery("backslashes in strings are not allowed (escape rules differ)")
        if kind == "string" and index and code[index - 1][1].upper() == "E":
            raise UnsafeQuery("escape strings (E'...') are not allowed")


def sql_engine(url: str, *, busy_timeout_ms: int = 5_000) -> Engine:
    """An engine for merge-field queries; on SQLite every connection is read-only."""
    sync_url = make_url(driver_url(url, async_=False))
    if sync_url.get_backend_name() != "sqlite":
        return make_engine(url, pool_size=2)
    if not sync_url.database or sync_url.database == ":memory:":
        raise ValueError("SQL merge fields need a database file")
    ro_url = sync_url.set(database=f"file:{sync_url.database}",
                          query={**sync_url.query, "mode": "ro", "uri": "true"})
    engine = create_engine(ro_url, connect_args={"timeout": busy_timeout_ms / 1000})

    @event.listens_for(engine, "connect")
    def _read_only(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA query_only=ON")

    return engine


@contextmanager
def read_only(engine: Engine, timeout: float = DEFAULT_TIMEOUT) -> Iterator[Connection]:
    """A connection that can only read, for ``timeout`` seconds; rolled back afterwards."""
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            with _sqlite_guard(conn, timeout):
                yield conn
        else:
            with conn.begin() as txn:
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                limit_ms = max(1, int(timeout * 1000))
                conn.exec_driver_sql(f"SET LOCAL statement_timeout = {limit_ms}")
                yield conn
                txn.rollback()


@contextmanager
def _sqlite_guard(conn: Connection, timeout: float) -> Iterator[None]:
    raw = conn.connection.dbapi_connection
    deadline = time.monotonic() + timeout
    raw.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)  # type: ignore
    raw.set_authorizer(_sqlite_authorize)  # type: ignore[union-attr]
    try:
        yield
    finally:
        raw.set_authorizer(None)  # type: ignore[union-attr]
        raw.set_progress_handler(None, 0)  # type: ignore[union-attr]
        conn.rollback()


def _sqlite_authorize(action: int, *_args: Any) -> int:
    return sqlite3.SQLITE_OK if action in _SQLITE_READS else sqlite3.SQLITE_DENY


def run_sql_field(engine: Engine, field: SqlMergeField,
                  context: Mapping[str, Any]) -> dict[str, str]:
    """Run ``field`` with binds from ``context``; its first row as ``{ALIAS: text}``."""
    query = check_query(field.sql)
    missing = [p for p in query.params if p not in context]
    if missing:
        raise SqlFieldError(f"{field.name}: no merge field for parameter(s) "
                            f"{', '.join(':' + p for p in missing)}")
    started = time.monotonic()
    try:
        with read_only(engine, field.timeout) as conn:
            result = conn.execute(text(query.sql), {p: context[p] for p in query.params})
            columns, row = list(result.keys()), result.fetchone()
            result.close()
    except DBAPIError as exc:
        raise _db_error(field, exc, time.monotonic() - started) from None
    columns = [query.aliases.get(col, col) if col.islower() else col for col in columns]
    _check_columns(field, columns)
    if row is None:
        raise NoRows(f"{field.name}: the query returned no row, so {', '.join(columns)} "
                     f"have no values")
    return {col: "" if value is None else str(value) for col, value in zip(columns, row,
                                                                          strict=True)}


def _db_error(field: SqlMergeField, exc: DBAPIError, elapsed: float) -> SqlFieldError:
    orig = exc.orig
    if getattr(orig, "sqlstate", None) == _PG_CANCELLED or (
            isinstance(orig, sqlite3.OperationalError) and str(orig) == "interrupted"):
        return QueryTimeout(f"{field.name}: stopped after {elapsed:.1f} s "
                            f"(limit {field.timeout:g} s)")
    if isinstance(orig, sqlite3.DatabaseError) and "not authorized" in str(orig):
        return UnsafeQuery(f"{field.name}: the database refused it: only reads are allowed")
    return SqlFieldError(f"{field.name}: the database refused the query: {orig}")


def _check_columns(field: SqlMergeField, columns: list[str]) -> None:
    for col in columns:
        if not FIELD_NAME.match(col):
            raise SqlFieldError(f"{field.name}: column {col!r} needs an alias (... AS NAME)")
        if col in STANDARD_FIELDS:
            raise SqlFieldError(f"{field.name}: {col} is a standard merge field; choose "
                                f"another alias")
    if len(set(columns)) != len(columns):
        raise SqlFieldError(f"{field.name}: two columns have the same alias")
