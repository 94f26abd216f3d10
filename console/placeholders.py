"""Stand-ins for pages another part of the console provides (``console/message.py``):
registered only for endpoints nothing else defined, so the home page's links resolve."""

from __future__ import annotations

from typing import Any

from flask import Flask, abort, render_template
from flask_login import login_required

from console import db
from console.authz import viewer
from engine import queues


@login_required
def show(message_id: int) -> Any:
    message = queues.message_for(db.session(), viewer(), message_id)
    if message is None:
        abort(404)
    return render_template("placeholder.html", message=message, what="message")


PAGES = [("message", "show", "/messages/<int:message_id>", show)]


def register_missing(app: Flask) -> None:
    """Add each placeholder whose endpoint (e.g. ``message.show``) is not defined yet."""
    for blueprint, name, rule, view in PAGES:
        endpoint = f"{blueprint}.{name}"
        if endpoint not in app.view_functions:
            app.add_url_rule(rule, endpoint, view)
