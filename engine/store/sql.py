"""Small portable SQL helpers that SQLite and PostgreSQL spell differently."""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import Connection, Insert, Table
from sqlalchemy.dialects import postgresql, sqlite


@cache
def _insert_ignore_statement(dialect_name: str, table: Table) -> Insert:
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing()


def insert_ignore(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """INSERT rows, skipping any that collide with an existing key (ON CONFLICT DO NOTHING)."""
    if rows:
        conn.execute(_insert_ignore_statement(conn.dialect.name, table), rows)
