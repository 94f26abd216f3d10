"""Notes (annotations) on a message: what agents tell each other about a case.

Notes are never sent to the customer. Six types, after Oracle Email Center's six seeded
note types, named for what a support desk writes down:

- ``general``: anything worth keeping with the message;
- ``internal``: for colleagues only, e.g. why a message was transferred or rerouted;
- ``customer-call``: what was said on the phone with the customer;
- ``escalation``: why and to whom the case was escalated;
- ``resolution``: how the case was solved (for the next similar one);
- ``follow-up``: something to do or check later.

Transfer and reroute take an optional note inline (type ``internal`` unless chosen),
a reply one of type ``general``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.queues import Viewer
from engine.store.models import Note, User

NOTE_TYPES: dict[str, str] = {
    "general": "General",
    "internal": "Internal",
    "customer-call": "Customer call",
    "escalation": "Escalation",
    "resolution": "Resolution",
    "follow-up": "Follow-up",
}
MAX_NOTE = 10_000


class NoteError(ValueError):
    """A note that cannot be stored (empty, too long, unknown type)."""


@dataclass(frozen=True)
class NoteView:
    id: int
    kind: str
    label: str
    body: str
    author: str
    at: datetime


def add_note(session: Session, message_id: int, viewer: Viewer, body: str,
             kind: str, now: datetime) -> Note:
    """Store a note of ``kind`` on the message."""
    body = body.strip()
    if not body:
        raise NoteError("a note needs some text")
    if len(body) > MAX_NOTE:
        raise NoteError(f"a note holds at most {MAX_NOTE} characters")
    if kind not in NOTE_TYPES:
        raise NoteError(f"unknown note type {kind!r} (one of {', '.join(NOTE_TYPES)})")
    note = Note(message_id=message_id, user_id=viewer.id, kind=kind, body=body, created_at=now)
    session.add(note)
    session.flush()
    return note


def notes_for(session: Session, message_ids: list[int]) -> list[NoteView]:
    """Notes on these messages (a thread's), newest first, with their authors."""
    rows = session.execute(
        select(Note, User.username).outerjoin(User, User.id == Note.user_id)
        .where(Note.message_id.in_(message_ids))
        .order_by(Note.created_at.desc(), Note.id.desc()))
    return [NoteView(n.id, n.kind, NOTE_TYPES.get(n.kind, n.kind), n.body, user or "system",
                     n.created_at) for n, user in rows]
