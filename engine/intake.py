"""The intake pipeline: raw bytes + envelope in, a durably stored message out.

``Intake.receive`` is the one call every entry point uses (SMTP, LMTP, later IMAP and
import). It parses on the caller's loop, then hands the message to a single writer thread
that commits messages in groups (group commit): each caller's future resolves only after the
transaction holding its message has committed, so the gateway's 250 always means "on disk".

If a step after parsing fails (a bug, an odd message), the raw bytes are still committed,
marked ``needs_attention`` with the error, so nothing is dropped and nothing behind it is
blocked; ``reprocess`` replays such a message later. Only a store failure (the database is
unreachable, the disk is full) propagates, as ``StoreUnavailable``, so the MTA retries.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, bindparam, insert, select, update

from engine.mime import ParsedMessage, parse_message
from engine.store.models import (
    Attachment,
    Blob,
    History,
    Message,
    MessageAccount,
    MessageState,
)
from engine.store.sql import insert_ignore
from engine.threads import create_thread, join_thread, resolve_thread

log = logging.getLogger(__name__)

# Hot-path statements are built once: SQLAlchemy spends more time building and cache-keying
# a statement than SQLite spends running it.
_MESSAGES = Message.__table__
_FIND_KEY = select(_MESSAGES.c.id, _MESSAGES.c.needs_attention).where(
    _MESSAGES.c.dedupe_key == bindparam("key"))
_INSERT_MESSAGE = _MESSAGES.insert()
_INSERT_HISTORY = History.__table__.insert()
_INSERT_ATTACHMENT = Attachment.__table__.insert()


class StoreUnavailable(Exception):
    """The message could not be committed; the sender must try again later (4xx)."""


@dataclass(frozen=True)
class Envelope:
    """What the transport knows about a delivery besides the bytes."""

    mail_from: str
    recipients: list[tuple[int, str]]  # (account id, envelope recipient) — at least one
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    received_header: str = ""  # our trace line, kept beside the byte-exact raw message
    protocol: str = "SMTP"


@dataclass(frozen=True)
class Receipt:
    """The outcome the gateway reports back: the queue id for the 250 reply."""

    message_pk: int
    duplicate: bool
    needs_attention: bool

    @property
    def queue_id(self) -> str:
        return f"{self.message_pk}"


@dataclass
class _Job:
    raw: bytes
    envelope: Envelope
    parsed: ParsedMessage | None
    parse_error: str | None


def dedupe_key(message_id: str, body_hash: str) -> str:
    """Same Message-ID and same body → same key: a redelivery, not a new message."""
    return hashlib.sha256(f"{message_id}\0{body_hash}".encode()).hexdigest()


def _raw_key(raw: bytes) -> str:
    return hashlib.sha256(b"raw\0" + raw).hexdigest()


class Intake:
    """Parse, thread and store inbound mail with group commit; see the module docstring."""

    def __init__(self, engine: Engine, *, max_batch: int = 64):
        self.engine = engine
        self.max_batch = max_batch
        self._queue: asyncio.Queue[tuple[_Job, asyncio.Future[Receipt]]] | None = None
        self._task: asyncio.Task[None] | None = None
        # one writer thread: SQLite has one writer anyway, and it keeps commits ordered
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="intake")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._writer())

    async def stop(self) -> None:
        """Commit everything already handed in, then stop the writer."""
        if self._queue is not None:
            await self._queue.join()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def receive(self, raw: bytes, envelope: Envelope) -> Receipt:
        """Store one delivery; returns after commit, raises StoreUnavailable otherwise."""
        if self._queue is None:
            raise RuntimeError("Intake.start() was not awaited")
        job = _make_job(raw, envelope)
        future: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((job, future))
        return await future

    async def _writer(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            jobs = [job for job, _ in batch]
            try:
                outcomes = await loop.run_in_executor(self._executor, self._commit_batch, jobs)
            except Exception as exc:  # noqa: BLE001 — must never kill the writer
                log.exception("intake writer failed")
                outcomes = [StoreUnavailable(str(exc))] * len(batch)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if not future.done():
                    if isinstance(outcome, Exception):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
                self._queue.task_done()

    def _commit_batch(self, jobs: list[_Job]) -> list[Receipt | Exception]:
        """Commit all jobs in one transaction; if that fails, each in its own."""
        try:
            with self.engine.begin() as conn:
                return [_store_guarded(conn, job) for job in jobs]
        except Exception as exc:  # noqa: BLE001
            if len(jobs) == 1:
                log.error("store failed: %s", exc)
                return [StoreUnavailable(str(exc))]
            log.warning("group commit of %d failed (%s); committing one by one", len(jobs), exc)
            return [self._commit_batch([job])[0] for job in jobs]


def _make_job(raw: bytes, envelope: Envelope) -> _Job:
    try:
        return _Job(raw, envelope, parse_message(raw, envelope.received_at), None)
    except Exception:  # noqa: BLE001 — the parser promises not to raise; belt and braces
        return _Job(raw, envelope, None, traceback.format_exc(limit=5))


def _store_guarded(conn: Connection, job: _Job) -> Receipt:
    """Store the parsed message; on any pipeline fault store it raw, marked for attention."""
    if job.parsed is not None:
        try:
            with conn.begin_nested():
                return store_message(conn, job.raw, job.envelope, job.parsed)
        except Exception:  # noqa: BLE001 — the fault is recorded on the message
            error = traceback.format_exc(limit=5)
            log.error("pipeline failed, storing raw for attention: %s", error.splitlines()[-1])
    else:
        error = job.parse_error or "parse failed"
    with conn.begin_nested():
        return store_raw(conn, job.raw, job.envelope, error, job.parsed)


def _existing(conn: Connection, key: str, envelope: Envelope) -> Receipt | None:
    row = conn.execute(_FIND_KEY, {"key": key}).first()
    if row is None:
        return None
    # a second delivery to another support address: record the account, keep one message
    _record_accounts(conn, row.id, envelope)
    return Receipt(row.id, duplicate=True, needs_attention=row.needs_attention)


def _record_accounts(conn: Connection, message_pk: int, envelope: Envelope) -> None:
    rows = [{"message_id": message_pk, "account_id": acc, "recipient": rcpt}
            for acc, rcpt in envelope.recipients]
    insert_ignore(conn, MessageAccount.__table__, rows)


def store_message(conn: Connection, raw: bytes, envelope: Envelope, parsed: ParsedMessage) -> Receipt:
    """Thread and insert a parsed message (or recognise a redelivery of one)."""
    key = dedupe_key(parsed.message_id, parsed.body_hash)
    known = _existing(conn, key, envelope)
    if known is not None:
        return known
    thread_id, reason = _thread(conn, parsed, envelope.received_at)
    values = _parsed_columns(parsed) | _envelope_columns(raw, envelope, key)
    values |= {"thread_id": thread_id, "thread_reason": reason}
    message_pk = conn.execute(_INSERT_MESSAGE, values).inserted_primary_key[0]
    _record_accounts(conn, message_pk, envelope)
    _store_attachments(conn, message_pk, parsed)
    _history(conn, message_pk, thread_id, envelope, "received", {"thread_reason": reason})
    return Receipt(message_pk, duplicate=False, needs_attention=False)


def store_raw(
    conn: Connection, raw: bytes, envelope: Envelope, error: str, parsed: ParsedMessage | None
) -> Receipt:
    """Keep the bytes of a message the pipeline could not handle, flagged with the error."""
    key = dedupe_key(parsed.message_id, parsed.body_hash) if parsed else _raw_key(raw)
    known = _existing(conn, key, envelope)
    if known is not None:
        return known
    values = _envelope_columns(raw, envelope, key) | {
        "message_id_header": parsed.message_id if parsed else f"<{key[:32]}@postdesk.invalid>",
        "subject": parsed.subject if parsed else "",
        "date": envelope.received_at,
        "needs_attention": True,
        "error": error,
    }
    message_pk = conn.execute(_INSERT_MESSAGE, values).inserted_primary_key[0]
    _record_accounts(conn, message_pk, envelope)
    _history(conn, message_pk, None, envelope, "received", {"needs_attention": True})
    return Receipt(message_pk, duplicate=False, needs_attention=True)


def _thread(conn: Connection, parsed: ParsedMessage, now: datetime) -> tuple[int, str]:
    """The message's thread (joined or new) and the signal that chose it."""
    thread_id, reason = resolve_thread(conn, parsed)
    if thread_id is None:
        thread_id = create_thread(conn, parsed, now)
    join_thread(conn, thread_id, parsed)
    return thread_id, reason


