"""The outbox: everything the system sends, as durable rows (Oracle's Outbox Processor).

Rows are written by the intake in the transaction that stores the inbound message that
caused them (``plan_automatic``), so a 250 means the acknowledgement will be sent. The
sending worker (``engine.outboxworker``) composes a row once (``engine.compose``: Message-ID,
tag, template) before its first attempt and then only ever sends those bytes.

Row states: ``pending`` (due at ``next_attempt_at``) → ``sending`` (claimed, an SMTP
transaction may be under way) → ``sent`` | ``failed`` | ``skipped`` (loop, rate or
suppression policy) | ``cancelled`` (an admin). A row found in ``sending`` when a worker
starts was interrupted between the relay's answer and our bookkeeping: it is sent again
with the same bytes and Message-ID (at-least-once; receivers deduplicate by Message-ID), and
its history says so.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, select, update

from engine.autoresponse import is_out_of_office, suppression_reason
from engine.leases import dead_here
from engine.mime import ParsedMessage
from engine.reasons import DEFAULT_RESOURCE, reason_for
from engine.store.models import History, Outbox, OutboxState, Suppression, Switch
from rules.evaluate import Decision

ANSWERS = ("auto-acknowledge", "auto-reply")  # mail to the sender: loop rules apply
AUTOMATIC = (*ANSWERS, "auto-redirect")
PAUSE = "outbox-paused"  # the switch ``outbox pause`` and the breaker turn on
_O = Outbox.__table__


@dataclass(frozen=True)
class Planned:
    """What the intake does about a message's automatic actions."""

    rows: list[dict[str, Any]]  # outbox rows to insert
    history: list[tuple[str, dict[str, Any]]]  # (action, detail) rows for the message
    state: str | None  # a new message state when an action could not be taken


def reply_address(parsed: ParsedMessage) -> str:
    """Where an answer goes: Reply-To, else From (lower case; "" when neither)."""
    for addr in [*parsed.reply_to, parsed.from_]:
        if addr is not None and addr.addr:
            return addr.addr.lower()
    return ""


def plan_automatic(decision: Decision | None, parsed: ParsedMessage, envelope_sender: str,
                   own_addresses: Iterable[str], *, message_pk: int, account_id: int,
                   thread_id: int | None, now: datetime) -> Planned:
    """Outbox rows for the decision's automatic actions, after the loop rules (RFC 3834).

    An answer the loop rules forbid is recorded as skipped with its reason; an auto-reply
    that could not be sent leaves the message for an agent (queued). An out-of-office reply
    is never answered and never opens a case: it is settled (resolved) in its thread.
    """
    # an out-of-office reply the rules left for a queue is settled instead (deleted,
    # redirected... stay as the rules said)
    ooo = (decision is None or decision.state == "queued") and is_out_of_office(parsed)
    if decision is None:
        return Planned([], [("out-of-office", {})] if ooo else [], "resolved" if ooo else None)
    rows: list[dict[str, Any]] = []
    history: list[tuple[str, dict[str, Any]]] = []
    state = "resolved" if ooo else None
    for action in decision.actions:
        kind = action["type"]
        if kind not in AUTOMATIC:
            continue
        if kind in ANSWERS:
            rcpt = reply_address(parsed)
            reason = "out-of-office" if ooo else suppression_reason(
                parsed, envelope_sender, own_addresses)
            if reason is None and not rcpt:
                reason = "no-address"
            if reason is not None:
                history.append(("auto-skipped", {"kind": kind, "rule": action["rule"],
                                                 "reason": reason}))
                if kind == "auto-reply" and not ooo:
                    state = "queued"  # nobody answered it: an agent will
                continue
        elif "address" in action:
            rcpt = str(action["address"]).lower()
        else:
            kind = "redirect-account"  # to another account: reprocessed there, not mailed
            rcpt = ""
        rows.append({"cause_message_id": message_pk, "account_id": account_id,
                     "thread_id": thread_id, "kind": kind, "rule": action["rule"],
                     "template": action.get("template"), "rcpt": rcpt, "automatic": True,
                     "state": OutboxState.PENDING.value, "rcpt_to": [rcpt] if rcpt else [],
                     "created_at": now, "next_attempt_at": now, "mail_from": "",
                     "message_id_header": None, "raw": None, "attempts": 0,
                     "last_error": None, "status": None, "sent_at": None,
                     "archived_message_id": None})
    if ooo:
        history.append(("out-of-office", {}))
    return Planned(rows, history, state)


# --- state transitions (the worker and the CLI) ---------------------------------------------

def backoff(attempts: int, base: float, ceiling: float, rng: random.Random | None = None) -> float:
    """Seconds before the next attempt: exponential from ``base``, capped, with full jitter
    over the upper half (so a relay coming back is not hit by every row at once)."""
    delay = min(ceiling, base * 2 ** max(attempts - 1, 0))
    return delay / 2 + (rng or random).random() * delay / 2


