"""Working a message in the console: open it, see who else has it, finish it with a reason.

The console's message component calls these after ``engine.queues.message_for`` said the
user may see the message. Each action checks the message is still active and not held by
someone else, changes its state and writes one interaction-history row naming the agent
(``resource`` = username, ``user_id``), the wrap-up reason code and how long the agent had
the message (from opening it, else from claiming it). Functions take an ORM ``Session``
and never commit: the caller's request is the transaction.

Terminal actions (``resolve``, ``delete``, ``transfer`` and sending, ``engine.replies``)
require an active wrap-up code (``reason_codes``). ``reroute`` puts the message back in a
queue (another account, another classification or the same one) and records a
``rerouted`` row: ``engine.queues`` never hands it back to that agent.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session, load_only

from engine.decisions import RulesContext, decision_columns, redecide
from engine.queues import Viewer, sees_account
from engine.store.models import (
    Account,
    Group,
    History,
    Message,
    MessageAccount,
    MessageState,
    ReasonCode,
    User,
    WorkSession,
)
from engine.threadview import THREAD_COLUMNS

PRESENCE = timedelta(minutes=10)  # an open message counts as being worked this long
WRAPUP_KIND = "wrap-up"


class WorkError(Exception):
    """An action that cannot be done; the message says why and what to do."""


class NotActive(WorkError):
    """The message was already settled (sent, resolved, deleted...) by someone."""


class Taken(WorkError):
    """Another agent holds the message."""


class ReasonRequired(WorkError):
    """A terminal action needs an active wrap-up code."""


# --- opening and presence -------------------------------------------------------------------


def open_message(session: Session, message: Message, viewer: Viewer, now: datetime) -> None:
    """Record that the viewer has the message open (first time: the wrap-up clock starts)."""
    work = session.get(WorkSession, (message.id, viewer.id))
    if work is None:
        session.add(WorkSession(message_id=message.id, user_id=viewer.id, opened_at=now,
                                seen_at=now))
    else:
        work.seen_at = now


def working(session: Session, message_id: int, viewer_id: int, now: datetime) -> list[str]:
    """Usernames of the others who had the message open lately (newest first)."""
    rows = session.execute(
        select(User.username).join(WorkSession, WorkSession.user_id == User.id)
        .where(WorkSession.message_id == message_id, WorkSession.user_id != viewer_id,
               WorkSession.seen_at >= now - PRESENCE).order_by(WorkSession.seen_at.desc()))
    return list(rows.scalars())


def holder(session: Session, message: Message) -> str | None:
    """Username of the agent the message is assigned to, if any."""
    if message.assigned_user_id is None:
        return None
    return session.scalar(select(User.username).where(User.id == message.assigned_user_id))


def duration(session: Session, message: Message, viewer: Viewer, now: datetime) -> float | None:
    """Seconds the viewer has had the message: since opening it, else since claiming it."""
    work = session.get(WorkSession, (message.id, viewer.id))
    start = work.opened_at if work is not None else (
        message.claimed_at if message.assigned_user_id == viewer.id else None)
    return round((now - start).total_seconds(), 1) if start is not None else None


# --- reason codes ---------------------------------------------------------------------------


def wrapup_codes(session: Session) -> list[ReasonCode]:
    """The active wrap-up codes agents choose from, by code."""
    return list(session.scalars(select(ReasonCode).where(
        ReasonCode.kind == WRAPUP_KIND, ReasonCode.active.is_(True)).order_by(ReasonCode.code)))


def check_reason(session: Session, code: str | None) -> str:
    """The code if it is an active wrap-up code; ``ReasonRequired`` otherwise."""
    code = (code or "").strip().upper()
    if not code:
        raise ReasonRequired("choose a wrap-up reason before finishing the message")
    found = session.scalar(select(ReasonCode.code).where(
        ReasonCode.code == code, ReasonCode.kind == WRAPUP_KIND, ReasonCode.active.is_(True)))
    if found is None:
        raise ReasonRequired(f"{code!r} is not an active wrap-up reason")
    return str(found)


# --- actions --------------------------------------------------------------------------------


def ensure_workable(session: Session, message: Message, viewer: Viewer) -> None:
    """Raise unless the message is active and free or held by the viewer (supervisors may
    act on anyone's)."""
    if not MessageState(message.state).active:
        raise NotActive(f"message {message.id} is already {message.state}")
    if (message.assigned_user_id not in (None, viewer.id)) and not viewer.sees_all:
        raise Taken(f"message {message.id} is being worked by {holder(session, message)}")


def record(session: Session, message: Message, viewer: Viewer, action: str,
           reason: str | None, now: datetime, detail: dict[str, Any] | None = None) -> None:
    """One interaction-history row for the viewer's action, with the time spent."""
    spent = duration(session, message, viewer, now)
    session.execute(insert(History).values(
        message_id=message.id, thread_id=message.thread_id, account_id=message.account_id,
        action=action, resource=viewer.username, user_id=viewer.id, reason_code=reason,
        detail={**(detail or {}), "duration_seconds": spent}, created_at=now))


def close(session: Session, message: Message) -> None:
    """The message left everyone's hands: nobody is working it any more."""
    session.execute(delete(WorkSession).where(WorkSession.message_id == message.id))


def settle(session: Session, message: Message, viewer: Viewer, action: str, state: str,
           reason: str | None, now: datetime, detail: dict[str, Any] | None = None) -> None:
    """Move to a settled ``state`` with a history row (the shared end of every finish)."""
    record(session, message, viewer, action, reason, now, detail)
    message.state = state
    if state == MessageState.DELETED.value:
        message.deleted_at = now
    close(session, message)
    from engine.drafts import discard

    discard(session, message.id, viewer.id)


def resolve(session: Session, message: Message, viewer: Viewer, reason: str | None,
            now: datetime) -> None:
    """Resolved without a reply."""
    ensure_workable(session, message, viewer)
    settle(session, message, viewer, "resolved", MessageState.RESOLVED.value,
           check_reason(session, reason), now)


def delete_message(session: Session, message: Message, viewer: Viewer, reason: str | None,
                   now: datetime) -> None:
    """Soft delete: the row stays, in state ``deleted``, for supervisors to review."""
    ensure_workable(session, message, viewer)
    settle(session, message, viewer, "deleted", MessageState.DELETED.value,
           check_reason(session, reason), now)


def restore(session: Session, message: Message, viewer: Viewer, now: datetime) -> None:
    """A supervisor takes a deleted message back into its queue."""
    if not viewer.sees_all:
        raise WorkError("only supervisors restore deleted messages")
    if message.state != MessageState.DELETED.value:
        raise WorkError(f"message {message.id} is {message.state}, not deleted")
    record(session, message, viewer, "restored", None, now)
    _requeue(message)
    message.deleted_at = None


def _visible(session: Session, viewer: Viewer, account_id: int) -> bool:
    return viewer.sees_all or sees_account(session, viewer, account_id)


def deleted_messages(session: Session, viewer: Viewer, limit: int = 200) -> list[Message]:
    """Deleted messages of the accounts the viewer sees, newest first (supervisor review)."""
    query = (select(Message).options(load_only(*THREAD_COLUMNS, Message.deleted_at))
             .where(Message.state == MessageState.DELETED.value)
             .order_by(Message.deleted_at.desc(), Message.id.desc()).limit(limit))
    return [m for m in session.scalars(query) if _visible(session, viewer, m.account_id)]


def transfer(session: Session, message: Message, viewer: Viewer, reason: str | None,
             now: datetime, *, agent: str | None = None, group: str | None = None) -> str:
    """Hand the message to another agent (assigned to them) or a group (its queue);
    returns whom it went to."""
    ensure_workable(session, message, viewer)
    code = check_reason(session, reason)
    if bool(agent) == bool(group):
        raise WorkError("transfer to one agent or one group")
    if agent:
        target = session.scalar(select(User).where(User.username == agent,
                                                   User.active.is_(True)))
        if target is None or not _works_account(session, target, message.account_id):
            raise WorkError(f"no active agent {agent!r} works this account")
        if target.id == viewer.id:
            raise WorkError("the message is already yours")
        record(session, message, viewer, "transferred", code, now, {"to_agent": agent})
        message.state, message.assigned_user_id = MessageState.ASSIGNED.value, target.id
        message.claimed_at = now
        close(session, message)
        return agent
    found = session.scalar(select(Group).where(Group.name == group))
    if found is None:
        raise WorkError(f"no group {group!r}")
    record(session, message, viewer, "transferred", code, now, {"to_group": group})
    _requeue(message)
    message.group_id, message.route_group = found.id, found.name
    close(session, message)
    return str(group)


def assign(session: Session, message: Message, viewer: Viewer, agent: str,
           now: datetime) -> None:
    """A supervisor hands an active message to an agent who works its account."""
    if not viewer.sees_all:
        raise WorkError("only supervisors assign messages")
    if not MessageState(message.state).active:
        raise NotActive(f"message {message.id} is already {message.state}")
    target = session.scalar(select(User).where(User.username == agent, User.active.is_(True)))
    if target is None or not _works_account(session, target, message.account_id):
        raise WorkError(f"no active agent {agent!r} works this account")
    record(session, message, viewer, "assigned", None, now,
           {"to_agent": agent, "from_agent": holder(session, message)})
    message.state, message.assigned_user_id = MessageState.ASSIGNED.value, target.id
    message.claimed_at = now


def _works_account(session: Session, user: User, account_id: int) -> bool:
    from engine.queues import viewer_of

    return sees_account(session, viewer_of(user), account_id)


def _requeue(message: Message) -> None:
    message.state = MessageState.QUEUED.value
    message.assigned_user_id = None
    message.claimed_at = None
    message.route_agent = None


def reroute(session: Session, message: Message, viewer: Viewer, now: datetime, *,
            account: str | None = None, classification: str | None = None,
            reason: str | None = None, rules: RulesContext | None = None) -> dict[str, Any]:
    """Back to a queue: the same one (nothing given), another classification, or another
    account (decided again with that account's rules when ``rules`` is given; no automatic
    mail is sent again). The viewer will not get the message back from "get next"."""
    ensure_workable(session, message, viewer)
    code = check_reason(session, reason) if reason else None
    before = {"account": message.account_id, "classification": message.classification}
    if account:
        target = session.scalar(select(Account).where(Account.name == account,
                                                      Account.active.is_(True)))
        if target is None:
            raise WorkError(f"no active account {account!r}")
        _move(session, message, target.id, rules)
    if classification is not None and classification.strip():
        message.classification = classification.strip()
    detail = {"from_account": before["account"], "to_account": message.account_id,
              "from_classification": before["classification"],
              "to_classification": message.classification}
    record(session, message, viewer, "rerouted", code, now, detail)
    _requeue(message)
    message.group_id = None
    close(session, message)
    return detail


def _move(session: Session, message: Message, account_id: int,
          rules: RulesContext | None) -> None:
    """Put the message in another account and decide it again there."""
    message.account_id = account_id
    if session.get(MessageAccount, (message.id, account_id)) is None:
        session.add(MessageAccount(message_id=message.id, account_id=account_id, recipient=""))
    session.flush()
    decision = redecide(rules, session.connection(), message.id) if rules is not None else None
    if decision is None:
        message.route_group = None
        return
    columns = decision_columns(decision, message.received_at)
    for name in ("classification", "route_group", "route_agent", "rule_version", "decision"):
        setattr(message, name, columns[name])