def _parsed_columns(parsed: ParsedMessage) -> dict[str, object]:
    return {
        "message_id_header": parsed.message_id,
        "subject": parsed.subject,
        "from_addr": parsed.from_.addr if parsed.from_ else "",
        "from_name": parsed.from_.name if parsed.from_ else "",
        "to_addrs": [a.addr for a in parsed.to],
        "cc_addrs": [a.addr for a in parsed.cc],
        "in_reply_to": parsed.in_reply_to,
        "date": parsed.date,
        "charset": parsed.charset,
        "body_text": parsed.text,
        "body_html": parsed.html,
        "defects": parsed.defects[:20],
    }


def _envelope_columns(raw: bytes, envelope: Envelope, key: str) -> dict[str, object]:
    return {
        "dedupe_key": key,
        "account_id": envelope.recipients[0][0],
        "state": MessageState.QUEUED.value,
        "received_at": envelope.received_at,
        "size": len(raw),
        "envelope_from": envelope.mail_from,
        "received_header": envelope.received_header,
        "raw": raw,
    }


def _store_attachments(conn: Connection, message_pk: int, parsed: ParsedMessage) -> None:
    if not parsed.attachments:
        return
    blobs, rows = {}, []
    for att in parsed.attachments:
        digest = hashlib.sha256(att.data).hexdigest()
        blobs[digest] = {"sha256": digest, "size": len(att.data), "data": att.data}
        rows.append({
            "message_id": message_pk, "blob_sha256": digest, "filename": att.filename,
            "content_type": att.content_type, "disposition": att.disposition,
            "content_id": att.content_id, "size": len(att.data),
        })
    insert_ignore(conn, Blob.__table__, list(blobs.values()))
    conn.execute(_INSERT_ATTACHMENT, rows)


