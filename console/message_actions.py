"""The message component's actions (routes on ``console.message.bp``).

The reply form is one multipart form whose buttons post to different actions (save
draft, insert template, attach, spell check, send): each first saves the draft, so
nothing typed is lost whatever happens next. Errors agents can act on (no wrap-up reason,
a missing merge field, the message taken meanwhile) come back as a flash message on the
page; a collision at Send shows the new mail and asks to confirm.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from html import escape
from typing import Any

from flask import flash, redirect, render_template, request, url_for
from flask_login import login_required
from sqlalchemy.orm import Session

from console import db
from console.authz import is_htmx, viewer
from console.message import bp, now, page, settings, templates_for, visible
from engine import drafts, notes, replies, spelling, threadview, work
from engine.decisions import RulesContext
from engine.mergefields import TemplateError
from engine.store.models import Account, Draft, Message

View = Callable[..., Any]


ERRORS = (work.WorkError, drafts.DraftError, notes.NoteError, TemplateError, ValueError)


def acting(*, draft: bool = False) -> Callable[[View], View]:
    """Login; the message in a write transaction (404 if hidden); with ``draft`` the posted
    reply is saved first and passed on, and kept even when the action then fails; engine
    errors come back flashed on the message page."""
    def decorate(view: View) -> View:
        @wraps(view)
        @login_required
        def wrapped(message_id: int, **kwargs: Any) -> Any:
            with db.write_session() as session, session.begin():
                message = visible(message_id, session)
                try:
                    if draft:
                        kwargs["draft"] = _save_draft(session, message)
                    with session.begin_nested():  # a failed action undoes only itself
                        return view(session, message, **kwargs)
                except ERRORS as exc:
                    flash(str(exc))
                    return redirect(url_for("message.show", message_id=message_id) + "#reply")
        return wrapped
    return decorate


def _save_draft(session: Session, message: Message) -> Draft | None:
    """Save the posted reply as the user's draft (when the form carried one)."""
    if "body" not in request.form:
        return drafts.load(session, message.id, viewer().id)
    if not work.MessageState(message.state).active:
        raise work.NotActive(f"message {message.id} is already {message.state}")
    return drafts.save(session, message, viewer(), request.form["body"],
                       request.form.get("mode") == "html", now())


def _note(session: Session, message: Message, default_kind: str) -> None:
    text = request.form.get("note", "").strip()
    if text:
        notes.add_note(session, message.id, viewer(), text,
                       request.form.get("note_kind") or default_kind, now())


def _back(message: Message, anchor: str = "") -> Any:
    return redirect(url_for("message.show", message_id=message.id) + anchor)


def _done(text: str) -> Any:
    flash(text)
    return redirect(url_for("agent.home"))


@bp.post("/messages/<int:message_id>/draft")
@acting(draft=True)
def save_draft(session: Session, message: Message, draft: Draft | None) -> Any:
    if is_htmx():
        stamp = draft.updated_at.strftime("%H:%M:%S") if draft else ""
        return f'<span id="draft-status">Draft saved {stamp}</span>'
    flash("Draft saved")
    return _back(message, "#reply")


@bp.post("/messages/<int:message_id>/draft/attachments")
@acting(draft=True)
def attach(session: Session, message: Message, draft: Draft | None) -> Any:
    upload = request.files.get("file")
    if draft is None or upload is None or not upload.filename:
        raise drafts.DraftError("choose a file to attach")
    drafts.attach(session, draft, drafts.File(upload.filename, upload.mimetype or "",
                                              upload.read(drafts.MAX_ATTACHMENT + 1)), now())
    return _back(message, "#reply")


@bp.post("/messages/<int:message_id>/draft/attachments/<int:index>/remove")
@acting(draft=True)
def detach(session: Session, message: Message, index: int, draft: Draft | None) -> Any:
    if draft is None:
        raise drafts.DraftError("no draft")
    drafts.detach(session, draft, index, now())
    return _back(message, "#reply")


@bp.post("/messages/<int:message_id>/template")
@acting(draft=True)
def insert_template(session: Session, message: Message, draft: Draft | None) -> Any:
    """Insert a template (or attach it as a file, ``as=attach``): ask for its custom fields
    first, refuse while a required one is empty, then append the rendered text to the draft
    or attach the rendered document."""
    draft = draft or drafts.save(session, message, viewer(), "", False, now())
    name, custom, prompt = template_request()
    if prompt is not None:
        return render_template("message.html", **page(message), prompt=prompt), 200
    templates = templates_for()
    account = settings().account(session.get(Account, message.account_id).name)  # type: ignore[union-attr]
    context = replies.merge_values(session, message, viewer(), account, now(),
                                   settings().outbox.merge_defaults)
    filled = replies.fill(templates, name, context, custom)
    if request.form.get("as") == "attach":  # the filled document travels as a file
        html = filled.html is not None
        drafts.attach(session, draft, drafts.File(
            name if "." in name else f"{name}.txt", "text/html" if html else "text/plain",
            (filled.html if html else filled.text).encode()), now())
        return _back(message, "#reply")
    draft.body = _append(draft.body, filled, draft.html)
    draft.updated_at = now()
    return _back(message, "#reply")


