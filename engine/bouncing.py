"""Delivery reports coming back (pipeline step in the intake, before the rules).

Every mail we send has its own return path (``engine.bounces.verp_address``), so a delivery
status notification sent to it names the exact outbox row that failed. A report whose return
path verifies marks that row failed with the reported status, puts a permanently failed
address (5.1.x) on the suppression list, joins the thread of the mail that failed and flags
it for the agent. A report that names no row we sent (no or a forged token) is not trusted:
it is kept, settled as a bounce, and acts on nothing. Either way a delivery report never
reaches a queue as customer mail and is never answered.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select, update

from engine.bounces import Bounce, parse_bounce, read_verp
from engine.store.models import Outbox, OutboxState, Suppression, Thread

SUPPRESS_STATUSES = ("5.1.",)  # bad mailbox or address: automatic mail stops trying


@dataclass
class BounceOutcome:
    """What the intake does with a delivery report."""

    thread_id: int | None  # the thread of the mail that failed (verified reports only)
    history: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def bounce_address(recipients: list[str], local: str) -> str | None:
    """The envelope recipient that is one of our return paths, if any."""
    prefix = f"{local}+".lower()
    return next((r for r in recipients if r.lower().startswith(prefix)), None)


def handle_report(conn: Connection, raw: bytes, recipient: str | None,
                  secrets: Collection[bytes], local: str) -> BounceOutcome | None:
    """Act on ``raw`` if it is a delivery report (None: it is not one).

    Runs in the intake's transaction: the row update, the suppression and the stored report
    commit together.
    """
    report = parse_bounce(raw)
    if report is None and recipient is None:
        return None
    outbox_id = read_verp(recipient, list(secrets), local) if recipient and secrets else None
    row = conn.execute(select(Outbox.id, Outbox.thread_id, Outbox.rcpt, Outbox.state)
                       .where(Outbox.id == outbox_id)).first() if outbox_id else None
    detail = _detail(report)
    if row is None:
        return BounceOutcome(None, [("untrusted-bounce", {**detail, "to": recipient})])
    outcome = BounceOutcome(row.thread_id, [("delivery-report", {**detail, "outbox": row.id})])
    if report is not None and report.failed:
        status = report.failed[0].status
        if report.permanent or row.state != OutboxState.SENT.value:
            conn.execute(update(Outbox).where(Outbox.id == row.id).values(
                state=OutboxState.FAILED.value, status=status,
                last_error=f"bounced: {status} {report.failed[0].diagnostic}".strip()))
        for failed in report.failed:
            address = (failed.address or row.rcpt).lower()
            if failed.status.startswith(SUPPRESS_STATUSES) and _new_suppression(conn, address):
                conn.execute(Suppression.__table__.insert().values(
                    address=address, reason=f"bounced ({failed.status}) for outbox {row.id}",
                    status=failed.status))
                outcome.history.append(("address-suppressed", {"address": address,
                                                                "status": failed.status}))
        if row.thread_id is not None:
            conn.execute(update(Thread).where(Thread.id == row.thread_id).values(flagged=True))
    return outcome


def _new_suppression(conn: Connection, address: str) -> bool:
    return conn.execute(select(Suppression.address).where(
        Suppression.address == address)).first() is None


def _detail(report: Bounce | None) -> dict[str, Any]:
    if report is None:
        return {"parsed": False}
    return {"parsed": True, "kind": report.kind, "permanent": report.permanent,
            "original_message_id": report.original_message_id,
            "recipients": [{"address": r.address, "status": r.status, "action": r.action,
                            "diagnostic": r.diagnostic[:300]} for r in report.recipients]}