def _history(
    conn: Connection, message_pk: int, thread_id: int | None, envelope: Envelope,
    action: str, detail: dict[str, object],
) -> None:
    conn.execute(_INSERT_HISTORY, {
        "message_id": message_pk, "thread_id": thread_id,
        "account_id": envelope.recipients[0][0], "action": action, "resource": "system",
        "reason_code": None, "detail": {**detail, "protocol": envelope.protocol},
        "created_at": envelope.received_at,
    })


def reprocess(conn: Connection, message_pk: int) -> Receipt:
    """Run the pipeline again over a stored message's raw bytes (after a fix)."""
    row = conn.execute(select(Message).where(Message.id == message_pk)).one_or_none()
    if row is None:
        raise LookupError(f"no message {message_pk}")
    parsed = parse_message(row.raw, row.received_at)
    thread_id, reason = row.thread_id, row.thread_reason or "kept"
    if thread_id is None:
        thread_id, reason = _thread(conn, parsed, row.received_at)
    values = _parsed_columns(parsed) | {"thread_id": thread_id, "thread_reason": reason}
    key = dedupe_key(parsed.message_id, parsed.body_hash)
    if not conn.execute(select(Message.id).where(Message.dedupe_key == key)).first():
        values["dedupe_key"] = key  # so a later redelivery is recognised
    conn.execute(update(Message).where(Message.id == message_pk).values(
        **values, needs_attention=False, error=None,
    ))
    if not conn.execute(select(Attachment.id).where(Attachment.message_id == message_pk)).first():
        _store_attachments(conn, message_pk, parsed)
    conn.execute(insert(History).values(
        message_id=message_pk, thread_id=thread_id, account_id=row.account_id,
        action="reprocessed", resource="system", detail={"thread_reason": reason},
    ))
    return Receipt(message_pk, duplicate=False, needs_attention=False)
