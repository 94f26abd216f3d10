"""An agent's new message (not an answer): addresses checked, a new thread, the outbox.

``send`` opens a thread for the conversation and writes an outbox row (kind "agent-new",
``automatic`` False) composed at once by ``engine.compose.new_message``: the account's
From/Reply-To/signature, the sealed reference tag (naming the new thread) in the subject, a
VERP return path. The mail's Message-ID and recipients are recorded with the thread, so the
customer's answer joins it by tag, In-Reply-To or subject. A ``composed`` history row names
the agent, the wrap-up reason and an optional note. The outbox worker sends the bytes and
archives them as a ``sent`` message in that thread, as it does for replies.

An unsent new message is kept as a ``ComposeDraft`` (one per user and account); its
attachments are blobs, handled by ``engine.drafts``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import formataddr, getaddresses

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from engine import compose
from engine.config import AccountSettings
from engine.drafts import MAX_BODY, DraftError, File
from engine.mergefields import AgentInfo, merge_context
from engine.notes import MAX_NOTE, NOTE_TYPES
from engine.queues import Viewer
from engine.replies import Outgoing, Reply, _bodies, _return_path, _tag
from engine.store.models import (
    ComposeDraft,
    History,
    Outbox,
    OutboxState,
    Thread,
    ThreadParticipant,
    ThreadRef,
    User,
)
from engine.threads import MAX_REF_LENGTH, normalize_subject
from engine.work import WorkError, check_reason

KIND = "agent-new"
ACTION = "composed"
MAX_RECIPIENTS = 50
# local@domain.tld: no spaces, brackets or quotes (RFC 5322 quoted local parts are refused:
# they are legal but in support mail almost always a typo)
_ADDRESS = re.compile(r"^[^@\s<>()\[\],;:\"\\]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$")


class AddressError(WorkError):
    """A recipient list that cannot be used; the message names the bad entries."""


@dataclass(frozen=True)
class NewMail:
    """What the agent wrote: ``to``/``cc`` as typed (comma or semicolon separated)."""

    to: str
    subject: str
    body: str
    cc: str = ""
    html: bool = False
    files: list[File] = field(default_factory=list)


def parse_addresses(text: str, label: str = "To") -> list[tuple[str, str]]:
    """(display name, lower-case address) pairs of a typed list; ``AddressError`` names
    every entry that is not a plain ``local@domain.tld`` address."""
    pairs, bad = [], []
    for chunk in (c.strip() for c in re.split(r"[,;\n]", text.replace("\r", ""))):
        if not chunk:
            continue
        found = getaddresses([chunk])
        if len(found) != 1 or not _ADDRESS.match(found[0][1]):
            bad.append(chunk)
        else:
            pairs.append((found[0][0].strip(), found[0][1].lower()))
    if bad:
        raise AddressError(f"{label}: not an email address: {', '.join(bad)}")
    first: dict[str, tuple[str, str]] = {}
    for name, addr in pairs:
        first.setdefault(addr, (name, addr))
    unique = list(first.values())
    if len(unique) > MAX_RECIPIENTS:
        raise AddressError(f"{label}: at most {MAX_RECIPIENTS} addresses")
    return unique


def send(session: Session, account_id: int, viewer: Viewer, mail: NewMail,
         reason: str | None, outgoing: Outgoing, now: datetime, *,
         note: str = "", note_kind: str = "general") -> int:
    """Queue the agent's new message in a new thread; returns the outbox row id.

    Raises ``ReasonRequired``, ``AddressError`` or ``WorkError`` (empty body, bad note)."""
    code = check_reason(session, reason)
    to = parse_addresses(mail.to, "To")
    cc = [p for p in parse_addresses(mail.cc, "Cc") if p[1] not in {a for _, a in to}]
    if not to:
        raise AddressError("To: enter at least one address")
    if not mail.body.strip():
        raise WorkError("the message is empty")
    note = _checked_note(note, note_kind)
    subject = mail.subject.strip() or "(no subject)"
    thread = Thread(subject=subject, subject_key=normalize_subject(subject)[0],
                    created_at=now, last_message_at=now, message_count=0, flagged=False)
    session.add(thread)
    session.flush()
    everyone = [a for _, a in to + cc]
    row = Outbox(account_id=account_id, thread_id=thread.id, kind=KIND, rcpt=to[0][1],
                 automatic=False, state=OutboxState.PENDING.value, rcpt_to=everyone,
                 created_at=now, next_attempt_at=now, mail_from="", attempts=0)
    session.add(row)
    session.flush()
    text, html = _bodies(Reply(mail.body, mail.html))
    made = compose.new_message(
        account=outgoing.account, to=[formataddr(p) for p in to],
        cc=[formataddr(p) for p in cc], subject=subject, text=text, html=html,
        marker=_tag(session, outgoing, row, viewer, now), hostname=outgoing.hostname, now=now,
        attachments=[(f.filename, f.content_type, f.data) for f in mail.files])
    session.execute(update(Outbox).where(Outbox.id == row.id).values(
        raw=made.raw, message_id_header=made.message_id,
        mail_from=_return_path(outgoing, row.id)))
    _join_thread(session, thread.id, made.message_id,
                 [outgoing.account.addresses[0], *everyone])
    detail = {"outbox": row.id, "to": [a for _, a in to], "cc": [a for _, a in cc],
              "subject": subject, "html": mail.html, "attachments": len(mail.files)}
    if note:
        detail |= {"note": note, "note_kind": note_kind}
    session.execute(insert(History).values(
        thread_id=thread.id, account_id=account_id, action=ACTION, resource=viewer.username,
        user_id=viewer.id, reason_code=code, detail=detail, created_at=now))
    discard_draft(session, viewer.id, account_id)
    return int(row.id)


def _checked_note(note: str, kind: str) -> str:
    note = note.strip()
    if note and kind not in NOTE_TYPES:
        raise WorkError(f"unknown note type {kind!r}")
    if len(note) > MAX_NOTE:
        raise WorkError(f"a note holds at most {MAX_NOTE} characters")
    return note


def _join_thread(session: Session, thread_id: int, message_id: str,
                 people: list[str]) -> None:
    """The thread knows the mail's Message-ID and who took part (engine.threads' signals)."""
    session.add(ThreadRef(ref=message_id[:MAX_REF_LENGTH], thread_id=thread_id))
    for address in dict.fromkeys(a[:320] for a in people):
        session.add(ThreadParticipant(thread_id=thread_id, address=address))
    session.flush()


# --- drafts -----------------------------------------------------------------------------------


def load_draft(session: Session, user_id: int, account_id: int) -> ComposeDraft | None:
    return session.scalar(select(ComposeDraft).where(ComposeDraft.user_id == user_id,
                                                     ComposeDraft.account_id == account_id))


def save_draft(session: Session, viewer: Viewer, account_id: int, mail: NewMail,
               now: datetime) -> ComposeDraft:
    """Create or update the viewer's new-message draft for the account (files aside)."""
    if len(mail.body) > MAX_BODY or len(mail.to) + len(mail.cc) > 20_000:
        raise DraftError("the message is too long")
    draft = load_draft(session, viewer.id, account_id)
    if draft is None:
        draft = ComposeDraft(user_id=viewer.id, account_id=account_id, attachments=[],
                             created_at=now)
        session.add(draft)
    draft.to, draft.cc, draft.subject = mail.to, mail.cc, mail.subject[:998]
    draft.body, draft.html, draft.updated_at = mail.body, mail.html, now
    session.flush()
    return draft


def discard_draft(session: Session, user_id: int, account_id: int) -> None:
    session.execute(delete(ComposeDraft).where(ComposeDraft.user_id == user_id,
                                               ComposeDraft.account_id == account_id))


def merge_values(session: Session, viewer: Viewer, account: AccountSettings | None,
                 now: datetime, to: str = "",
                 defaults: Mapping[str, str] | None = None) -> dict[str, str]:
    """Standard merge fields for a new message: account, agent, date, and the first
    recipient as the contact's address (no inbound message: ``INB_*`` stay empty)."""
    user = session.get(User, viewer.id)
    agent = AgentInfo.from_display_name(user.display_name or user.username if user else "",
                                        user_name=viewer.username)
    try:
        first = parse_addresses(to)[:1]
    except AddressError:
        first = []
    contact = {"CON_EMAIL": first[0][1]} if first else None
    return merge_context(account=account, agent=agent, contact=contact,
                         defaults=defaults, now=now)
