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
import logging
import traceback
from dataclasses import dataclass

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from engine.deliveries import Delivery, Envelope, Receipt, store_batch, store_raw
from engine.mime import ParsedMessage, parse_message
from engine.store.database import writer

log = logging.getLogger(__name__)
# The database itself failed (unreachable, locked past the busy timeout, disk full): the
# sender must retry. Other errors, DataError and IntegrityError included, are about one
# message and are isolated instead.
UNAVAILABLE = (OperationalError, InterfaceError)
# Parsing costs ~14 ms per MB: past this size it runs in a thread, off the event loop.
PARSE_INLINE_LIMIT = 256 * 1024


class StoreUnavailable(Exception):
    """The message could not be committed; the sender must try again later (4xx)."""


@dataclass
class _Job:
    raw: bytes
    envelope: Envelope
    parsed: ParsedMessage | None
    parse_error: str | None


class Intake:
    """Parse, thread and store inbound mail with group commit; see the module docstring."""

    def __init__(self, engine: Engine, *, max_batch: int = 64):
        self.engine = writer(engine)
        self.max_batch = max_batch
        self._queue: asyncio.Queue[tuple[_Job, asyncio.Future[Receipt]]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # one writer thread: SQLite has one writer anyway, and it keeps commits ordered
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="intake")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._writer())

    async def stop(self) -> None:
        """Commit everything already handed in, then stop the writer."""
        self._closed = True
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
        if self._closed:
            raise StoreUnavailable("shutting down")
        if len(raw) > PARSE_INLINE_LIMIT:  # a big mail must not stall every other session
            job = await asyncio.get_running_loop().run_in_executor(None, _make_job, raw, envelope)
        else:
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
        """Commit all jobs in one transaction; after a pipeline fault, each on its own."""
        try:
            with self.engine.begin() as conn:
                return _store_all(conn, jobs)
        except UNAVAILABLE as exc:  # every sender retries
            log.error("store unavailable: %s", exc.orig)
            return [StoreUnavailable(str(exc.orig))] * len(jobs)
        except Exception:  # noqa: BLE001 — a pipeline fault: isolate the message(s) causing it
            log.warning("group of %d failed in the pipeline; storing one by one", len(jobs))
        outcomes: list[Receipt | Exception] = []
        for job in jobs:
            if outcomes and isinstance(outcomes[-1], StoreUnavailable):
                outcomes.append(outcomes[-1])  # don't wait out a dead database per message
            else:
                outcomes.append(self._commit_one(job))
        return outcomes

    def _commit_one(self, job: _Job) -> Receipt | Exception:
        """One job in its own transaction; a pipeline fault stores it raw for attention."""
        try:
            with self.engine.begin() as conn:
                return _store_guarded(conn, job)
        except Exception as exc:  # noqa: BLE001 — not even the raw bytes went in: retry later
            log.error("store unavailable: %s", exc)
            return StoreUnavailable(str(exc))


def _make_job(raw: bytes, envelope: Envelope) -> _Job:
    try:
        return _Job(raw, envelope, parse_message(raw, envelope.received_at), None)
    except Exception:  # noqa: BLE001 — the parser promises not to raise; belt and braces
        return _Job(raw, envelope, None, traceback.format_exc(limit=5))


def _store_all(conn: Connection, jobs: list[_Job]) -> list[Receipt]:
    """The fast path: parsed jobs in one batch, unparseable ones raw."""
    parsed = [(i, Delivery(j.raw, j.envelope, j.parsed)) for i, j in enumerate(jobs)
              if j.parsed is not None]
    receipts: dict[int, Receipt] = dict(zip(
        [i for i, _ in parsed], store_batch(conn, [d for _, d in parsed]), strict=True))
    for i, job in enumerate(jobs):
        if i not in receipts:
            receipts[i] = store_raw(conn, job.raw, job.envelope, job.parse_error or "", None)
    return [receipts[i] for i in range(len(jobs))]


def _store_guarded(conn: Connection, job: _Job) -> Receipt:
    """Store one job; if the pipeline fails on it, keep its bytes marked for attention."""
    if job.parsed is not None:
        try:
            with conn.begin_nested():
                return store_batch(conn, [Delivery(job.raw, job.envelope, job.parsed)])[0]
        except UNAVAILABLE:
            raise
        except Exception:  # noqa: BLE001 — the fault is recorded on the message
            error = traceback.format_exc(limit=5)
            log.error("pipeline failed, storing raw for attention: %s", error.splitlines()[-1])
    else:
        error = job.parse_error or "parse failed"
    return store_raw(conn, job.raw, job.envelope, error, job.parsed)
