"""Threads: which conversation an inbound message belongs to, and why (pipeline step 3).

Signals, strongest first: In-Reply-To, then the References chain (newest first), then a
subject fallback limited to replies ("Re:", "AW:", "SV:", "Fwd:" ...) from someone who already
took part in the thread (From/To/Cc/Reply-To) within a recent window. Each message records
the signal that matched (``thread_reason``) so the console can show it and split a wrong join.
The ids a message cites are remembered too, so two replies to a mail we never received still
meet in one thread.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from sqlalchemy import Connection, bindparam, case, select

from engine.mime import ParsedMessage
from engine.store.models import Thread, ThreadParticipant, ThreadRef
from engine.store.sql import insert_ignore

SUBJECT_WINDOW = timedelta(days=30)
MAX_REF_LENGTH = 998
# Reply/forward prefixes in the languages our users' customers write in, with counters
# such as "Re[2]:" or "Re(3):" that some clients add.
_PREFIX = re.compile(
    r"^\s*(?:(?:re|aw|sv|vs|antw|antwort|ref|réf|rif|odp|fw|fwd|wg|tr|rv|enc|doorst)"
    r"(?:\[\d+\]|\(\d+\))?\s*[:：]\s*|\[[^\]]{1,40}\]\s*)",
    re.IGNORECASE,
)
_SPACE = re.compile(r"\s+")

# Statements are built once: building them per message costs more than running them.
_THREADS, _REFS = Thread.__table__, ThreadRef.__table__
_FIND_REFS = select(_REFS.c.ref, _REFS.c.thread_id).where(
    _REFS.c.ref.in_(bindparam("refs", expanding=True)))
_FIND_BY_SUBJECT = (
    select(_THREADS.c.id)
    .join(ThreadParticipant, ThreadParticipant.thread_id == _THREADS.c.id)
    .where(_THREADS.c.subject_key == bindparam("key"),
           _THREADS.c.last_message_at >= bindparam("since", type_=Thread.last_message_at.type))
    .where(ThreadParticipant.address == bindparam("sender"))
    .order_by(_THREADS.c.last_message_at.desc())
    .limit(1)
)
_INSERT_THREAD = _THREADS.insert()
_BUMP_THREAD = _THREADS.update().where(_THREADS.c.id == bindparam("tid")).values(
    message_count=_THREADS.c.message_count + 1,
    last_message_at=case(
        (_THREADS.c.last_message_at < bindparam("at", type_=Thread.last_message_at.type),
         bindparam("at", type_=Thread.last_message_at.type)),
        else_=_THREADS.c.last_message_at,
    ),
)

REASON_IN_REPLY_TO = "in-reply-to"
REASON_REFERENCES = "references"
REASON_SUBJECT = "subject"
REASON_NEW = "new"


def normalize_subject(subject: str) -> tuple[str, bool]:
    """Strip reply/forward prefixes and list tags; returns (key, had_reply_prefix)."""
    text, had_prefix = subject, False
    while True:
        match = _PREFIX.match(text)
        if not match:
            break
        had_prefix = had_prefix or not match.group(0).lstrip().startswith("[")
        text = text[match.end():]
    return _SPACE.sub(" ", text).strip().lower()[:255], had_prefix


def cited_ids(parsed: ParsedMessage) -> list[str]:
    """Message-IDs a message points at, strongest first: In-Reply-To, then References newest first."""
    ids = [parsed.in_reply_to] if parsed.in_reply_to else []
    ids += [r for r in reversed(parsed.references) if r not in ids]
    return [i[:MAX_REF_LENGTH] for i in ids]


def resolve_thread(conn: Connection, parsed: ParsedMessage) -> tuple[int | None, str]:
    """Find the existing thread for ``parsed``; (None, "new") when it starts one."""
    cited = cited_ids(parsed)
    if cited:
        found = dict(conn.execute(_FIND_REFS, {"refs": cited}).all())
        for ref in cited:
            if ref in found:
                reason = REASON_IN_REPLY_TO if ref == parsed.in_reply_to else REASON_REFERENCES
                return found[ref], reason
    return _by_subject(conn, parsed)


def _by_subject(conn: Connection, parsed: ParsedMessage) -> tuple[int | None, str]:
    key, is_reply = normalize_subject(parsed.subject)
    sender = parsed.from_.addr if parsed.from_ else ""
    if not (key and is_reply and sender):
        return None, REASON_NEW
    params = {"key": key, "since": parsed.date - SUBJECT_WINDOW, "sender": sender}
    thread_id = conn.execute(_FIND_BY_SUBJECT, params).scalar()
    return (thread_id, REASON_SUBJECT) if thread_id else (None, REASON_NEW)


def create_thread(conn: Connection, parsed: ParsedMessage, now: datetime) -> int:
    key, _ = normalize_subject(parsed.subject)
    result = conn.execute(_INSERT_THREAD, {
        "subject": parsed.subject, "subject_key": key, "created_at": now,
        "last_message_at": parsed.date, "message_count": 0,
    })
    return result.inserted_primary_key[0]


def join_thread(conn: Connection, thread_id: int, parsed: ParsedMessage) -> None:
    """Record the message's ids and people on its thread and bump the thread's activity."""
    refs = [parsed.message_id[:MAX_REF_LENGTH], *cited_ids(parsed)]
    insert_ignore(conn, ThreadRef.__table__, [{"ref": r, "thread_id": thread_id} for r in refs])
    people = [{"thread_id": thread_id, "address": a[:320]} for a in sorted(parsed.participants)]
    insert_ignore(conn, ThreadParticipant.__table__, people)
    conn.execute(_BUMP_THREAD, {"tid": thread_id, "at": parsed.date})
