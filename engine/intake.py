"""The intake pipeline: raw bytes + envelope in, a durably stored message out.

``Intake.receive`` is the one call every entry point uses (SMTP, LMTP, later IMAP and
import). Deliveries queue up on the caller's loop; one ``Writer`` parses and commits them in
groups (group commit), and each caller's future resolves only after the transaction holding
its message has committed, so the gateway's 250 always means "on disk".

The writer runs in a thread, or with ``isolate=True`` (the gateway) in a child process of
its own: parsing and storing then use a second core instead of fighting the event loop for
the GIL (measured: the loop spent a large share of its time re-acquiring the GIL after socket
writes while the writer thread ran).

If a step after receiving fails (a bug, an odd message), the raw bytes are still committed,
marked ``needs_attention`` with the error, so nothing is dropped and nothing behind it is
blocked; ``reprocess`` replays such a message later. Only a store failure (the database is
unreachable, the disk is full) propagates, as ``StoreUnavailable``, so the MTA retries.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import traceback
from concurrent.futures import BrokenExecutor, Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import InterfaceError, OperationalError

from engine.decisions import RuleFiles, RulesContext
from engine.deliveries import Delivery, Envelope, Receipt, Rejected, store_batch, store_raw
from engine.mime import ParsedMessage, parse_message
from engine.processes import die_with_parent
from engine.store.database import checkpoint_in_background, make_engine, writer

log = logging.getLogger(__name__)
# The database itself failed (unreachable, locked past the busy timeout, disk full): the
# sender must retry. Other errors, DataError and IntegrityError included, are about one
# message and are isolated instead.
UNAVAILABLE = (OperationalError, InterfaceError)
# Groups handed to the writer at once: one being committed, one waiting (measured: with one,
# the writer sat idle while each group's results travelled back to the loop).
IN_FLIGHT = 2


class StoreUnavailable(Exception):
    """The message could not be committed; the sender must try again later (4xx)."""


Outcome = Receipt | Rejected | Exception


@dataclass
class _Job:
    raw: bytes
    envelope: Envelope
    parsed: ParsedMessage | None
    parse_error: str | None


class Writer:
    """Parses and commits groups of deliveries over its own engine (thread or process)."""

    def __init__(self, url: str, busy_timeout_ms: int = 10_000,
                 rules: RuleFiles | None = None):
        self.rules = rules
        if rules is not None:
            rules.context()  # load now, not with the first message
        # No ping before each group: it is a round trip per commit on PostgreSQL (a sixth of
        # the writer's time). A connection a database restart killed fails its group (451,
        # senders retry) and is thrown away; the next group connects anew.
        engine = make_engine(url, busy_timeout_ms=busy_timeout_ms, pool_size=1, pre_ping=False)
        self._checkpoints = (checkpoint_in_background(engine)
                             if engine.dialect.name == "sqlite" else None)
        self.engine = writer(engine)

    def close(self) -> None:
        if self._checkpoints is not None:
            self._checkpoints.set()
        self.engine.dispose()

    def commit(self, items: list[tuple[bytes, Envelope]]) -> list[Outcome]:
        """Commit all in one transaction; after a pipeline fault, each on its own."""
        jobs = [_make_job(raw, envelope) for raw, envelope in items]
        rules = self.rules.context() if self.rules is not None else None
        try:
            with self.engine.begin() as conn:
                return _store_all(conn, jobs, rules)
        except UNAVAILABLE as exc:  # every sender retries
            log.error("store unavailable: %s", exc.orig)
            return [StoreUnavailable(str(exc.orig))] * len(jobs)
        except Exception:  # noqa: BLE001 — a pipeline fault: isolate the message(s) causing it
            log.warning("group of %d failed in the pipeline; storing one by one", len(jobs))
        outcomes: list[Outcome] = []
        for job in jobs:
            if outcomes and isinstance(outcomes[-1], StoreUnavailable):
                outcomes.append(outcomes[-1])  # don't wait out a dead database per message
            else:
                outcomes.append(self._commit_one(job, rules))
        return outcomes

    def status(self) -> dict[str, Any]:
        """Rule set version and reload error, for /healthz."""
        if self.rules is None:
            return {"rules_version": None, "rules_error": None}
        context = self.rules.context()
        return {"rules_version": context.ruleset.version, "rules_error": self.rules.error,
                **context.counters}

    def _commit_one(self, job: _Job, rules: RulesContext | None) -> Outcome:
        try:
            with self.engine.begin() as conn:
                return _store_guarded(conn, job, rules)
        except Exception as exc:  # noqa: BLE001 — not even the raw bytes went in: retry later
            log.error("store unavailable: %s", exc)
            return StoreUnavailable(str(exc))


# The writer of an isolated intake lives in its own process, one per Intake.
_child_writer: Writer | None = None


def _start_child(parent: int, url: str, busy_timeout_ms: int, rules: RuleFiles | None) -> None:
    global _child_writer
    die_with_parent(parent)  # a killed gateway must not leave its writer behind
    # Ctrl-C reaches the whole process group: the parent decides when the writer stops
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _child_writer = Writer(url, busy_timeout_ms, rules)


def _child_commit(items: list[tuple[bytes, Envelope]]) -> list[Outcome]:
    assert _child_writer is not None
    return _child_writer.commit(items)


def _child_status() -> dict[str, Any]:
    assert _child_writer is not None
    return _child_writer.status()


def _child_ready() -> bool:
    return _child_writer is not None


class Intake:
    """Queue deliveries and have the writer commit them in groups; see the module docstring."""

    def __init__(self, url: str, *, busy_timeout_ms: int = 10_000, max_batch: int = 64,
                 isolate: bool = False, rules: RuleFiles | None = None):
        self.url = url
        self.rules = rules
        self.busy_timeout_ms = busy_timeout_ms
        self.max_batch = max_batch
        self.isolate = isolate
        self._executor: Executor | None = None
        self._writer: Writer | None = None  # in-thread writer only
        self._commit = None
        self._queue: asyncio.Queue[tuple[tuple[bytes, Envelope], asyncio.Future[Receipt]]] = (
            asyncio.Queue())
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        await self._open_writer()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _open_writer(self) -> None:
        loop = asyncio.get_running_loop()
        if self.isolate:
            self._executor = ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn"), initializer=_start_child,
                initargs=(os.getpid(), self.url, self.busy_timeout_ms, self.rules))
            self._commit = _child_commit
            await loop.run_in_executor(self._executor, _child_ready)  # spawn and import now
        else:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="intake")
            self._writer = Writer(self.url, self.busy_timeout_ms, self.rules)
            self._commit = self._writer.commit

    async def stop(self) -> None:
        """Commit everything already handed in, then stop the writer."""
        self._closed = True
        await self._queue.join()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if self._writer is not None:
            self._writer.close()

    async def status(self) -> dict[str, Any]:
        """The writer's rule set version and last reload error."""
        if self._writer is not None:
            return self._writer.status()
        return await asyncio.get_running_loop().run_in_executor(self._executor, _child_status)

    async def receive(self, raw: bytes, envelope: Envelope) -> Receipt | Rejected:
        """Store one delivery; returns after commit, raises StoreUnavailable otherwise."""
        if self._task is None:
            raise RuntimeError("Intake.start() was not awaited")
        if self._closed:
            raise StoreUnavailable("shutting down")
        future: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(((raw, envelope), future))
        return await future

    async def _run(self) -> None:
        """Take what has queued up as one group and hand it to the writer; keep up to
        ``IN_FLIGHT`` groups queued there so it never idles while results travel back."""
        slots = asyncio.Semaphore(IN_FLIGHT)
        pending: set[asyncio.Task[None]] = set()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await slots.acquire()
            task = asyncio.get_running_loop().create_task(self._commit_group(batch))
            pending.add(task)
            task.add_done_callback(lambda t: (pending.discard(t), slots.release()))

    async def _commit_group(self, batch: list[tuple[tuple[bytes, Envelope],
                                                    asyncio.Future[Receipt]]]) -> None:
        loop = asyncio.get_running_loop()
        executor = self._executor
        try:
            outcomes = await loop.run_in_executor(executor, self._commit,
                                                  [item for item, _ in batch])
        except BrokenExecutor as exc:  # the writer process died: answer 451, start anew
            log.error("intake writer died (%s); restarting it", exc)
            outcomes = [StoreUnavailable("writer restarted")] * len(batch)
            if self._executor is executor:
                await self._open_writer()
        except Exception as exc:  # noqa: BLE001 — must never kill the intake
            log.exception("intake writer failed")
            outcomes = [StoreUnavailable(str(exc))] * len(batch)
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
            self._queue.task_done()


