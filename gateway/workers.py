"""Pre-fork workers for ``postdesk serve`` (``gateway.workers`` > 1).

The listening sockets are bound by the parent and inherited; each worker accepts from them
with its own event loop, intake writer and database engine, so parsing and protocol work use
every core instead of one (the GIL). The parent only supervises: it forwards SIGTERM/SIGINT,
restarts a worker that died, and exits when all workers have drained. A worker whose parent
dies (even by SIGKILL) gets SIGTERM from the kernel and drains too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable

from engine.processes import die_with_parent

log = logging.getLogger(__name__)
RESTART_DELAY = 1.0


class Supervisor:
    """Forks ``count`` workers running ``target(index)`` and keeps them alive until a signal."""

    def __init__(self, count: int, target: Callable[[int], None]):
        self.count = count
        self.target = target
        self.children: dict[int, int] = {}  # pid → worker index
        self.stopping = False

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        for index in range(self.count):
            self._spawn(index)
        status = 0
        while self.children:
            try:
                pid, raw = os.wait()
            except ChildProcessError:
                break
            index = self.children.pop(pid, None)
            code = os.waitstatus_to_exitcode(raw)
            if index is None:
                continue
            if self.stopping:
                status = status or (code if code > 0 else 0)
            else:
                log.error("worker %d (pid %d) exited with %d; restarting", index, pid, code)
                time.sleep(RESTART_DELAY)
                self._spawn(index)
        return status

    def _spawn(self, index: int) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid:
            self.children[pid] = index
            return
        code = 1
        try:
            die_with_parent(parent)
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            self.target(index)
            code = 0
        except BaseException:  # noqa: BLE001 — a worker must never return into the parent's code
            log.exception("worker %d failed", index)
        finally:
            os._exit(code)

    def _stop(self, signum: int, _frame: object) -> None:
        self.stopping = True
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
