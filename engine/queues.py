"""Queues and who may see what: the console's view of queued and assigned messages.

A queue is (account, classification) over messages in state ``queued``; unclassified
messages form the queue ``""``. Agents see only the accounts assigned to them
(``user_accounts``) and pull only from the queues they have access to (``queue_access``: no
row for an account means all its queues). Supervisors and admins see every account.
``claim_next`` hands out the next message of a queue atomically: on SQLite inside a
BEGIN IMMEDIATE transaction (``engine.store.database.writer``), on PostgreSQL with
``FOR UPDATE SKIP LOCKED``; the conditional UPDATE makes a lost race retry, never double-assign.

Functions take a ``Connection`` or a ``Session`` (both answer ``execute``/``scalar``);
the caller owns the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, exists, func, insert, literal_column, or_, select, update

from engine.store.database import writer
from engine.store.models import (
    Account,
    History,
    Message,
    MessageState,
    QueueAccess,
    Role,
    User,
    UserAccount,
)

QUEUED = literal_column("'queued'")  # a literal, so the partial index ix_messages_queued applies
INBOX_STATES = (MessageState.ASSIGNED.value, MessageState.DRAFT.value)
CLAIM_RETRIES = 5


@dataclass(frozen=True)
class Viewer:
    """The console user a request acts for."""

    id: int
    username: str
    role: str = Role.AGENT.value
    on_break: bool = False

    @property
    def sees_all(self) -> bool:
        return self.role in (Role.SUPERVISOR.value, Role.ADMIN.value)


@dataclass(frozen=True)
class QueueCount:
    account_id: int
    classification: str  # "" for unclassified
    count: int


def viewer_of(user: User) -> Viewer:
    return Viewer(user.id, user.username, user.role, user.on_break)


def load_viewer(db: Any, user_id: int) -> Viewer | None:
    """The active user ``user_id`` as a Viewer, read now (role and break may have changed)."""
    row = db.execute(select(User.id, User.username, User.role, User.on_break)
                     .where(User.id == user_id, User.active.is_(True))).first()
    return Viewer(*row) if row else None


def visible_accounts(db: Any, viewer: Viewer) -> list[tuple[int, str]]:
    """(id, name) of the accounts the viewer works, by name."""
    query = select(Account.id, Account.name).where(Account.active.is_(True))
    if not viewer.sees_all:
        query = query.join(UserAccount, UserAccount.account_id == Account.id).where(
            UserAccount.user_id == viewer.id)
    return [(i, n) for i, n in db.execute(query.order_by(Account.name))]


def queue_filter(db: Any, viewer: Viewer, account_id: int) -> set[str] | None:
    """The classifications the viewer may pull from in an account; None means all."""
    if viewer.sees_all:
        return None
    rows = db.scalars(select(QueueAccess.classification).where(
        QueueAccess.user_id == viewer.id, QueueAccess.account_id == account_id)).all()
    return set(rows) if rows else None


def sees_account(db: Any, viewer: Viewer, account_id: int) -> bool:
    if viewer.sees_all:
        return db.scalar(select(Account.id).where(Account.id == account_id)) is not None
    return db.scalar(select(UserAccount.account_id).where(
        UserAccount.user_id == viewer.id, UserAccount.account_id == account_id)) is not None


def may_pull(db: Any, viewer: Viewer, account_id: int, classification: str) -> bool:
    if not sees_account(db, viewer, account_id):
        return False
    allowed = queue_filter(db, viewer, account_id)
    return allowed is None or classification in allowed


def queue_counts(db: Any, viewer: Viewer) -> list[QueueCount]:
    """Queued messages per visible queue (empty queues are absent), by account then name."""
    accounts = [i for i, _ in visible_accounts(db, viewer)]
    if not accounts:
        return []
    rows = db.execute(
        select(Message.account_id, Message.classification, func.count())
        .where(Message.state == QUEUED, Message.account_id.in_(accounts))
        .group_by(Message.account_id, Message.classification))
    filters = {a: queue_filter(db, viewer, a) for a in accounts}
    counts = [QueueCount(a, c or "", n) for a, c, n in rows]
    return sorted((q for q in counts if filters[q.account_id] is None
                   or q.classification in filters[q.account_id]),  # type: ignore[operator]
                  key=lambda q: (accounts.index(q.account_id), q.classification))


def _in_queue(account_id: int, classification: str) -> list[Any]:
    cls = Message.classification.is_(None) if classification == "" else \
        Message.classification == classification
    return [Message.state == QUEUED, Message.account_id == account_id, cls]


def _rerouted_by(viewer: Viewer) -> Any:
    """Messages this user rerouted away are not handed back to them."""
    return exists().where(History.message_id == Message.id, History.action == "rerouted",
                          History.user_id == viewer.id)


def _dialect(db: Any) -> str:
    bind = db.get_bind() if hasattr(db, "get_bind") else db
    return str(bind.dialect.name)


def _next_candidate(db: Any, viewer: Viewer, account_id: int, classification: str) -> int | None:
    query = (select(Message.id).where(*_in_queue(account_id, classification),
                                      ~_rerouted_by(viewer))
             .order_by(Message.priority.desc(), Message.received_at, Message.id).limit(1))
    if _dialect(db) == "postgresql":  # other claimers skip the row we hold
        query = query.with_for_update(skip_locked=True)
    return db.scalar(query)


def claim_next(db: Any, user_id: int, account_id: int, classification: str,
               now: datetime | None = None) -> int | None:
    """Assign the queue's next message (highest priority, oldest received) to the user.

    Returns its id, or None when the queue is empty for this user, the user is on a break,
    inactive or may not pull from the queue. Run inside a write transaction.
    """
    viewer = load_viewer(db, user_id)
    if viewer is None or viewer.on_break or not may_pull(db, viewer, account_id, classification):
        return None
    now = now or datetime.now(UTC)
    for _ in range(CLAIM_RETRIES):
        candidate = _next_candidate(db, viewer, account_id, classification)
        if candidate is None:
            return None
        taken = db.execute(update(Message).where(Message.id == candidate,
                                                 Message.state == MessageState.QUEUED.value)
                           .values(state=MessageState.ASSIGNED.value, assigned_user_id=user_id,
                                   claimed_at=now))
        if taken.rowcount == 1:
            db.execute(insert(History).values(
                message_id=candidate, account_id=account_id, action="claimed",
                resource=viewer.username, user_id=user_id, created_at=now,
                detail={"queue": classification}))
            return int(candidate)
    return None


def claim(engine: Engine, user_id: int, account_id: int, classification: str) -> int | None:
    """``claim_next`` in its own write transaction (BEGIN IMMEDIATE on SQLite)."""
    with writer(engine).begin() as conn:
        return claim_next(conn, user_id, account_id, classification)


def can_see(db: Any, viewer: Viewer, message: Message) -> bool:
    """A message is visible in an account the viewer works, when it is assigned to the
    viewer or sits in a queue the viewer may pull from."""
    if viewer.sees_all or message.assigned_user_id == viewer.id:
        return viewer.sees_all or sees_account(db, viewer, message.account_id)
    return may_pull(db, viewer, message.account_id, message.classification or "")


def message_for(db: Any, viewer: Viewer, message_id: int) -> Message | None:
    """The message, if the viewer may see it; None otherwise (answer 404, never 403).

    ``db`` must be an ORM ``Session`` here.
    """
    message = db.get(Message, message_id)
    return message if message is not None and can_see(db, viewer, message) else None


@dataclass(frozen=True)
class InboxItem:
    id: int
    from_name: str
    from_addr: str
    subject: str
    date: datetime
    state: str


def my_inbox(db: Any, viewer: Viewer, account_id: int, limit: int = 100) -> list[InboxItem]:
    """Messages of an account assigned to the viewer and not yet settled, oldest first."""
    rows = db.execute(
        select(Message.id, Message.from_name, Message.from_addr, Message.subject,
               Message.received_at, Message.state)
        .where(Message.account_id == account_id, Message.state.in_(INBOX_STATES),
               Message.assigned_user_id == viewer.id)
        .order_by(Message.received_at, Message.id).limit(limit))
    return [InboxItem(*row) for row in rows]


SENT_ACTIONS = ("sent", "replied", "composed")  # composed: a new message (engine.newmail)


def today_activity(db: Any, viewer: Viewer, now: datetime | None = None) -> dict[str, int]:
    """Today's (UTC) work of the viewer from history rows carrying its user id: messages
    handled (any action on them), replies sent, messages resolved."""
    now = now or datetime.now(UTC)
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    mine = [History.user_id == viewer.id, History.created_at >= start]
    handled = db.scalar(select(func.count(func.distinct(History.message_id))).where(*mine))
    by_action = dict(db.execute(select(History.action, func.count()).where(
        *mine, or_(History.action.in_(SENT_ACTIONS), History.action == "resolved"))
        .group_by(History.action)).all())
    return {"handled": handled or 0,
            "sent": sum(by_action.get(a, 0) for a in SENT_ACTIONS),
            "resolved": by_action.get("resolved", 0)}


def set_break(db: Any, user_id: int, on_break: bool) -> None:
    db.execute(update(User).where(User.id == user_id).values(on_break=on_break))
