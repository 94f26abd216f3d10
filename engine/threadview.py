"""Reading a message's thread for the console: its mails newest first, and what reached
it since an agent looked (the collision check before sending).

A thread may cross accounts; only mail of accounts the viewer works is shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, load_only

from engine.queues import Viewer, sees_account
from engine.store.models import Message, MessageState, Outbox


@dataclass(frozen=True)
class Seen:
    """The newest thread message and outbox row an agent had on screen (collision check)."""

    message: int = 0
    outbox: int = 0

    def token(self) -> str:
        return f"{self.message}:{self.outbox}"

    @classmethod
    def parse(cls, token: str | None) -> Seen | None:
        head, sep, tail = (token or "").partition(":")
        return cls(int(head), int(tail)) if sep and head.isdigit() and tail.isdigit() else None


@dataclass(frozen=True)
class News:
    """Mail written to the thread after the agent last looked (customer or colleague)."""

    kind: str  # inbound | outbound | pending (an agent reply not yet sent)
    id: int
    sender: str
    subject: str
    text: str
    at: datetime


# --- the thread -----------------------------------------------------------------------------


THREAD_COLUMNS = (Message.id, Message.direction, Message.state, Message.subject,
                   Message.from_addr, Message.from_name, Message.to_addrs, Message.cc_addrs,
                   Message.date, Message.received_at, Message.body_text, Message.body_html,
                   Message.account_id, Message.classification, Message.thread_id)


def thread_messages(session: Session, message: Message, viewer: Viewer) -> list[Message]:
    """The message's thread, newest first: inbound and outbound, in accounts the viewer
    works (a thread may cross accounts; the others' mail stays hidden)."""
    if message.thread_id is None:
        return [message]
    rows = session.scalars(select(Message).options(load_only(*THREAD_COLUMNS))
                           .where(Message.thread_id == message.thread_id)
                           .order_by(Message.received_at.desc(), Message.id.desc()))
    return [m for m in rows if m.id == message.id or _visible(session, viewer, m.account_id)]


def _visible(session: Session, viewer: Viewer, account_id: int) -> bool:
    return viewer.sees_all or sees_account(session, viewer, account_id)


def in_thread(session: Session, message: Message, other_id: int, viewer: Viewer) -> bool:
    """Whether ``other_id`` is a message of ``message``'s thread the viewer may read."""
    if other_id == message.id:
        return True
    other = session.get(Message, other_id)
    return (other is not None and message.thread_id is not None
            and other.thread_id == message.thread_id
            and _visible(session, viewer, other.account_id))


def seen_now(session: Session, message: Message) -> Seen:
    """The high-water marks of the thread right now (rendered with the reply form)."""
    if message.thread_id is None:
        return Seen(message.id, 0)
    newest = session.scalar(select(func.max(Message.id)).where(
        Message.thread_id == message.thread_id)) or message.id
    outbox = session.scalar(select(func.max(Outbox.id)).where(
        Outbox.thread_id == message.thread_id, Outbox.automatic.is_(False))) or 0
    return Seen(newest, outbox)


def news_since(session: Session, message: Message, seen: Seen) -> list[News]:
    """Mail that reached the thread after ``seen``: the customer wrote again, or a
    colleague answered (sent, or still in the outbox)."""
    if message.thread_id is None:
        return []
    news = [News(m.direction, m.id, m.from_addr, m.subject, m.body_text[:2000], m.received_at)
            for m in session.scalars(select(Message).options(load_only(*THREAD_COLUMNS)).where(
                Message.thread_id == message.thread_id, Message.id > seen.message,
                Message.state != MessageState.BOUNCE.value))]
    archived = {m.id for m in news}
    for row in session.execute(select(Outbox.id, Outbox.raw, Outbox.created_at,
                                      Outbox.archived_message_id).where(
            Outbox.thread_id == message.thread_id, Outbox.automatic.is_(False),
            Outbox.id > seen.outbox)):
        if row.archived_message_id not in archived:
            news.append(News("pending", row.id, "", "", _text_of(row.raw), row.created_at))
    return sorted(news, key=lambda n: n.at)


def _text_of(raw: bytes | None) -> str:
    if not raw:
        return ""
    from engine.mime import parse_message

    return parse_message(raw, datetime.now(UTC)).text[:2000]
