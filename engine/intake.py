"""The intake pipeline: raw bytes + envelope in, a durably stored message out.

``Intake.receive`` is the one call every entry point uses (SMTP, LMTP, IMAP, import).
Deliveries queue up on the caller's loop and go to the writer in groups as they come; the
writer (``engine.intakewriter``) parses each group at once (a writer process gets most mail
parsed by the gateway process already) and commits everything parsed by the time its
previous transaction is done in one transaction (group commit). Each
caller's future resolves only after the transaction holding its message has committed, so
the gateway's 250 always means "on disk".

The writer runs in threads of this process, or with ``isolate=True`` (the gateway) in a
child process of its own: parsing and storing then use a second core instead of fighting
the event loop for the GIL (measured: the loop spent a large share of its time
re-acquiring the GIL after socket writes while a writer thread ran).

If a step after receiving fails (a bug, an odd message), the raw bytes are still committed,
marked ``needs_attention`` with the error, so nothing is dropped and nothing behind it is
blocked; ``reprocess`` replays such a message later. Only a store failure (the database is
unreachable, the disk is full) propagates, as ``StoreUnavailable``, so the MTA retries.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

from engine.decisions import RuleFiles
from engine.deliveries import Envelope, Receipt, Rejected
from engine.intakewriter import ProcessWriter, StoreUnavailable, ThreadWriter

__all__ = ["Intake", "StoreUnavailable"]

log = logging.getLogger(__name__)
START_TIMEOUT = 120.0  # a new writer waits for the forkserver's imports and loads the rules


class Intake:
    """Queue deliveries and have the writer commit them in groups; see the module docstring."""

    def __init__(self, url: str, *, busy_timeout_ms: int = 10_000, max_batch: int = 64,
                 isolate: bool = False, rules: RuleFiles | None = None):
        self.url = url
        self.rules = rules
        self.busy_timeout_ms = busy_timeout_ms
        self.max_batch = max_batch
        self.isolate = isolate
        self._writer: ThreadWriter | ProcessWriter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[tuple[bytes, Envelope], asyncio.Future[Receipt]]] = (
            asyncio.Queue())
        self._pending: dict[int, list[asyncio.Future[Any]]] = {}  # group ident -> futures
        self._asked: dict[int, asyncio.Future[dict[str, Any]]] = {}  # status requests
        self._idents = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def writer_pid(self) -> int | None:
        """The writer process (``isolate=True``), for tests and status."""
        return self._writer.process.pid if isinstance(self._writer, ProcessWriter) else None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._open_writer()
        self._task = self._loop.create_task(self._run())

    async def _open_writer(self) -> None:
        if not self.isolate:
            self._writer = ThreadWriter(self.url, self.busy_timeout_ms, self.rules,
                                        self.max_batch, self._done_threadsafe)
            return
        writer = self._spawn()
        loop = asyncio.get_running_loop()
        # start it and load the rules now, not with the first message
        ready = await loop.run_in_executor(None, writer.ready.wait, START_TIMEOUT)
        if not ready or not writer.started:
            raise RuntimeError("the intake writer process did not start (see its log)")

    def _spawn(self) -> ProcessWriter:
        writer = ProcessWriter(self.url, self.busy_timeout_ms, self.rules, self.max_batch,
                               self._done_threadsafe, self._death_threadsafe)
        self._writer = writer
        return writer

    async def stop(self) -> None:
        """Commit everything already handed in, then stop the writer."""
        self._closed = True
        await self._queue.join()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await asyncio.get_running_loop().run_in_executor(None, writer.stop)

    async def status(self) -> dict[str, Any]:
        """The writer's rule set version and last reload error."""
        assert self._loop is not None and self._writer is not None
        future = self._loop.create_future()
        ident = next(self._idents)
        self._asked[ident] = future
        self._writer.send("status", ident)
        return await future

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
        """Hand the writer whatever has queued up, as one group, as soon as it is there:
        the writer merges groups waiting for it into one transaction."""
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            ident = next(self._idents)
            self._pending[ident] = [future for _, future in batch]
            assert self._writer is not None
            self._writer.send("commit", ident, [item for item, _ in batch])

    def _done_threadsafe(self, answers: list[tuple[int, Any]]) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._done, answers)

    def _death_threadsafe(self) -> None:
        assert self._loop is not None
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._died)

    def _done(self, answers: list[tuple[int, Any]]) -> None:
        for ident, payload in answers:
            if ident in self._asked:
                _settle(self._asked.pop(ident), payload)
                continue
            futures = self._pending.pop(ident, None)
            if futures is None:  # answered already (its writer was declared dead)
                continue
            for future, outcome in zip(futures, payload, strict=True):
                _settle(future, outcome)
                self._queue.task_done()

    def _died(self) -> None:
        """The writer process is gone: everything it had gets 451, a new one starts."""
        if self._writer is None or self._task is None:  # stopped on purpose, or starting:
            return  # start() reports a writer that died before it was ready
        log.error("intake writer process died; restarting it")
        lost, self._pending = self._pending, {}
        for futures in lost.values():
            for future in futures:
                _settle(future, StoreUnavailable("writer restarted"))
                self._queue.task_done()
        asked, self._asked = self._asked, {}
        for future in asked.values():
            _settle(future, StoreUnavailable("writer restarted"))
        self._spawn()


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    if future.done():
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


