"""The console's database access: one engine per app, one ORM session per request."""

from __future__ import annotations

from flask import Flask, current_app, g
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from engine.store.database import writer


def init_db(app: Flask, engine: Engine) -> None:
    app.extensions["postdesk.engine"] = engine
    app.teardown_appcontext(_close)


def engine() -> Engine:
    return current_app.extensions["postdesk.engine"]  # type: ignore[no-any-return]


def session() -> Session:
    """The request's read session (deferred transactions never block the gateway)."""
    if "db" not in g:
        g.db = Session(engine(), expire_on_commit=False)
    return g.db  # type: ignore[no-any-return]


def write_session() -> Session:
    """A session for a short write: on SQLite its transaction begins IMMEDIATE."""
    return Session(writer(engine()), expire_on_commit=False)


def _close(_exc: BaseException | None) -> None:
    db = g.pop("db", None)
    if db is not None:
        db.close()
