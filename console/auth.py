"""Login and logout: password check, signed-cookie sessions (flask-login)."""

from __future__ import annotations

import hashlib
from typing import Any

from flask import Blueprint, Flask, redirect, render_template, request, session, url_for
from flask_login import LoginManager, UserMixin, login_required, login_user, logout_user
from sqlalchemy import select

from console import db
from engine.queues import Viewer, viewer_of
from engine.store.models import User
from engine.users import verify_password

bp = Blueprint("auth", __name__)


class ConsoleUser(UserMixin):
    """The session's user. Its id carries a digest of the password hash, so changing the
    password (``postdesk user passwd``) ends every session of that user."""

    def __init__(self, user: User):
        self.viewer: Viewer = viewer_of(user)
        self.display_name = user.display_name or user.username
        self._session_id = f"{user.id}:{_digest(user.password_hash)}"

    def get_id(self) -> str:
        return self._session_id


def _digest(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def _load_user(session_id: str) -> ConsoleUser | None:
    user_id, _, digest = session_id.partition(":")
    if not user_id.isdigit():
        return None
    user = db.session().get(User, int(user_id))
    if user is None or not user.active or digest != _digest(user.password_hash):
        return None
    return ConsoleUser(user)


def init_auth(app: Flask) -> None:
    manager = LoginManager(app)
    manager.login_view = "auth.login"
    manager.login_message = ""
    manager.session_protection = "basic"
    manager.user_loader(_load_user)
    app.register_blueprint(bp)


def _safe_next(target: str | None) -> str:
    """Only same-site paths: never an open redirect to another host."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("agent.home")


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    error = None
    if request.method == "POST":
        username = request.form.get("username", "").strip()
        user = db.session().scalar(select(User).where(User.username == username))
        if user is not None and verify_password(user, request.form.get("password", "")):
            session.clear()
            session.permanent = True
            login_user(ConsoleUser(user))
            return redirect(_safe_next(request.args.get("next")))
        error = "Unknown user or wrong password."
    status = 401 if error else 200
    return render_template("login.html", error=error, next=request.args.get("next")), status


@bp.route("/logout", methods=["POST"])
@login_required
def logout() -> Any:
    logout_user()
    session.clear()
    return redirect(url_for("auth.login"))
