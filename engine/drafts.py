"""Drafts: an agent's unsent reply, kept per message and user until sent or discarded
(a new message's draft, ``engine.newmail``, shares the attachment functions).

A draft survives closing the browser and logging out: opening the message again restores
body, mode (text or HTML) and attachments. Attachment contents go to the content-addressed
``blobs`` table (stored once), the draft lists them. Saving a draft puts the message in
state ``draft`` and, when nobody holds it yet, assigns it to the agent.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from engine.queues import Viewer
from engine.store.models import Blob, ComposeDraft, Draft, Message, MessageState

MAX_BODY = 1_000_000
MAX_ATTACHMENT = 20 * 1024 * 1024
MAX_ATTACHMENTS = 20


class DraftError(ValueError):
    """A draft or attachment that cannot be stored; the message says why."""


@dataclass(frozen=True)
class File:
    filename: str
    content_type: str
    data: bytes


def load(session: Session, message_id: int, user_id: int) -> Draft | None:
    return session.scalar(select(Draft).where(Draft.message_id == message_id,
                                              Draft.user_id == user_id))


def save(session: Session, message: Message, viewer: Viewer, body: str, html: bool,
         now: datetime) -> Draft:
    """Create or update the viewer's draft for the message."""
    if len(body) > MAX_BODY:
        raise DraftError("the reply is too long")
    draft = load(session, message.id, viewer.id)
    if draft is None:
        draft = Draft(message_id=message.id, user_id=viewer.id, attachments=[], created_at=now)
        session.add(draft)
    draft.body, draft.html, draft.updated_at = body, html, now
    if message.state in (MessageState.QUEUED.value, MessageState.ASSIGNED.value):
        if message.assigned_user_id is None:
            message.assigned_user_id, message.claimed_at = viewer.id, now
        message.state = MessageState.DRAFT.value
    session.flush()
    return draft


def attach(session: Session, draft: Draft | ComposeDraft, file: File, now: datetime) -> None:
    """Add a file to the draft (its bytes stored once in ``blobs``)."""
    if not file.data:
        raise DraftError(f"{file.filename or 'the file'} is empty")
    if len(file.data) > MAX_ATTACHMENT:
        raise DraftError(f"{file.filename} is larger than {MAX_ATTACHMENT // 2**20} MB")
    if len(draft.attachments or []) >= MAX_ATTACHMENTS:
        raise DraftError(f"at most {MAX_ATTACHMENTS} attachments")
    digest = hashlib.sha256(file.data).hexdigest()
    if session.get(Blob, digest) is None:
        session.add(Blob(sha256=digest, size=len(file.data), data=file.data))
    name = _safe_name(file.filename)
    draft.attachments = [*(draft.attachments or []), {
        "sha256": digest, "filename": name, "content_type": file.content_type
        or "application/octet-stream", "size": len(file.data)}]
    draft.updated_at = now
    session.flush()


def detach(session: Session, draft: Draft | ComposeDraft, index: int, now: datetime) -> None:
    """Remove the draft's ``index``-th attachment (the blob stays: others may use it)."""
    items = list(draft.attachments or [])
    if not 0 <= index < len(items):
        raise DraftError("no such attachment")
    del items[index]
    draft.attachments, draft.updated_at = items, now
    session.flush()


def files(session: Session, draft: Draft | ComposeDraft | None) -> list[File]:
    """The draft's attachments with their bytes, in order."""
    out = []
    for item in (draft.attachments or []) if draft is not None else []:
        blob = session.get(Blob, item["sha256"])
        if blob is not None:
            out.append(File(item["filename"], item["content_type"], blob.data))
    return out


def discard(session: Session, message_id: int, user_id: int) -> None:
    session.execute(delete(Draft).where(Draft.message_id == message_id,
                                        Draft.user_id == user_id))


def _safe_name(name: str) -> str:
    """A file name without path or control characters (browsers send ``C:\\x\\y.pdf``)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(c for c in base if c.isprintable() and c not in '"<>|:*?')
    return cleaned.strip(" .")[:200] or "attachment"
