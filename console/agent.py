"""The agent's home: queues with live counts, "get next", my inbox, break, today's work."""

from __future__ import annotations

from itertools import groupby
from typing import Any

from flask import (
    Blueprint,
    abort,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import login_required

from console import db
from console.authz import is_htmx, render, viewer
from engine import queues

bp = Blueprint("agent", __name__)


def _queues_by_account() -> list[dict[str, Any]]:
    """Visible accounts, each with its non-empty queues."""
    session = db.session()
    me = viewer()
    counts = {a: list(qs) for a, qs in groupby(queues.queue_counts(session, me),
                                                 key=lambda q: q.account_id)}
    return [{"id": i, "name": name, "queues": counts.get(i, []),
             "total": sum(q.count for q in counts.get(i, []))}
            for i, name in queues.visible_accounts(session, me)]


def _visible_account(account_id: int) -> None:
    if not queues.sees_account(db.session(), viewer(), account_id):
        abort(404)


@bp.route("/")
@login_required
def home() -> Any:
    me = viewer()
    accounts = _queues_by_account()
    inboxes = {a["id"]: queues.my_inbox(db.session(), me, a["id"]) for a in accounts}
    return render_template("home.html", accounts=accounts, inboxes=inboxes, me=me,
                           activity=queues.today_activity(db.session(), me))


@bp.route("/queues")
@login_required
def queue_list() -> Any:
    return render_template("_queues.html", accounts=_queues_by_account(), me=viewer())


@bp.route("/accounts/<int:account_id>/inbox")
@login_required
def inbox(account_id: int) -> Any:
    _visible_account(account_id)
    items = queues.my_inbox(db.session(), viewer(), account_id)
    return render("inbox.html", "_inbox.html", account_id=account_id, items=items)


@bp.route("/next", methods=["POST"])
@login_required
def get_next() -> Any:
    account = request.form.get("account", "")
    classification = request.form.get("classification", "")
    if not account.isdigit():
        abort(400)
    _visible_account(int(account))
    message_id = queues.claim(db.engine(), viewer().id, int(account), classification)
    if message_id is None:
        flash("You are on a break." if viewer().on_break
              else f"Nothing left for you in {classification or 'unclassified'}.")
        target = url_for("agent.home")
    else:
        target = url_for("message.show", message_id=message_id)
    if is_htmx():
        response = make_response("", 204)
        response.headers["HX-Redirect"] = target
        return response
    return redirect(target, 303)


@bp.route("/break", methods=["POST"])
@login_required
def toggle_break() -> Any:
    on_break = request.form.get("on_break") == "1"
    with db.write_session() as session, session.begin():
        queues.set_break(session, viewer().id, on_break)
    if is_htmx():
        return render_template("_break.html", on_break=on_break)
    return redirect(url_for("agent.home"), 303)


@bp.route("/activity")
@login_required
def activity() -> Any:
    return render_template("_activity.html",
                           activity=queues.today_activity(db.session(), viewer()))
