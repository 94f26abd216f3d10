"""Writing deliveries into the store: recognise redeliveries, thread, insert (pipeline step 4).

``store_batch`` stores a group of parsed deliveries inside the caller's transaction with a
handful of statements for the whole group (SQLAlchemy's per-statement cost is several times
SQLite's, so per-message statements would cap the gateway). ``store_raw`` keeps the bytes of a
message the pipeline could not handle; ``reprocess`` replays the pipeline over stored bytes.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, exists, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from engine.autoresponse import is_daemon_address
from engine.bouncing import BounceOutcome, bounce_address, handle_report
from engine.decisions import RulesContext, decision_columns
from engine.mime import ParsedMessage, parse_message
from engine.outbox import Planned, plan_automatic
from engine.reasons import DEFAULT_RESOURCE, reason_for
from engine.store.models import (
    Attachment,
    Blob,
    History,
    Message,
    MessageAccount,
    MessageState,
    Outbox,
    RuleStat,
    User,
    UserAccount,
)
from engine.store.prepared import (
    execute_many,
    insert_many,
    insert_returning_ids,
    pipelined,
    select_rows,
)
from engine.threads import ThreadBatch
from engine.wire import compact
from rules.evaluate import Decision

_MESSAGES = Message.__table__
_FIND_KEYS = select(_MESSAGES.c.dedupe_key, _MESSAGES.c.id, _MESSAGES.c.needs_attention).where(
    _MESSAGES.c.dedupe_key.in_(bindparam("keys", expanding=True)))
_GET_MESSAGE = select(_MESSAGES).where(_MESSAGES.c.id == bindparam("pk"))
_UPDATE_MESSAGE = _MESSAGES.update().where(_MESSAGES.c.id == bindparam("pk"))


@compact("received_at")  # crosses the pipe to the writer process with every delivery
@dataclass(frozen=True)
class Envelope:
    """What the transport knows about a delivery besides the bytes."""

    mail_from: str
    recipients: list[tuple[int, str]]  # (account id, envelope recipient) — at least one
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    received_header: str = ""  # our trace line, kept beside the byte-exact raw message
    protocol: str = "SMTP"


@dataclass(frozen=True)
class Delivery:
    """One message handed to the store: bytes, envelope and the parse result."""

    raw: bytes
    envelope: Envelope
    parsed: ParsedMessage


@dataclass(frozen=True)
class Receipt:
    """The outcome reported back to the sender: the queue id for the 250 reply."""

    message_pk: int
    duplicate: bool
    needs_attention: bool

    @property
    def queue_id(self) -> str:
        return str(self.message_pk)


def dedupe_key(message_id: str, body_hash: str) -> str:
    """Same Message-ID and same body → same key: a redelivery, not a new message."""
    return hashlib.sha256(f"{message_id}\0{body_hash}".encode()).hexdigest()


def raw_key(raw: bytes) -> str:
    """The key of a message that could not even be parsed: its bytes."""
    return hashlib.sha256(b"raw\0" + raw).hexdigest()


@dataclass(frozen=True)
class Rejected:
    """A rule refused the message inside the SMTP transaction: nothing was stored."""

    message: str
    rule: str | None


def store_batch(conn: Connection, deliveries: list[Delivery],
                rules: RulesContext | None = None) -> list[Receipt | Rejected]:
    """Decide and store deliveries (in order) in the caller's transaction; one outcome each."""
    keys = [dedupe_key(d.parsed.message_id, d.parsed.body_hash) for d in deliveries]
    known = {row[0]: row for row in select_rows(conn, _FIND_KEYS, {"keys": keys}, ["keys"])}
    threads = ThreadBatch.load(conn, [d.parsed for d in deliveries])
    fresh: dict[str, int] = {}  # key → index in ``rows``
    rows: list[dict[str, Any]] = []
    slots: list[Any] = []
    decisions: list[Decision | None] = []
    planned: list[Planned] = []  # automatic actions, per new message
    plan: list[tuple[str, Any]] = []  # (known, key) | (new, row index) | (again, index) | ...
    for key, d in zip(keys, deliveries, strict=True):
        if key in known or key in fresh:  # a redelivery, maybe within this very batch
            plan.append(("known", key) if key in known else ("again", fresh[key]))
            continue
        report = _report(conn, rules, d)
        if report is None:
            tags = rules.read_tag(conn, d.parsed) if rules is not None else {}
            tag_thread = _int(tags.get("thread"))
            decision = _decide(conn, rules, d, threads, tags, tag_thread)
        else:  # a delivery report: joins what failed, never decided on or answered
            tag_thread, decision = report.thread_id, None
        if decision is not None and decision.reject is not None:
            plan.append(("rejected", Rejected(decision.reject, decision.stopped_by)))
            continue
        slot, reason = threads.resolve(d.parsed, d.envelope.received_at, tag_thread)
        fresh[key] = len(rows)
        plan.append(("new", len(rows)))
        automatic = plan_automatic(
            decision, d.parsed, d.envelope.mail_from,
            rules.own_addresses if rules is not None else (), message_pk=0,
            account_id=d.envelope.recipients[0][0], thread_id=None,
            now=d.envelope.received_at)
        row = (message_columns(d.parsed) | _envelope_columns(d.raw, d.envelope, key)
               | {"thread_reason": reason} | decision_columns(decision, d.envelope.received_at))
        if report is not None:
            row["state"] = MessageState.BOUNCE.value
            automatic = Planned([], report.history, None)
        elif automatic.state is not None:
            row["state"] = automatic.state
        row |= {"assigned_user_id": None, "claimed_at": None}  # every row: the same keys
        if row["state"] == MessageState.QUEUED.value and row.get("route_agent"):
            _assign_to_agent(conn, row, d.envelope.recipients[0][0], d.envelope.received_at)
        rows.append(row)
        slots.append(slot)
        decisions.append(decision)
        planned.append(automatic)
    # from here on only this module's raw writes: pipelined on PostgreSQL
    with pipelined(conn):
        thread_ids = threads.flush()
        for row, slot in zip(rows, slots, strict=True):
            row["thread_id"] = thread_ids[slot]
        pks = insert_returning_ids(conn, _MESSAGES, rows)
        outcomes = [_outcome(kind, ref, known, pks) for kind, ref in plan]
        _record_accounts(conn, [(r.message_pk, d.envelope) for r, d in zip(outcomes, deliveries,
                                                                           strict=True)
                                if isinstance(r, Receipt)])
        new = [(pks[ref], deliveries[i], rows[ref]) for i, (kind, ref) in enumerate(plan)
               if kind == "new"]
        _store_attachments(conn, [(pk, d.parsed) for pk, d, _ in new])
        _history(conn, [(pk, row["thread_id"], d.envelope, "received",
                         {"thread_reason": row["thread_reason"]}) for pk, d, row in new])
        _history(conn, [(pk, row["thread_id"], d.envelope, action["type"], action)
                        for (pk, d, row), decision in zip(new, decisions, strict=True)
                        if decision is not None for action in decision.actions])
        _history(conn, [(pk, row["thread_id"], d.envelope, action, detail)
                        for (pk, d, row), automatic in zip(new, planned, strict=True)
                        for action, detail in automatic.history])
        outbox = [out | {"cause_message_id": pk, "thread_id": row["thread_id"]}
                  for (pk, _, row), automatic in zip(new, planned, strict=True)
                  for out in automatic.rows]
        if outbox:
            insert_many(conn, Outbox.__table__, outbox)
        hit = [name for decision in decisions if decision is not None
               for name in decision.matched_rules()]
        hit += [ref.rule for kind, ref in plan if kind == "rejected" and ref.rule]
        _count_hits(conn, hit, deliveries[0].envelope.received_at if deliveries else None)
    return outcomes


