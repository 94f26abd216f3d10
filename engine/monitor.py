"""What supervisors watch (read-only; the console's ``supervisor`` blueprint): per account
and classification, what waits and who holds what; the deleted messages to review; the
agents a message can be assigned to.

Queued counts and ages read only the partial index ``ix_messages_queued``; held messages
(assigned or draft) are the few active rows of ``ix_messages_queue``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from engine.queues import INBOX_STATES, QUEUED, Viewer, visible_accounts
from engine.store.models import History, Message, User, UserAccount
from engine.work import deleted_messages

DELETIONS = ("deleted", "auto-delete")  # an agent's, or a rule's (resource "system")


@dataclass
class QueueLoad:
    """One queue: ``oldest`` is the received time of its oldest queued message."""

    account_id: int
    account: str
    classification: str  # "" for unclassified
    queued: int = 0
    oldest: datetime | None = None
    held: dict[str, int] = field(default_factory=dict)  # agent username -> messages

    def age_seconds(self, now: datetime) -> float | None:
        return (now - self.oldest).total_seconds() if self.oldest else None


def queue_loads(db: Any, viewer: Viewer) -> list[QueueLoad]:
    """Every queue with queued or held messages in the accounts the viewer sees, by account
    name then classification."""
    accounts = dict(visible_accounts(db, viewer))
    if not accounts:
        return []
    loads: dict[tuple[int, str], QueueLoad] = {}

    def load(account_id: int, classification: str | None) -> QueueLoad:
        key = (account_id, classification or "")
        if key not in loads:
            loads[key] = QueueLoad(account_id, accounts[account_id], key[1])
        return loads[key]

    for account_id, cls, count, oldest in db.execute(
            select(Message.account_id, Message.classification, func.count(),
                   func.min(Message.received_at))
            .where(Message.state == QUEUED, Message.account_id.in_(accounts))
            .group_by(Message.account_id, Message.classification)):
        found = load(account_id, cls)
        found.queued, found.oldest = count, oldest  # min() keeps the column's UTC type
    for account_id, cls, username, count in db.execute(
            select(Message.account_id, Message.classification, User.username, func.count())
            .join(User, User.id == Message.assigned_user_id)
            .where(Message.state.in_(INBOX_STATES), Message.account_id.in_(accounts))
            .group_by(Message.account_id, Message.classification, User.username)):
        load(account_id, cls).held[username] = count
    return sorted(loads.values(), key=lambda q: (q.account, q.classification))


@dataclass(frozen=True)
class Deletion:
    """A deleted message with who deleted it, when and why (its latest deletion row)."""

    message: Message
    by: str
    at: datetime | None
    reason: str | None


def deletions(session: Session, viewer: Viewer, limit: int = 200) -> list[Deletion]:
    """Deleted messages of the accounts the viewer sees, newest first."""
    messages = deleted_messages(session, viewer, limit)
    rows = session.execute(
        select(History.message_id, History.resource, History.created_at, History.reason_code)
        .where(History.message_id.in_([m.id for m in messages]),
               History.action.in_(DELETIONS)).order_by(History.created_at, History.id))
    latest = {row.message_id: row for row in rows}
    return [Deletion(m, latest[m.id].resource if m.id in latest else "?",
                     m.deleted_at or (latest[m.id].created_at if m.id in latest else None),
                     latest[m.id].reason_code if m.id in latest else None) for m in messages]


def agents_for(session: Session, account_id: int) -> list[str]:
    """Usernames of the active users who work the account (assignment targets)."""
    return list(session.scalars(
        select(User.username).join(UserAccount, UserAccount.user_id == User.id)
        .where(UserAccount.account_id == account_id, User.active.is_(True))
        .order_by(User.username)))