def template_request() -> tuple[str, dict[str, str], dict[str, Any] | None]:
    """The template asked for, the custom field values typed so far, and the prompt to show
    when its fields are still to be asked for or a required one is empty (None: fill it)."""
    name = request.form.get("template", "")
    wanted = replies.prompts(templates_for(), name)
    custom = {k[6:]: v for k, v in request.form.items() if k.startswith("field.")}
    missing = wanted.required - {k for k, v in custom.items() if v.strip()}
    filled_in = request.form.get("filled") == "1"
    if not (((wanted.required | wanted.optional) and not filled_in) or missing):
        return name, custom, None
    if filled_in:
        flash("Fill in the required fields: " + ", ".join(sorted(missing)))
    return name, custom, {"name": name, "required": sorted(wanted.required),
                          "optional": sorted(wanted.optional), "values": custom,
                          "as_": request.form.get("as", "")}


def _append(body: str, filled: Any, html: bool) -> str:
    if html:
        piece = filled.html if filled.html is not None else (
            "<p>" + escape(filled.text).replace("\n", "<br>") + "</p>")
    else:
        piece = filled.text
    return (body.rstrip() + ("\n\n" if body.strip() else "") + piece) if body else piece


@bp.post("/messages/<int:message_id>/spelling")
@acting(draft=True)
def spell_check(session: Session, message: Message, draft: Draft | None) -> Any:
    found = spelling.check(draft.body if draft else "", spelling.site_words(session),
                           html=bool(draft and draft.html))
    return render_template("message.html", **page(message), spelling=found)


@bp.post("/messages/<int:message_id>/words")
@acting()
def add_word(session: Session, message: Message) -> Any:
    word = spelling.add_word(session, request.form.get("word", ""), now())
    flash(f"{word!r} added to the site dictionary")
    return _back(message, "#reply")


@bp.post("/messages/<int:message_id>/send")
@acting(draft=True)
def send(session: Session, message: Message, draft: Draft | None) -> Any:
    if draft is None:
        raise work.WorkError("the reply is empty")
    account = session.get(Account, message.account_id)
    outgoing = replies.Outgoing.from_settings(settings(), account.name)  # type: ignore[union-attr]
    reply = replies.Reply(draft.body, draft.html, drafts.files(session, draft))
    reason = request.form.get("reason")
    try:
        with session.begin_nested():  # a collision keeps the saved draft, nothing else
            replies.send(session, message, viewer(), reply, reason, outgoing, now(),
                         seen=threadview.Seen.parse(request.form.get("seen")),
                         confirmed=request.form.get("confirmed") == "1")
            _note(session, message, "general")
    except replies.Collision as exc:
        return render_template("message_confirm.html", message=message, news=exc.news,
                               reason=reason, note=request.form.get("note", ""),
                               note_kind=request.form.get("note_kind", ""),
                               seen=request.form.get("seen", "")), 409
    return _done(f"Reply to message {message.id} queued for sending")


@bp.post("/messages/<int:message_id>/resolve")
@acting()
def resolve(session: Session, message: Message) -> Any:
    _note(session, message, "resolution")
    work.resolve(session, message, viewer(), request.form.get("reason"), now())
    return _done(f"Message {message.id} resolved")


@bp.post("/messages/<int:message_id>/delete")
@acting()
def delete(session: Session, message: Message) -> Any:
    _note(session, message, "internal")
    work.delete_message(session, message, viewer(), request.form.get("reason"), now())
    return _done(f"Message {message.id} deleted")


@bp.post("/messages/<int:message_id>/restore")
@acting()
def restore(session: Session, message: Message) -> Any:
    work.restore(session, message, viewer(), now())
    flash(f"Message {message.id} is back in its queue")
    return _back(message)


@bp.post("/messages/<int:message_id>/transfer")
@acting()
def transfer(session: Session, message: Message) -> Any:
    kind, _, name = request.form.get("to", "").partition(":")
    _note(session, message, "internal")
    whom = work.transfer(session, message, viewer(), request.form.get("reason"), now(),
                         agent=name if kind == "agent" else None,
                         group=name if kind == "group" else None)
    return _done(f"Message {message.id} transferred to {whom}")


@bp.post("/messages/<int:message_id>/reroute")
@acting()
def reroute(session: Session, message: Message) -> Any:
    target = request.form.get("account", "")
    _note(session, message, "internal")
    work.reroute(session, message, viewer(), now(), account=target or None,
                 classification=request.form.get("classification") or None,
                 reason=request.form.get("reason") or None,
                 rules=_rules(session) if target else None)
    return _done(f"Message {message.id} rerouted")


def _rules(session: Session) -> RulesContext | None:
    """The configured rules, to decide a message again in its new account."""
    from rules.schema import RuleErrors, load_rules

    names = {pk: name for pk, name in session.query(Account.id, Account.name)}
    if not settings().rules:
        return None
    try:
        ruleset = load_rules(list(settings().rules), set(names.values()))
    except RuleErrors as exc:
        raise work.WorkError(f"the rules do not load, cannot reroute by them: {exc}") from None
    return RulesContext(ruleset, names)


@bp.post("/messages/<int:message_id>/notes")
@acting()
def add_note(session: Session, message: Message) -> Any:
    notes.add_note(session, message.id, viewer(), request.form.get("body", ""),
                   request.form.get("kind", "general"), now())
    if is_htmx():
        session.flush()
        return render_template("message_notes.html",
                               notes=notes.notes_for(session, [message.id]))
    return _back(message, "#notes")