def _decide(conn: Connection, rules: RulesContext | None, d: Delivery, threads: ThreadBatch,
            tags: dict[str, str], tag_thread: int | None) -> Decision | None:
    if rules is None:
        return None
    slot, _ = threads.find(d.parsed, tag_thread)
    return rules.decide(conn, d.parsed, size=len(d.raw), received_at=d.envelope.received_at,
                        accounts=[a for a, _ in d.envelope.recipients],
                        thread=slot if isinstance(slot, int) else None, tags=tags)


_AGENT = (select(User.id).where(
    User.username == bindparam("name"), User.active.is_(True),
    or_(User.role.in_(("supervisor", "admin")),
        exists().where(UserAccount.user_id == User.id,
                       UserAccount.account_id == bindparam("account")))))


def _assign_to_agent(conn: Connection, row: dict[str, Any], account_id: int,
                     now: Any) -> None:
    """A message the rules route to an agent (e.g. the customer's reply to that agent) goes
    to that agent's inbox, when the agent is active and works the account; else it stays in
    the queue with the agent recorded. Nobody else can take it with "Get next"."""
    found = conn.execute(_AGENT, {"name": row["route_agent"], "account": account_id}).first()
    if found is not None:  # rare (routed mail only): the plain execution path is fine
        row |= {"state": MessageState.ASSIGNED.value, "assigned_user_id": found[0],
                "claimed_at": now}


