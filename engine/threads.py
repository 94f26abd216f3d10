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
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection, bindparam, case, select

from engine.mime import ParsedMessage
from engine.store.models import Thread, ThreadParticipant, ThreadRef
from engine.store.prepared import execute_many, insert_many, insert_returning_ids, select_rows
from engine.tags import strip_markers

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
_THREAD_EXISTS = select(_THREADS.c.id).where(_THREADS.c.id == bindparam("tid"))
_BUMP_THREAD = _THREADS.update().where(_THREADS.c.id == bindparam("tid")).values(
    message_count=_THREADS.c.message_count + 1,
    last_message_at=case(
        (_THREADS.c.last_message_at < bindparam("at", type_=Thread.last_message_at.type),
         bindparam("at", type_=Thread.last_message_at.type)),
        else_=_THREADS.c.last_message_at,
    ),
)

REASON_TAG = "tag"
REASON_IN_REPLY_TO = "in-reply-to"
REASON_REFERENCES = "references"
REASON_SUBJECT = "subject"
REASON_NEW = "new"


def normalize_subject(subject: str) -> tuple[str, bool]:
    """Strip reply/forward prefixes, list tags and our reference tags;
    returns (key, had_reply_prefix)."""
    text, had_prefix = strip_markers(subject), False
    while True:
        match = _PREFIX.match(text)
        if not match:
            break
        had_prefix = had_prefix or not match.group(0).lstrip().startswith("[")
        text = text[match.end():]
    return _SPACE.sub(" ", text).strip().lower()[:255], had_prefix


def cited_ids(parsed: ParsedMessage) -> list[str]:
    """Message-IDs a message cites, strongest first: In-Reply-To, then References newest first."""
    ids = [parsed.in_reply_to] if parsed.in_reply_to else []
    ids += [r for r in reversed(parsed.references) if r not in ids]
    return [i[:MAX_REF_LENGTH] for i in ids]


@dataclass
class _NewThread:
    subject: str
    key: str
    created_at: datetime
    last_at: datetime
    people: set[str] = field(default_factory=set)


@dataclass
class ThreadBatch:
    """Threads for a group of messages committed together, in a handful of statements.

    ``resolve`` is called once per message in delivery order and returns a slot: an existing
    thread id (int) or ``("new", n)``; a later message of the same batch can join a thread an
    earlier one started. ``flush`` writes new threads, refs, participants and counters, and
    returns the slot → thread id map.
    """

    conn: Connection
    refs: dict[str, int | tuple[str, int]] = field(default_factory=dict)
    added: dict[str, int | tuple[str, int]] = field(default_factory=dict)
    new: list[_NewThread] = field(default_factory=list)
    joined: list[tuple[int | tuple[str, int], ParsedMessage]] = field(default_factory=list)

    @classmethod
    def load(cls, conn: Connection, messages: list[ParsedMessage]) -> ThreadBatch:
        cited = {ref for parsed in messages for ref in cited_ids(parsed)}
        batch = cls(conn)
        if cited:
            rows = select_rows(conn, _FIND_REFS, {"refs": sorted(cited)}, expanding=["refs"])
            batch.refs.update(dict(rows))
        return batch

    def resolve(self, parsed: ParsedMessage, now: datetime,
                tag_thread: int | None = None) -> tuple[int | tuple[str, int], str]:
        """The message's thread slot and the signal that chose it; records the message."""
        slot, reason = self.find(parsed, tag_thread)
        if slot is None:
            key, _ = normalize_subject(parsed.subject)
            self.new.append(_NewThread(parsed.subject, key, now, parsed.date))
            slot, reason = ("new", len(self.new) - 1), REASON_NEW
        for ref in [parsed.message_id[:MAX_REF_LENGTH], *cited_ids(parsed)]:
            if ref not in self.refs:
                self.refs[ref] = self.added[ref] = slot
        if isinstance(slot, tuple):
            self.new[slot[1]].people |= parsed.participants
            self.new[slot[1]].last_at = max(self.new[slot[1]].last_at, parsed.date)
        self.joined.append((slot, parsed))
        return slot, reason

    def find(self, parsed: ParsedMessage,
             tag_thread: int | None = None) -> tuple[int | tuple[str, int] | None, str]:
        """The thread ``parsed`` would join (no side effects); None for a new one.

        A verified reference tag naming a thread is the strongest signal: the customer's
        client may have dropped In-Reply-To and References, but kept the subject.
        """
        if tag_thread is not None and self._exists(tag_thread):
            return tag_thread, REASON_TAG
        for ref in cited_ids(parsed):
            if ref in self.refs:
                reason = REASON_IN_REPLY_TO if ref == parsed.in_reply_to else REASON_REFERENCES
                return self.refs[ref], reason
        key, is_reply = normalize_subject(parsed.subject)
        sender = parsed.from_.addr if parsed.from_ else ""
        if not (key and is_reply and sender):
            return None, REASON_NEW
        since = parsed.date - SUBJECT_WINDOW
        for n in range(len(self.new) - 1, -1, -1):  # a thread started earlier in this batch
            thread = self.new[n]
            if thread.key == key and sender in thread.people and thread.last_at >= since:
                return ("new", n), REASON_SUBJECT
        params = {"key": key, "since": since, "sender": sender}
        rows = select_rows(self.conn, _FIND_BY_SUBJECT, params)
        return (rows[0][0], REASON_SUBJECT) if rows else (None, REASON_NEW)

    def _exists(self, thread_id: int) -> bool:
        return bool(select_rows(self.conn, _THREAD_EXISTS, {"tid": thread_id}))

    def flush(self) -> dict[int | tuple[str, int], int]:
        """Write everything resolved so far; returns slot → thread id."""
        ids: dict[int | tuple[str, int], int] = {}
        if self.new:
            rows = [{"subject": t.subject, "subject_key": t.key, "created_at": t.created_at,
                     "last_message_at": t.last_at, "message_count": 0, "flagged": False}
                    for t in self.new]
            new_ids = insert_returning_ids(self.conn, _THREADS, rows)
            ids.update({("new", n): tid for n, tid in enumerate(new_ids)})
        thread_of = lambda slot: ids.get(slot, slot)  # noqa: E731 — tiny local mapping
        refs = [{"ref": ref, "thread_id": thread_of(slot)} for ref, slot in self.added.items()]
        insert_many(self.conn, _REFS, refs, ignore=True)
        people = {(thread_of(slot), a[:320]) for slot, p in self.joined for a in p.participants}
        insert_many(self.conn, ThreadParticipant.__table__,
                    [{"thread_id": t, "address": a} for t, a in sorted(people)], ignore=True)
        execute_many(self.conn, _BUMP_THREAD, [{"tid": thread_of(slot), "at": p.date}
                                               for slot, p in self.joined])
        ids.update({slot: slot for slot, _ in self.joined if isinstance(slot, int)})
        return ids
