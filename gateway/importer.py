"""``postdesk import``: existing mail into an account, through the same intake as SMTP.

Messages go to ``Intake.receive`` in windows that commit concurrently (group commit); a
checkpoint file records how far the source has been committed, so an interrupted import
(Ctrl-C, kill, crash) resumes where it stopped. The few messages of the window in flight at
a crash are recognised as duplicates on the next run, never stored twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from engine.deliveries import Envelope, Receipt, Rejected
from engine.intake import Intake
from gateway.sources import Item, MailSource

WINDOW = 200  # messages handed to the intake at once
IN_FLIGHT = 2  # windows committing while the next is read
MAX_FAILURES_LISTED = 1000
_RETURN_PATH = re.compile(rb"^Return-Path:[ \t]*<([^>\r\n]*)>", re.IGNORECASE | re.MULTILINE)


class StoreFailed(Exception):
    """No message of a window could be stored: stop, keep the checkpoint, resume later."""


@dataclass
class ImportState:
    """The checkpoint and the summary: cumulative over every run of one import."""

    source: str
    kind: str
    account: str
    total: int = 0
    done: int = 0  # messages of the source committed (or failed), in order
    imported: int = 0
    duplicate: int = 0
    failed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    resumed_from: int = 0
    interrupted: bool = False

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # the checkpoint must not claim more than was committed
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, source: MailSource, account: str) -> ImportState:
        fresh = cls(str(source.path.resolve()), source.kind, account)
        if not path.exists():
            return fresh
        data = json.loads(path.read_text())
        state = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        state.resumed_from, state.interrupted = state.done, False
        return state


def checkpoint_path(instance_dir: Path, source: MailSource, account: str) -> Path:
    digest = hashlib.sha256(f"{source.path.resolve()}\0{account}".encode()).hexdigest()[:16]
    return instance_dir / "imports" / f"{account}-{source.kind}-{digest}.json"


class Importer:
    """Feeds a source into the intake for one account; see the module docstring."""

    def __init__(self, intake: Intake, account_id: int, address: str, *, max_size: int,
                 hostname: str, checkpoint: Path):
        self.intake = intake
        self.account_id = account_id
        self.address = address
        self.max_size = max_size
        self.hostname = hostname
        self.checkpoint = checkpoint
        self.stopping = asyncio.Event()

    async def run(self, source: MailSource, state: ImportState,
                  progress: Callable[[ImportState], None] = lambda s: None) -> ImportState:
        """Import from ``state.done`` on; returns the updated state (also checkpointed)."""
        state.total = len(source)
        pending: deque[asyncio.Task[list[tuple[Item, Any]]]] = deque()
        items = source.items(state.done)
        try:
            while not self.stopping.is_set():
                window = [item for _, item in zip(range(WINDOW), items, strict=False)]
                if not window:
                    break
                pending.append(asyncio.ensure_future(self._window(window)))
                while len(pending) >= IN_FLIGHT or (pending and pending[0].done()):
                    self._tally(state, await pending.popleft(), progress)
            while pending:
                self._tally(state, await pending.popleft(), progress)
        finally:
            for task in pending:
                task.cancel()
            state.interrupted = state.done < state.total
            state.save(self.checkpoint)
        return state

    async def _window(self, window: list[Item]) -> list[tuple[Item, Any]]:
        outcomes = await asyncio.gather(*(self._one(item) for item in window),
                                        return_exceptions=True)
        results = list(zip(window, outcomes, strict=True))
        if all(isinstance(o, BaseException) for _, o in results) and any(
                item.raw is not None for item in window):
            raise StoreFailed(f"store unavailable: {outcomes[0]}")
        return results

    async def _one(self, item: Item) -> Any:
        if item.raw is None:
            return ValueError(item.error)
        if len(item.raw) > self.max_size:
            return ValueError(f"{len(item.raw)} bytes, more than max_message_size "
                              f"({self.max_size})")
        return await self.intake.receive(item.raw, self._envelope(item))

    def _envelope(self, item: Item) -> Envelope:
        raw = item.raw or b""
        match = _RETURN_PATH.search(raw[:raw.find(b"\n\n") + 1 or 8192])
        now = datetime.now(UTC)
        received = (f"Received: from {item.where} (import)\r\n\tby {self.hostname} "
                    f"(Postdesk) with IMPORT id {item.index + 1};\r\n\t{format_datetime(now)}"
                    "\r\n")
        return Envelope(mail_from=match.group(1).decode("ascii", "replace") if match else "",
                        recipients=[(self.account_id, self.address)], received_at=now,
                        received_header=received, protocol="IMPORT")

    def _tally(self, state: ImportState, results: list[tuple[Item, Any]],
               progress: Callable[[ImportState], None]) -> None:
        for item, outcome in results:
            if isinstance(outcome, Receipt):
                state.duplicate += outcome.duplicate
                state.imported += not outcome.duplicate
                continue
            state.failed += 1
            reason = (f"refused by rule {outcome.rule}: {outcome.message}"
                      if isinstance(outcome, Rejected) else str(outcome) or repr(outcome))
            if len(state.failures) < MAX_FAILURES_LISTED:
                state.failures.append({"where": item.where, "reason": reason})
        state.done = results[-1][0].index + 1
        state.save(self.checkpoint)
        progress(state)
