"""Who is asking and what they may see: the login user, role checks, htmx-aware rendering.

Anything an agent may not see answers 404 (not 403), so URLs reveal nothing about other
accounts; ``engine.queues`` holds the rules themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import abort, render_template, request
from flask_login import current_user, login_required

from engine.queues import Viewer
from engine.store.models import Role

RANK = {Role.AGENT.value: 0, Role.SUPERVISOR.value: 1, Role.ADMIN.value: 2}


def viewer() -> Viewer:
    """The logged-in user as an ``engine.queues.Viewer`` (views are login_required)."""
    return current_user.viewer  # type: ignore[no-any-return]


def role_required(role: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Login, and at least ``role`` (agent < supervisor < admin); others get 404."""
    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        @login_required
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if RANK.get(viewer().role, -1) < RANK[role]:
                abort(404)
            return view(*args, **kwargs)
        return wrapped
    return decorate


def is_htmx() -> bool:
    """An htmx request (it sends ``HX-Request: true``), answered with a fragment."""
    return request.headers.get("HX-Request") == "true"


def render(page: str, fragment: str, **context: Any) -> str:
    """The full page, or only its fragment for htmx."""
    return render_template(fragment if is_htmx() else page, **context)