def _make_job(raw: bytes, envelope: Envelope) -> _Job:
    try:
        return _Job(raw, envelope, parse_message(raw, envelope.received_at), None)
    except Exception:  # noqa: BLE001 — the parser promises not to raise; belt and braces
        return _Job(raw, envelope, None, traceback.format_exc(limit=5))


def _store_all(conn: Connection, jobs: list[_Job],
               rules: RulesContext | None) -> list[Receipt | Rejected]:
    """The fast path: parsed jobs in one batch, unparseable ones raw."""
    parsed = [(i, Delivery(j.raw, j.envelope, j.parsed)) for i, j in enumerate(jobs)
              if j.parsed is not None]
    receipts: dict[int, Receipt | Rejected] = dict(zip(
        [i for i, _ in parsed], store_batch(conn, [d for _, d in parsed], rules), strict=True))
    for i, job in enumerate(jobs):
        if i not in receipts:
            receipts[i] = store_raw(conn, job.raw, job.envelope, job.parse_error or "", None)
    return [receipts[i] for i in range(len(jobs))]


def _store_guarded(conn: Connection, job: _Job,
                   rules: RulesContext | None) -> Receipt | Rejected:
    """Store one job; if the pipeline fails on it, keep its bytes marked for attention."""
    if job.parsed is not None:
        try:
            with conn.begin_nested():
                delivery = Delivery(job.raw, job.envelope, job.parsed)
                return store_batch(conn, [delivery], rules)[0]
        except UNAVAILABLE:
            raise
        except Exception:  # noqa: BLE001 — the fault is recorded on the message
            error = traceback.format_exc(limit=5)
            log.error("pipeline failed, storing raw for attention: %s", error.splitlines()[-1])
    else:
        error = job.parse_error or "parse failed"
    return store_raw(conn, job.raw, job.envelope, error, job.parsed)
