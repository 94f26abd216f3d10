"""Core statements compiled once per dialect and run on the DBAPI cursor: the intake fast path.

Measured on the gateway's write path, SQLAlchemy's per-execution bookkeeping costs 40–70 µs a
statement against 1–5 µs for SQLite itself, and a delivery takes about eight statements, so
it capped the gateway. Here SQLAlchemy still writes the SQL (dialect, paramstyle, types) and
the transaction stays the caller's ``Connection``; only the execution skips its machinery.
Values go through each column type's own bind processor, so rows read back through
SQLAlchemy exactly as if it had written them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property, lru_cache
from typing import Any

from sqlalchemy import Connection, Select, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from engine.store.models import UTCDateTime

Processor = Callable[[Any], Any] | None


@dataclass(frozen=True)
class Compiled:
    """SQL text plus how to turn a dict of values into the driver's parameters."""

    sql: str
    order: tuple[str, ...] | None  # parameter order for positional drivers (qmark)
    processors: dict[str, Processor]  # by bind name; "keys_3" of an IN list uses "keys"
    literals: dict[str, Any]  # values fixed in the statement, e.g. the 1 of "count + 1"
    # columns an INSERT's rows leave out: their Python-side defaults, as SQLAlchemy would
    # apply them (a column added later does not break an insert that does not know it)
    defaults: dict[str, Callable[[], Any]] = field(default_factory=dict)

    def params(self, values: dict[str, Any]) -> Sequence[Any] | dict[str, Any]:
        if self.literals:
            values = self.literals | values
        if self.defaults:  # only columns the rows leave out (compiled per set of keys)
            values = {n: make() for n, make in self.defaults.items()} | values
        if self.order is not None:
            return [v if proc is None or v is None else proc(v)
                    for v, proc in zip([values[n] for n in self.order], self.ordered,
                                       strict=True)]
        return {n: self._process(n, v) for n, v in values.items()}

    @cached_property
    def ordered(self) -> list[Processor]:
        """The processor of each positional parameter, looked up once."""
        return [self._processor(n) for n in self.order or ()]

    def _processor(self, name: str) -> Processor:
        proc = self.processors.get(name)
        if proc is None and name not in self.processors:
            proc = self.processors.get(name.rsplit("_", 1)[0])
        return proc

    def _process(self, name: str, value: Any) -> Any:
        proc = self._processor(name)
        return proc(value) if proc is not None and value is not None else value


def _compiled(statement: Any, dialect: Dialect, defaults: dict[str, Callable[[], Any]] | None
              = None, **kw: Any) -> Compiled:
    comp = statement.compile(dialect=dialect, **kw)
    processors = {name: _processor(bind.type, dialect) for name, bind in comp.binds.items()}
    literals = {name: bind.value for name, bind in comp.binds.items()
                if not bind.required and bind.value is not None and not bind.expanding}
    order = tuple(comp.positiontup) if dialect.positional else None
    wanted = set(order) if order is not None else set(comp.binds)
    return Compiled(comp.string, order, processors, literals,
                    {k: f for k, f in (defaults or {}).items() if k in wanted})


def _processor(type_: Any, dialect: Dialect) -> Processor:
    if isinstance(type_, UTCDateTime) and dialect.name == "sqlite":
        return sqlite_utc
    return type_.dialect_impl(dialect).bind_processor(dialect)  # type: ignore[no-any-return]


@lru_cache(maxsize=256)  # a delivery binds its arrival time three times or more
def sqlite_utc(value: datetime) -> str:
    """What ``UTCDateTime`` binds on SQLite (UTC, SQLAlchemy's text format), written
    directly: its own processor builds a dict and a format string per value, ~5 us, and a
    delivery binds eight of them."""
    if value.tzinfo is not None and value.utcoffset():
        value = value.astimezone(UTC)
    return (f"{value.year:04d}-{value.month:02d}-{value.day:02d} "
            f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}.{value.microsecond:06d}")


def _column_defaults(table: Table, keys: tuple[str, ...]) -> dict[str, Callable[[], Any]]:
    """Python-side defaults of the columns ``keys`` leaves out (scalars and callables)."""
    out: dict[str, Callable[[], Any]] = {}
    for column in table.columns:
        default = column.default
        if column.key in keys or default is None:
            continue
        if default.is_scalar:
            out[column.key] = lambda value=default.arg: value
        elif default.is_callable:
            out[column.key] = lambda make=default.arg: make(None)
    return out