def _report(conn: Connection, rules: RulesContext | None, d: Delivery) -> BounceOutcome | None:
    """A delivery report (to one of our return paths, or shaped like one), or None."""
    local = rules.bounce_local if rules is not None else "bounces"
    to = bounce_address([rcpt for _, rcpt in d.envelope.recipients], local)
    if to is None and not _looks_like_report(d):
        return None
    secrets = list(rules.tag_keys.keys.values()) if rules and rules.tag_keys else []
    return handle_report(conn, d.raw, to, secrets, local)


def _looks_like_report(d: Delivery) -> bool:
    """Cheap signs of a delivery report (``parse_bounce`` then decides): a null return
    path, a multipart/report, a mailer daemon as sender."""
    if d.envelope.mail_from.strip("<> ") == "":
        return True
    content_type = next((v for k, v in d.parsed.headers if k.lower() == "content-type"), "")
    sender = d.parsed.from_.addr if d.parsed.from_ else ""
    return "multipart/report" in content_type.lower() or is_daemon_address(sender)


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def _outcome(kind: str, ref: Any, known: dict[str, Any], pks: list[int]) -> Receipt | Rejected:
    if kind == "known":
        return Receipt(known[ref][1], True, bool(known[ref][2]))
    if kind == "rejected":
        return ref
    return Receipt(pks[ref], kind == "again", False)


def _count_hits(conn: Connection, rules_hit: list[str], when: Any) -> None:
    """Add this group's matches to each rule's hit count (``postdesk rules stats``)."""
    hits: dict[str, int] = {}
    for name in rules_hit:
        hits[name] = hits.get(name, 0) + 1
    if hits:
        execute_many(conn, _count_statement(conn.dialect.name),
                     [{"rule": r, "hits": n, "last_matched_at": when}
                      for r, n in sorted(hits.items())])


@functools.cache
def _count_statement(dialect_name: str) -> Any:
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    stmt = dialect.insert(RuleStat.__table__)
    return stmt.on_conflict_do_update(
        index_elements=["rule"],
        set_={"hits": RuleStat.__table__.c.hits + stmt.excluded.hits,
              "last_matched_at": stmt.excluded.last_matched_at})


def store_raw(conn: Connection, raw: bytes, envelope: Envelope, error: str,
              parsed: ParsedMessage | None) -> Receipt:
    """Keep the bytes of a message the pipeline could not handle, flagged with the error."""
    key = dedupe_key(parsed.message_id, parsed.body_hash) if parsed else raw_key(raw)
    found = select_rows(conn, _FIND_KEYS, {"keys": [key]}, ["keys"])
    if found:
        _record_accounts(conn, [(found[0][1], envelope)])
        return Receipt(found[0][1], duplicate=True, needs_attention=bool(found[0][2]))
    values = _envelope_columns(raw, envelope, key) | _UNPARSED | {
        "message_id_header": parsed.message_id if parsed else f"<{key[:32]}@postdesk.invalid>",
        "subject": _text(parsed.subject) if parsed else "",
        "date": envelope.received_at,
        "needs_attention": True,
        "error": error,
    }
    [pk] = insert_returning_ids(conn, _MESSAGES, [values])
    _record_accounts(conn, [(pk, envelope)])
    _history(conn, [(pk, None, envelope, "received", {"needs_attention": True})])
    return Receipt(pk, duplicate=False, needs_attention=True)