def claim_due(conn: Connection, now: datetime, limit: int, automatic_ok: bool, *,
              claimed_by: str | None = None, claim_seconds: float = 600) -> list[int]:
    """Mark up to ``limit`` due rows ``sending`` by ``claimed_by`` for at most
    ``claim_seconds`` and return their ids (oldest first)."""
    query = (select(Outbox.id).where(Outbox.state == OutboxState.PENDING.value,
                                     Outbox.next_attempt_at <= now)
             .order_by(Outbox.next_attempt_at, Outbox.id).limit(limit))
    if not automatic_ok:
        query = query.where(Outbox.automatic.is_(False))
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    ids = list(conn.execute(query).scalars())
    if ids:
        conn.execute(update(Outbox).where(Outbox.id.in_(ids))
                     .values(state=OutboxState.SENDING.value, attempts=Outbox.attempts + 1,
                             claimed_by=claimed_by,
                             next_attempt_at=now + timedelta(seconds=claim_seconds)))
    return ids


def interrupted(conn: Connection, now: datetime | None = None,
                mine: str | None = None) -> list[int]:
    """Rows left ``sending`` by a worker that stopped mid-way — its claim ran out, it was a
    process of this machine that is gone, or it is ``mine`` (the caller has none in hand)
    — due again at once. Rows a live worker is sending stay its own."""
    now = now or datetime.now(UTC)
    rows = conn.execute(select(Outbox.id, Outbox.claimed_by, Outbox.next_attempt_at)
                        .where(Outbox.state == OutboxState.SENDING.value)).all()
    ids = [r.id for r in rows if r.claimed_by is None or r.claimed_by == mine
           or r.next_attempt_at <= now or dead_here(r.claimed_by)]
    if ids:
        conn.execute(update(Outbox).where(Outbox.id.in_(ids))
                     .values(state=OutboxState.PENDING.value, next_attempt_at=now))
        for pk in ids:
            record(conn, pk, "send-interrupted",
                   {"policy": "resent with the same Message-ID"})
    return ids


def finish(conn: Connection, pk: int, state: str, *, error: str | None = None,
           status: str | None = None, retry_at: datetime | None = None,
           now: datetime | None = None) -> None:
    """Record the outcome of an attempt (``retry_at``: back to pending until then)."""
    values: dict[str, Any] = {"state": state, "last_error": error, "status": status}
    if retry_at is not None:
        values["next_attempt_at"] = retry_at
    if state == OutboxState.SENT.value:
        values["sent_at"] = now or datetime.now(UTC)
    conn.execute(update(Outbox).where(Outbox.id == pk).values(**values))


def record(conn: Connection, pk: int, action: str, detail: dict[str, Any],
           resource: str = DEFAULT_RESOURCE) -> None:
    """An interaction history row for an outbox row, with its seeded reason code."""
    row = conn.execute(select(Outbox.cause_message_id, Outbox.thread_id, Outbox.account_id,
                              Outbox.kind).where(Outbox.id == pk)).one()
    conn.execute(History.__table__.insert().values(
        message_id=row.cause_message_id, thread_id=row.thread_id, account_id=row.account_id,
        action=action, resource=resource, reason_code=reason_for(action, row.kind),
        detail={"outbox": pk, "kind": row.kind, **detail}, created_at=datetime.now(UTC)))


def automatic_sent_since(conn: Connection, account_id: int, rcpt: str, since: datetime,
                         exclude: int) -> int:
    """Automatic mails to ``rcpt`` from the account since ``since`` (sent or on their way)."""
    return conn.execute(select(func.count()).select_from(Outbox).where(
        Outbox.account_id == account_id, Outbox.rcpt == rcpt, Outbox.automatic.is_(True),
        Outbox.created_at >= since, Outbox.id != exclude,
        Outbox.state.in_([OutboxState.SENT.value, OutboxState.SENDING.value]))).scalar_one()


def automatic_rate(conn: Connection, since: datetime) -> int:
    return conn.execute(select(func.count()).select_from(Outbox).where(
        Outbox.automatic.is_(True), Outbox.sent_at >= since)).scalar_one()


def suppressed(conn: Connection, address: str) -> Any:
    """The suppression row of ``address`` (address, reason, status), or None."""
    table = Suppression.__table__
    return conn.execute(select(table).where(table.c.address == address.lower())).first()


def suppress(conn: Connection, address: str, reason: str, status: str | None) -> None:
    if suppressed(conn, address) is None:
        conn.execute(Suppression.__table__.insert().values(
            address=address.lower(), reason=reason, status=status, created_at=datetime.now(UTC)))


def unsuppress(conn: Connection, address: str) -> bool:
    return bool(conn.execute(Suppression.__table__.delete().where(
        Suppression.address == address.lower())).rowcount)


def paused(conn: Connection) -> str | None:
    """Why automatic sending is paused, or None."""
    row = conn.execute(select(Switch.on, Switch.reason).where(Switch.name == PAUSE)).first()
    return (row.reason or "paused") if row is not None and row.on else None


def set_paused(conn: Connection, on: bool, reason: str = "") -> None:
    values = {"on": on, "reason": reason, "changed_at": datetime.now(UTC)}
    if conn.execute(update(Switch).where(Switch.name == PAUSE).values(**values)).rowcount == 0:
        conn.execute(Switch.__table__.insert().values(name=PAUSE, **values))


def give_up_at(created_at: datetime, hours: float) -> datetime:
    return created_at + timedelta(hours=hours)


def health(conn: Connection) -> dict[str, Any]:
    """Rows per state and whether automatic sending is paused (``/healthz``, any process)."""
    counts = dict(conn.execute(select(Outbox.state, func.count()).group_by(Outbox.state)).all())
    return {"rows": {state: counts.get(state, 0) for state in
                     ("pending", "sending", "sent", "failed", "skipped")},
            "paused": paused(conn)}