@lru_cache(maxsize=256)
def _insert(dialect: Dialect, table: Table, keys: tuple[str, ...], ignore: bool,
            returning: bool) -> Compiled:
    module = postgresql if dialect.name == "postgresql" else sqlite
    stmt = module.insert(table)
    if ignore:
        stmt = stmt.on_conflict_do_nothing()
    if returning:
        stmt = stmt.returning(*table.primary_key.columns)
    return _compiled(stmt, dialect, _column_defaults(table, keys), column_keys=list(keys))


def pipelined(conn: Connection) -> contextlib.AbstractContextManager[Any]:
    """On PostgreSQL, psycopg's pipeline mode: statements whose results nobody reads go out
    without waiting for the server, so a run of inserts costs one round trip. Only for the
    functions of this module, which read results with ``fetch*``: a SQLAlchemy statement
    inside would see no rows (it looks at the cursor before the results arrive)."""
    if conn.dialect.name != "postgresql":
        return contextlib.nullcontext()
    return conn.connection.dbapi_connection.pipeline()  # type: ignore[union-attr]


def _cursor(conn: Connection) -> Any:
    return conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]


def insert_many(conn: Connection, table: Table, rows: list[dict[str, Any]], *,
                ignore: bool = False) -> None:
    """INSERT rows (all with the same keys); ``ignore`` skips rows that hit a unique key."""
    if not rows:
        return
    comp = _insert(conn.dialect, table, tuple(rows[0]), ignore, False)
    _cursor(conn).executemany(comp.sql, [comp.params(r) for r in rows])


def insert_returning_ids(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> list[int]:
    """INSERT rows and return their new primary keys, in order."""
    if not rows:
        return []
    cursor = _cursor(conn)
    if conn.dialect.name == "sqlite":  # lastrowid is free; RETURNING would need a fetch
        comp = _insert(conn.dialect, table, tuple(rows[0]), False, False)
        ids = []
        for row in rows:
            cursor.execute(comp.sql, comp.params(row))
            ids.append(cursor.lastrowid)
        return ids
    # psycopg pipelines the statements (one round trip for all rows); each keeps its result
    comp = _insert(conn.dialect, table, tuple(rows[0]), False, True)
    cursor.executemany(comp.sql, [comp.params(r) for r in rows], returning=True)
    ids = []
    while True:
        ids.append(cursor.fetchone()[0])
        if not cursor.nextset():
            return ids


@lru_cache(maxsize=512)  # one entry per statement and IN-list length
def _select(dialect: Dialect, statement: Select,
            expanding: tuple[tuple[str, int], ...]) -> Compiled:
    values = {name: [None] * length for name, length in expanding}
    stmt = statement.params(**values) if values else statement
    return _compiled(stmt, dialect, compile_kwargs={"render_postcompile": True})


def select_rows(conn: Connection, statement: Select, values: dict[str, Any],
                expanding: Iterable[str] = ()) -> list[tuple[Any, ...]]:
    """Run a SELECT; list-valued params named in ``expanding`` fill ``IN (...)``."""
    lists = {name: values[name] for name in expanding}
    if any(not v for v in lists.values()):
        return []  # IN () matches nothing
    shape = tuple((name, len(v)) for name, v in sorted(lists.items()))
    comp = _select(conn.dialect, statement, shape)
    flat = {k: v for k, v in values.items() if k not in lists}
    for name, items in lists.items():
        flat.update({f"{name}_{i}": item for i, item in enumerate(items, 1)})
    cursor = _cursor(conn)
    cursor.execute(comp.sql, comp.params(flat))
    return cursor.fetchall()


def execute_many(conn: Connection, statement: Any, rows: list[dict[str, Any]]) -> None:
    """Run an UPDATE (or any DML without expanding params) once per row of values."""
    if rows:
        comp = _compiled_dml(conn.dialect, statement)
        _cursor(conn).executemany(comp.sql, [comp.params(r) for r in rows])


@lru_cache(maxsize=64)
def _compiled_dml(dialect: Dialect, statement: Any) -> Compiled:
    return _compiled(statement, dialect)