def reprocess(conn: Connection, message_pk: int) -> Receipt:
    """Run the pipeline again over a stored message's raw bytes (after a fix)."""
    row = conn.execute(_GET_MESSAGE, {"pk": message_pk}).one_or_none()
    if row is None:
        raise LookupError(f"no message {message_pk}")
    parsed = parse_message(row.raw, row.received_at)
    values = message_columns(parsed) | {"needs_attention": False, "error": None}
    if row.thread_id is None:
        threads = ThreadBatch.load(conn, [parsed])
        slot, values["thread_reason"] = threads.resolve(parsed, row.received_at)
        values["thread_id"] = threads.flush()[slot]
    key = dedupe_key(parsed.message_id, parsed.body_hash)
    if not select_rows(conn, _FIND_KEYS, {"keys": [key]}, ["keys"]):
        values["dedupe_key"] = key  # so a later redelivery is recognised
    conn.execute(_UPDATE_MESSAGE, {"pk": message_pk, **values})
    if conn.execute(select(Attachment.id).where(Attachment.message_id == message_pk)).first() \
            is None:
        _store_attachments(conn, [(message_pk, parsed)])
    envelope = Envelope(row.envelope_from, [(row.account_id, "")])
    _history(conn, [(message_pk, values.get("thread_id", row.thread_id), envelope,
                     "reprocessed", {"thread_reason": values.get("thread_reason")})])
    return Receipt(message_pk, duplicate=False, needs_attention=False)


def _text(value: str) -> str:
    """Text columns can't hold NUL on PostgreSQL; mail sometimes has one (raw keeps it)."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def message_columns(parsed: ParsedMessage) -> dict[str, Any]:
    """The parsed facts kept as columns for queries."""
    return {
        "message_id_header": _text(parsed.message_id),
        "subject": _text(parsed.subject),
        "from_addr": _text(parsed.from_.addr) if parsed.from_ else "",
        "from_name": _text(parsed.from_.name) if parsed.from_ else "",
        "to_addrs": [a.addr for a in parsed.to],
        "cc_addrs": [a.addr for a in parsed.cc],
        "in_reply_to": parsed.in_reply_to,
        "date": parsed.date,
        "charset": parsed.charset,
        "body_text": _text(parsed.text),
        "body_html": _text(parsed.html) if parsed.html is not None else None,
        "defects": parsed.defects[:20],
    }


# what a message the pipeline failed on has in its parsed columns until it is reprocessed
_UNPARSED: dict[str, Any] = {
    "from_addr": "", "from_name": "", "to_addrs": [], "cc_addrs": [], "in_reply_to": None,
    "charset": None, "body_text": "", "body_html": None, "defects": [], "thread_id": None,
    "thread_reason": None, "rule_version": None, "decision": None, "route_group": None,
    "route_agent": None,
}


def _envelope_columns(raw: bytes, envelope: Envelope, key: str) -> dict[str, Any]:
    return {
        "dedupe_key": key,
        "account_id": envelope.recipients[0][0],
        "state": "queued",
        "received_at": envelope.received_at,
        "size": len(raw),
        "envelope_from": envelope.mail_from,
        "received_header": envelope.received_header,
        "raw": raw,
        "needs_attention": False,
        "error": None,
        "direction": "inbound",
        "classification": None,
        "rule_version": None,
        "decision": None,
        "route_group": None,
        "route_agent": None,
        "tag_reference": None,
        "assigned_user_id": None,
        "group_id": None,
        "deleted_at": None,
    }


def _record_accounts(conn: Connection, items: list[tuple[int, Envelope]]) -> None:
    rows = {(pk, acc): rcpt for pk, env in items for acc, rcpt in env.recipients}
    insert_many(conn, MessageAccount.__table__, [
        {"message_id": pk, "account_id": acc, "recipient": rcpt}
        for (pk, acc), rcpt in rows.items()], ignore=True)


def _store_attachments(conn: Connection, items: list[tuple[int, ParsedMessage]]) -> None:
    blobs, rows = {}, []
    for pk, parsed in items:
        for att in parsed.attachments:
            digest = hashlib.sha256(att.data).hexdigest()
            blobs[digest] = {"sha256": digest, "size": len(att.data), "data": att.data}
            rows.append({"message_id": pk, "blob_sha256": digest, "filename": att.filename,
                         "content_type": att.content_type, "disposition": att.disposition,
                         "content_id": att.content_id, "size": len(att.data)})
    insert_many(conn, Blob.__table__, list(blobs.values()), ignore=True)
    insert_many(conn, Attachment.__table__, rows)


def _history(conn: Connection,
             items: list[tuple[int, int | None, Envelope, str, dict[str, Any]]]) -> None:
    rows = [{"message_id": pk, "thread_id": thread_id, "account_id": env.recipients[0][0],
             "action": action, "resource": DEFAULT_RESOURCE, "reason_code": reason_for(action),
             "detail": {**detail, "protocol": env.protocol}, "created_at": env.received_at}
            for pk, thread_id, env, action, detail in items]
    insert_many(conn, History.__table__, rows)
