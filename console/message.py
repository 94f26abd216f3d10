"""The message component: one message and its thread, read and worked by an agent.

Reading lives here (the page, each mail's sanitised HTML in a sandboxed iframe under a strict
CSP, ``cid:`` images, attachments); the actions (reply, draft, send, transfer, reroute,
resolve, delete, notes) are in ``console.message_actions`` on the same blueprint. Every
route starts with ``engine.queues.message_for``: a message of an account the user does not
work, and anything hanging off it, answers 404.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from flask import Blueprint, Response, abort, current_app, render_template, request, url_for
from flask_login import login_required
from sqlalchemy import select

from console import db
from console.authz import viewer
from engine import drafts, notes, queues, replies, threadview, work
from engine.config import Settings
from engine.sanitize import for_display
from engine.store.models import (
    Account,
    Attachment,
    Blob,
    Group,
    Message,
    User,
    UserAccount,
)
from engine.templates import Templates

bp = Blueprint("message", __name__)

BODY_CSP = ("default-src 'none'; img-src 'self' data:{remote}; style-src 'unsafe-inline'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'self'")
FILE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox",
                "Cache-Control": "private, no-store"}
INLINE_IMAGES = ("image/png", "image/jpeg", "image/gif", "image/webp")


def settings() -> Settings:
    return current_app.extensions["postdesk.settings"]  # type: ignore[no-any-return]


def now() -> datetime:
    return datetime.now(UTC)


def visible(message_id: int, session: Any = None) -> Message:
    """The message if the user may see it, else 404."""
    message = queues.message_for(session or db.session(), viewer(), message_id)
    if message is None:
        abort(404)
    return message


def part_of(message: Message, part_id: int) -> Message:
    """A message of ``message``'s thread the user may read, else 404."""
    session = db.session()
    if not threadview.in_thread(session, message, part_id, viewer()):
        abort(404)
    part = session.get(Message, part_id)
    assert part is not None
    return part


@bp.route("/messages/<int:message_id>")
@login_required
def show(message_id: int) -> Any:
    me = viewer()
    with db.write_session() as session, session.begin():
        message = visible(message_id, session)
        if message.state in ("queued", "assigned", "draft"):
            work.open_message(session, message, me, now())
    return render_template("message.html", **page(visible(message_id)))


def page(message: Message) -> dict[str, Any]:
    """Everything the message page shows."""
    session, me = db.session(), viewer()
    thread = threadview.thread_messages(session, message, me)
    ids = [m.id for m in thread]
    attachments: dict[int, list[Attachment]] = {}
    for att in session.scalars(select(Attachment).where(Attachment.message_id.in_(ids))
                               .order_by(Attachment.id)):
        attachments.setdefault(att.message_id, []).append(att)
    draft = drafts.load(session, message.id, me.id)
    return {
        "message": message, "thread": thread, "attachments": attachments, "me": me,
        "holder": work.holder(session, message),
        "others": work.working(session, message.id, me.id, now()),
        "workable": _workable(session, message),
        "notes": notes.notes_for(session, ids), "note_types": notes.NOTE_TYPES,
        "reasons": work.wrapup_codes(session), "draft": draft,
        "seen": threadview.seen_now(session, message).token(),
        "templates": replies.template_names(session, settings().outbox.templates),
        "documents": (message.decision or {}).get("documents", []),
        "agents": _agents(session, message.account_id, me.id),
        "groups": list(session.scalars(select(Group.name).order_by(Group.name))),
        "accounts": list(session.scalars(select(Account.name).where(
            Account.active.is_(True)).order_by(Account.name))),
        "account_name": session.get(Account, message.account_id).name,  # type: ignore[union-attr]
        "images": request.args.get("images") == "1",
    }


def _workable(session: Any, message: Message) -> bool:
    try:
        work.ensure_workable(session, message, viewer())
    except work.WorkError:
        return False
    return True


def _agents(session: Any, account_id: int, me: int) -> list[str]:
    """Other active users working the account (transfer targets)."""
    query = (select(User.username).join(UserAccount, UserAccount.user_id == User.id)
             .where(UserAccount.account_id == account_id, User.active.is_(True),
                    User.id != me).order_by(User.username))
    return list(session.scalars(query))


@bp.route("/messages/<int:message_id>/presence")
@login_required
def presence(message_id: int) -> Any:
    message = visible(message_id)
    session = db.session()
    return render_template("message_presence.html", message=message,
                           holder=work.holder(session, message),
                           others=work.working(session, message.id, viewer().id, now()))


@bp.route("/messages/<int:message_id>/body/<int:part_id>")
@login_required
def body(message_id: int, part_id: int) -> Response:
    """A thread mail's HTML, sanitised, for the sandboxed iframe (remote images only with
    ``?images=1``)."""
    message = visible(message_id)
    part = part_of(message, part_id)
    remote = request.args.get("images") == "1"

    def cid_url(cid: str) -> str:
        return url_for("message.inline", message_id=message.id, part_id=part.id,
                       cid=quote(cid, safe="@._-"))

    if part.body_html:
        cleaned = for_display(part.body_html, remote_images=remote, cid_url=cid_url).html
    else:
        cleaned = f"<pre>{_escape(part.body_text)}</pre>"
    document = ('<!doctype html><html><head><meta charset="utf-8"><base target="_blank">'
                '<style>body{font:14px/1.4 system-ui,sans-serif;margin:.5rem;overflow-wrap:'
                'anywhere}img{max-width:100%;height:auto}pre{white-space:pre-wrap}</style>'
                f"</head><body>{cleaned}</body></html>")
    response = Response(document, mimetype="text/html")
    response.headers["Content-Security-Policy"] = BODY_CSP.format(
        remote=" https: http:" if remote else "")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.route("/messages/<int:message_id>/cid/<int:part_id>/<path:cid>")
@login_required
def inline(message_id: int, part_id: int, cid: str) -> Response:
    """An inline image a mail names by Content-ID (RFC 2392), from its own attachments."""
    part = part_of(visible(message_id), part_id)
    session = db.session()
    wanted = cid.strip("<>")
    found = next((a for a in session.scalars(select(Attachment).where(
        Attachment.message_id == part.id)) if (a.content_id or "").strip("<>") == wanted), None)
    if found is None or found.content_type.lower() not in INLINE_IMAGES:
        abort(404)
    blob = session.get(Blob, found.blob_sha256)
    assert blob is not None
    return Response(blob.data, mimetype=found.content_type, headers=FILE_HEADERS)


@bp.route("/messages/<int:message_id>/attachments/<int:attachment_id>")
@login_required
def attachment(message_id: int, attachment_id: int) -> Response:
    """Download an attachment of a thread mail (never rendered by the browser)."""
    message = visible(message_id)
    session = db.session()
    found = session.get(Attachment, attachment_id)
    if found is None:
        abort(404)
    part_of(message, found.message_id)
    blob = session.get(Blob, found.blob_sha256)
    assert blob is not None
    name = (found.filename or f"attachment-{found.id}").replace("\r", "").replace("\n", "")
    disposition = f"attachment; filename*=UTF-8''{quote(name, safe='')}"
    return Response(blob.data, mimetype="application/octet-stream",
                    headers={**FILE_HEADERS, "Content-Disposition": disposition})


def templates_for() -> Templates:
    return Templates(replies.template_source(db.session(), settings().outbox.templates))


def _escape(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


import console.compose  # noqa: E402,F401 — new messages, on ``bp``
import console.message_actions  # noqa: E402,F401 — the actions' routes, on ``bp``
