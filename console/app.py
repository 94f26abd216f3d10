"""The console's app factory: settings in, a WSGI app out (served by waitress)."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flask import Flask, Response
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import Engine, text

from console import db, placeholders
from console.agent import bp as agent_bp
from console.auth import init_auth
from engine.config import Settings, console_secret
from engine.store.database import make_engine

Health = Callable[[], dict[str, Any]]
STATIC = Path(__file__).parent / "static"
HTMX = STATIC / "vendor" / "htmx.min.js"


def create_app(settings: Settings, *, health: Health | None = None,
               engine: Engine | None = None) -> Flask:
    """The console for ``settings``; ``health`` answers /healthz (the gateway's, when it
    serves the console), else a database check of the console's own."""
    app = Flask(__name__, static_folder=str(STATIC), static_url_path="/static")
    app.config.update(
        SECRET_KEY=console_secret(settings),
        SESSION_COOKIE_NAME="postdesk_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.console.secure_cookies,
        REMEMBER_COOKIE_SECURE=settings.console.secure_cookies,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.console.session_hours),
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the signed session
        POSTDESK_HTMX=HTMX.exists(),
    )
    engine = engine or make_engine(
        settings.database_url, **settings.database.engine_options(settings.console.threads))
    db.init_db(app, engine)
    app.extensions["postdesk.settings"] = settings  # accounts, tags, templates (message view)
    CSRFProtect(app)
    init_auth(app)
    app.register_blueprint(agent_bp)
    _register_optional(app, "console.message")
    _register_optional(app, "console.supervisor")
    placeholders.register_missing(app)
    check = health or _database_health(engine)
    for rule in ("/healthz", "/health"):
        app.add_url_rule(rule, f"health{rule.replace('/', '_')}", lambda: _health(check))
    app.jinja_env.globals["now"] = lambda: datetime.now(UTC)
    return app


def _register_optional(app: Flask, module: str) -> None:
    """Register ``module.bp`` if that part of the console exists yet."""
    try:
        found = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        return
    app.register_blueprint(found.bp)


def _database_health(engine: Engine) -> Health:
    def check() -> dict[str, Any]:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            database = "ok"
        except Exception as exc:  # noqa: BLE001 — reported, not raised
            database = f"error: {exc.__class__.__name__}"
        return {"status": "ok" if database == "ok" else "degraded", "database": database,
                "time": datetime.now(UTC).isoformat(), "listeners": ["http"]}
    return check


def _health(check: Health) -> Response:
    body = check()
    return Response(json.dumps(body), status=200 if body.get("status") == "ok" else 503,
                    mimetype="application/json")


def wsgi_app(settings: Settings, health: Health | None = None) -> Flask:
    """Entry point ``postdesk.http`` (pyproject): what ``postdesk serve`` mounts."""
    return create_app(settings, health=health)
