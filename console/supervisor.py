"""The supervisor's pages (role supervisor or admin; anyone else gets 404): the queue
monitor, the review of deleted messages with *Restore*, and a read-only preview of any
message with *Assign to* an agent. Data comes from ``engine.monitor`` and ``engine.work``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from markupsafe import escape
from sqlalchemy import select
from sqlalchemy.orm import Session

from console import db
from console.authz import is_htmx, render, role_required, viewer
from engine import monitor, queues, threadview, work
from engine.store.models import Account, Attachment, Message, Role

bp = Blueprint("supervisor", __name__, url_prefix="/supervisor")
SUPERVISOR = Role.SUPERVISOR.value


def _now() -> datetime:
    return datetime.now(UTC)


def _message(session: Session, message_id: int) -> Message:
    found = queues.message_for(session, viewer(), message_id)
    if found is None:
        abort(404)
    return found


@bp.route("/")
@role_required(SUPERVISOR)
def queues_page() -> Any:
    """The queue monitor; its table refreshes itself (``/supervisor/monitor``)."""
    return render("supervisor_queues.html", "_monitor.html",
                  loads=monitor.queue_loads(db.session(), viewer()), now=_now())


@bp.route("/monitor")
@role_required(SUPERVISOR)
def monitor_fragment() -> Any:
    return render_template("_monitor.html", loads=monitor.queue_loads(db.session(), viewer()),
                           now=_now())


@bp.route("/deleted")
@role_required(SUPERVISOR)
def deleted() -> Any:
    return render_template("supervisor_deleted.html",
                           items=monitor.deletions(db.session(), viewer()),
                           accounts=dict(queues.visible_accounts(db.session(), viewer())))


@bp.post("/deleted/<int:message_id>/restore")
@role_required(SUPERVISOR)
def restore(message_id: int) -> Any:
    with db.write_session() as session, session.begin():
        message = _message(session, message_id)
        try:
            work.restore(session, message, viewer(), _now())
        except work.WorkError as exc:
            text = str(exc)
        else:
            text = f"Message {message_id} is back in its queue"
    if is_htmx():
        return f'<tr id="deleted-{message_id}"><td colspan="6">{escape(text)}</td></tr>'
    flash(text)
    return redirect(url_for("supervisor.deleted"))


@bp.route("/messages/<int:message_id>")
@role_required(SUPERVISOR)
def preview(message_id: int) -> Any:
    """Any message and its thread, read-only (no presence, no draft), with *Assign*."""
    session = db.session()
    message = _message(session, message_id)
    thread = threadview.thread_messages(session, message, viewer())
    attachments: dict[int, list[Attachment]] = {}
    for att in session.scalars(select(Attachment).where(
            Attachment.message_id.in_([m.id for m in thread])).order_by(Attachment.id)):
        attachments.setdefault(att.message_id, []).append(att)
    return render_template(
        "supervisor_preview.html", message=message, thread=thread, attachments=attachments,
        images=False, holder=work.holder(session, message),
        account_name=session.get(Account, message.account_id).name,  # type: ignore[union-attr]
        agents=monitor.agents_for(session, message.account_id))


@bp.post("/messages/<int:message_id>/assign")
@role_required(SUPERVISOR)
def assign(message_id: int) -> Any:
    agent = request.form.get("agent", "")
    with db.write_session() as session, session.begin():
        message = _message(session, message_id)
        try:
            work.assign(session, message, viewer(), agent, _now())
            flash(f"Message {message_id} assigned to {agent}")
        except work.WorkError as exc:
            flash(str(exc))
    return redirect(url_for("supervisor.preview", message_id=message_id))
