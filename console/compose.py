"""Compose a new message from an account (routes on ``console.message.bp``).

The same editor as the reply: plain or rich text, templates with merge fields, attachments,
spell check. Every button saves the draft (one per user and account, ``engine.newmail``)
before doing its job, so nothing typed is lost; Send hands the mail to ``engine.newmail``
(a new thread, an outbox row) with a wrap-up reason. An account the user does not work
answers 404.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import login_required
from sqlalchemy.orm import Session

from console import db
from console.authz import is_htmx, viewer
from console.message import bp, now, settings, templates_for
from console.message_actions import ERRORS, _append, template_request
from engine import drafts, newmail, notes, queues, replies, spelling, work
from engine.store.models import Account, ComposeDraft

View = Callable[..., Any]


def _account(session: Session, account_id: int) -> Account:
    """The account if the user works it, else 404."""
    account = session.get(Account, account_id)
    if account is None or not account.active or not queues.sees_account(
            session, viewer(), account_id):
        abort(404)
    return account


def _page(account: Account, draft: ComposeDraft | None, **extra: Any) -> dict[str, Any]:
    session = db.session()
    configured = settings().account(account.name)
    return {"account": account, "draft": draft, "me": viewer(),
            "sender": configured.addresses[0] if configured else None,
            "templates": replies.template_names(session, settings().outbox.templates),
            "reasons": work.wrapup_codes(session), "note_types": notes.NOTE_TYPES, **extra}


def _back(account_id: int) -> Any:
    return redirect(url_for("message.compose", account=account_id) + "#compose")


@bp.route("/compose")
@login_required
def compose() -> Any:
    account_id = request.args.get("account", "")
    if not account_id.isdigit():
        abort(404)
    account = _account(db.session(), int(account_id))
    draft = newmail.load_draft(db.session(), viewer().id, account.id)
    return render_template("compose.html", **_page(account, draft))


def composing(view: View) -> View:
    """Login; the account (404 if not the user's) in a write transaction; the posted form
    saved as the draft first and passed on; engine errors come back flashed."""
    @wraps(view)
    @login_required
    def wrapped(account_id: int, **kwargs: Any) -> Any:
        with db.write_session() as session, session.begin():
            account = _account(session, account_id)
            try:
                draft = _save_draft(session, account.id)
                with session.begin_nested():  # a failed action undoes only itself
                    return view(session, account, draft, **kwargs)
            except ERRORS as exc:
                flash(str(exc))
                return _back(account_id)
    return wrapped


def _save_draft(session: Session, account_id: int) -> ComposeDraft | None:
    if "body" not in request.form:
        return newmail.load_draft(session, viewer().id, account_id)
    form = request.form
    return newmail.save_draft(session, viewer(), account_id, newmail.NewMail(
        to=form.get("to", ""), cc=form.get("cc", ""), subject=form.get("subject", ""),
        body=form["body"], html=form.get("mode") == "html"), now())


@bp.post("/compose/<int:account_id>/draft")
@composing
def compose_draft(session: Session, account: Account, draft: ComposeDraft | None) -> Any:
    if is_htmx():
        stamp = draft.updated_at.strftime("%H:%M:%S") if draft else ""
        return f'<span id="draft-status">Draft saved {stamp}</span>'
    flash("Draft saved")
    return _back(account.id)


@bp.post("/compose/<int:account_id>/attachments")
@composing
def compose_attach(session: Session, account: Account, draft: ComposeDraft | None) -> Any:
    upload = request.files.get("file")
    if draft is None or upload is None or not upload.filename:
        raise drafts.DraftError("choose a file to attach")
    drafts.attach(session, draft, drafts.File(upload.filename, upload.mimetype or "",
                                              upload.read(drafts.MAX_ATTACHMENT + 1)), now())
    return _back(account.id)


@bp.post("/compose/<int:account_id>/attachments/<int:index>/remove")
@composing
def compose_detach(session: Session, account: Account, draft: ComposeDraft | None,
                   index: int) -> Any:
    if draft is None:
        raise drafts.DraftError("no draft")
    drafts.detach(session, draft, index, now())
    return _back(account.id)


@bp.post("/compose/<int:account_id>/template")
@composing
def compose_template(session: Session, account: Account, draft: ComposeDraft | None) -> Any:
    """Insert a template: its custom fields asked for first, required ones enforced."""
    draft = draft or newmail.save_draft(session, viewer(), account.id,
                                        newmail.NewMail("", "", ""), now())
    name, custom, prompt = template_request()
    if prompt is not None:
        return render_template("compose.html", **_page(account, draft, prompt=prompt))
    templates = templates_for()
    context = newmail.merge_values(session, viewer(), settings().account(account.name), now(),
                                   draft.to, settings().outbox.merge_defaults)
    draft.body = _append(draft.body, replies.fill(templates, name, context, custom), draft.html)
    draft.updated_at = now()
    return _back(account.id)


@bp.post("/compose/<int:account_id>/spelling")
@composing
def compose_spelling(session: Session, account: Account, draft: ComposeDraft | None) -> Any:
    found = spelling.check(draft.body if draft else "", spelling.site_words(session),
                           html=bool(draft and draft.html))
    return render_template("compose.html", **_page(account, draft, spelling=found))


@bp.post("/compose/<int:account_id>/send")
@composing
def compose_send(session: Session, account: Account, draft: ComposeDraft | None) -> Any:
    if draft is None:
        raise work.WorkError("the message is empty")
    outgoing = replies.Outgoing.from_settings(settings(), account.name)
    mail = newmail.NewMail(draft.to, draft.subject, draft.body, draft.cc, draft.html,
                           drafts.files(session, draft))
    newmail.send(session, account.id, viewer(), mail, request.form.get("reason"), outgoing,
                 now(), note=request.form.get("note", ""),
                 note_kind=request.form.get("note_kind") or "general")
    flash(f"Message to {mail.to.strip()} queued for sending")
    return redirect(url_for("agent.home"))


@bp.post("/compose/<int:account_id>/discard")
@login_required
def compose_discard(account_id: int) -> Any:
    with db.write_session() as session, session.begin():
        _account(session, account_id)
        newmail.discard_draft(session, viewer().id, account_id)
    flash("Draft discarded")
    return redirect(url_for("agent.home"))
