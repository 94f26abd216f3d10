"""The intake's writer and where it runs: a thread of the caller, or a child process.

``Writer`` parses and commits deliveries over its own engine. ``_Host`` drives it with two
threads so parsing never waits for the disk: whoever receives a group parses it at once,
and a commit thread stores everything parsed by the time it is free in ONE transaction.
While one transaction's fsync runs (the GIL is released), the next groups are parsed; the
more mail waits, the larger the next transaction (group commit sized by the load, not by
the caller).

``ThreadWriter`` hosts it in the caller's process; ``ProcessWriter`` in a child process fed
over pipes (the gateway: storing uses a second core instead of fighting the event loop for
the GIL). ``ProcessWriter``'s sending thread parses mail up to ``PARSE_HERE_MAX`` before
it goes (``parse_here``): the gateway process has time to spare, while the writer's time
is what every waiting sender shares.

Both call ``on_done(answers)`` from a thread of theirs, once per transaction with
``(ident, outcomes)`` for each group it held; ``ProcessWriter`` calls ``on_death()`` when its
child is gone, with groups unanswered.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.decisions import RuleFiles, RulesContext
from engine.deliveries import Delivery, Envelope, Receipt, Rejected, store_batch, store_raw
from engine.mime import ParsedMessage, parse_message
from engine.processes import child_context, die_with_parent, name_process, settle_heap
from engine.store.database import UNAVAILABLE, checkpoint_in_background, make_engine, writer

log = logging.getLogger(__name__)
# Mail up to this size is parsed in the gateway process before it goes to the writer
# process, whose time every waiting sender shares; larger mail is parsed there.
PARSE_HERE_MAX = 64 * 1024


class StoreUnavailable(Exception):
    """The message could not be committed; the sender must try again later (4xx)."""


Outcome = Receipt | Rejected | Exception
Items = list[tuple[bytes, Envelope]]
# the answers of one transaction: (ident, outcomes or a status) per group it held
OnDone = Callable[[list[tuple[int, Any]]], None]


@dataclass
class _Job:
    raw: bytes
    envelope: Envelope
    parsed: ParsedMessage | None
    parse_error: str | None


def parse_jobs(items: Items, parsed: list[ParsedMessage | None] | None = None) -> list[_Job]:
    """Parse each delivery (pure CPU, no database: done while another group commits), but
    for those ``parsed`` already holds."""
    if parsed is None:
        return [_make_job(raw, envelope) for raw, envelope in items]
    return [_make_job(raw, envelope) if done is None else _Job(raw, envelope, done, None)
            for (raw, envelope), done in zip(items, parsed, strict=True)]


class Writer:
    """Commits parsed deliveries over its own engine (one connection)."""

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

    def commit(self, jobs: list[_Job]) -> list[Outcome]:
        """Commit all in one transaction; after a pipeline fault, each on its own."""
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


# ---------------------------------------------------------------------------- the host

_STOP = None


class _Host:
    """Parses groups as they are handed in and commits whatever is parsed in one go."""

    def __init__(self, writer: Writer, on_done: OnDone, max_batch: int):
        self.writer = writer
        self.on_done = on_done
        self.max_batch = max_batch
        self._parsed: queue.SimpleQueue[tuple[str, int, Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._commit_loop, name="intake-commit",
                                        daemon=True)
        self._thread.start()

    def submit(self, ident: int, items: Items,
               parsed: list[ParsedMessage | None] | None = None) -> None:
        """Parse now (the caller's thread) what is not parsed yet, commit with whatever
        else is waiting."""
        self._parsed.put(("commit", ident, parse_jobs(items, parsed)))

    def ask_status(self, ident: int) -> None:
        self._parsed.put(("status", ident, None))

    def close(self) -> None:
        """Commit what was handed in, then stop."""
        self._parsed.put(_STOP)
        self._thread.join()
        self.writer.close()

    def _commit_loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._parsed.get()
            if first is _STOP:
                return
            groups = [first]
            size = len(first[2] or ())
            while size < self.max_batch:  # everything parsed meanwhile joins this transaction
                try:
                    more = self._parsed.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stopping = True
                    break
                groups.append(more)
                size += len(more[2] or ())
            self._run(groups)

    def _run(self, groups: list[tuple[str, int, Any]]) -> None:
        jobs = [job for kind, _, payload in groups if kind == "commit" for job in payload]
        try:
            outcomes = self.writer.commit(jobs) if jobs else []
        except Exception as exc:  # noqa: BLE001 — must never kill the host
            log.exception("intake writer failed")
            outcomes = [StoreUnavailable(str(exc))] * len(jobs)
        answers: list[tuple[int, Any]] = []
        at = 0
        for kind, ident, payload in groups:
            if kind == "status":
                answers.append((ident, self.writer.status()))
            else:
                answers.append((ident, outcomes[at:at + len(payload)]))
                at += len(payload)
        self.on_done(answers)  # one hand-over per transaction, not per group


class ThreadWriter:
    """The host in this process: a feeding thread parses, the commit thread stores."""

    def __init__(self, url: str, busy_timeout_ms: int, rules: RuleFiles | None,
                 max_batch: int, on_done: OnDone):
        self._host = _Host(Writer(url, busy_timeout_ms, rules), on_done, max_batch)
        self._inbox: queue.SimpleQueue[tuple[str, int, Any] | None] = queue.SimpleQueue()
        self._feeder = threading.Thread(target=self._feed, name="intake-parse", daemon=True)
        self._feeder.start()

    def send(self, kind: str, ident: int, items: Items | None = None) -> None:
        self._inbox.put((kind, ident, items))

    def _feed(self) -> None:
        while (message := self._inbox.get()) is not _STOP:
            kind, ident, items = message
            if kind == "status":
                self._host.ask_status(ident)
            else:
                self._host.submit(ident, items)

    def stop(self) -> None:
        self._inbox.put(_STOP)
        self._feeder.join()
        self._host.close()


class ProcessWriter:
    """The host in a child process (``child_context``), fed and answered over two pipes."""

    def __init__(self, url: str, busy_timeout_ms: int, rules: RuleFiles | None,
                 max_batch: int, on_done: OnDone, on_death: Callable[[], None]):
        context = child_context()
        to_child, self._to_child = context.Pipe(duplex=False)
        self._from_child, from_child = context.Pipe(duplex=False)
        self.ready = threading.Event()  # set on the child's "ready", or on its death
        self.started = False  # the child did say "ready"
        self._on_done, self._on_death = on_done, on_death
        self.process = context.Process(
            target=_child_main, name="postdesk-intake-writer", daemon=True,
            args=(to_child, from_child, os.getpid(), url, busy_timeout_ms, rules, max_batch))
        self.process.start()
        to_child.close()  # ours closed: the child's end alone keeps each pipe open, so its
        from_child.close()  # death shows here as end-of-file
        self._outbox: queue.SimpleQueue[tuple[str, int, Any] | None] = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_loop, name="intake-send", daemon=True)
        self._receiver = threading.Thread(target=self._receive_loop, name="intake-receive",
                                          daemon=True)
        self._sender.start()
        self._receiver.start()

    def send(self, kind: str, ident: int, items: Items | None = None) -> None:
        """Queue for the child; never blocks the caller (a thread writes the pipe)."""
        self._outbox.put((kind, ident, items))

    def _send_loop(self) -> None:
        try:
            while (message := self._outbox.get()) is not _STOP:
                kind, ident, items = message
                if kind == "commit":  # parsed here, on this process's spare core time
                    message = (kind, ident, items, parse_here(items))
                self._to_child.send(message)
            self._to_child.send(_STOP)
        except OSError:  # the child is gone: the receiver reports it
            pass
        finally:
            self._to_child.close()

    def _receive_loop(self) -> None:
        try:
            while True:
                kind, answers = self._from_child.recv()
                if kind == "ready":
                    self.started = True
                    self.ready.set()
                else:
                    self._on_done(answers)
        except (EOFError, OSError):
            pass
        self._from_child.close()
        self.ready.set()  # a child that died starting must not keep start() waiting
        self._on_death()

    def stop(self, timeout: float = 60.0) -> None:
        """Let the child commit what it has, then end it."""
        self._outbox.put(_STOP)
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self._receiver.join(timeout)


def _child_main(inbox: Any, outbox: Any, parent: int, url: str, busy_timeout_ms: int,
                rules: RuleFiles | None, max_batch: int) -> None:
    die_with_parent(parent)  # a killed gateway must not leave its writer behind
    name_process("postdesk-writer")
    # Ctrl-C reaches the whole process group: the parent decides when the writer stops
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host = _Host(Writer(url, busy_timeout_ms, rules), lambda a: outbox.send(("done", a)),
                 max_batch)
    settle_heap()
    outbox.send(("ready", None))
    try:
        while (message := inbox.recv()) is not _STOP:
            kind, ident, items, *parsed = message
            if kind == "status":
                host.ask_status(ident)
            else:
                host.submit(ident, items, *parsed)
    except EOFError:  # the parent is gone: finish what was handed in
        pass
    host.close()


# ---------------------------------------------------------------------------- storing


def parse_here(items: Items) -> list[ParsedMessage | None]:
    """The gateway process parses what it hands the writer process, but for large mail
    (None: the writer parses it, and the parse result is not copied across)."""
    return [_make_job(raw, envelope).parsed if len(raw) <= PARSE_HERE_MAX else None
            for raw, envelope in items]  # a parse that failed here is tried in the writer


def _make_job(raw: bytes, envelope: Envelope) -> _Job:
    try:
        return _Job(raw, envelope, parse_message(raw, envelope.received_at), None)
    except Exception:  # noqa: BLE001 — the parser promises not to raise; belt and braces
        return _Job(raw, envelope, None, traceback.format_exc(limit=5))


def _store_all(conn: Any, jobs: list[_Job],
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


def _store_guarded(conn: Any, job: _Job, rules: RulesContext | None) -> Receipt | Rejected:
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
