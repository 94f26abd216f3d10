"""Helpers for server processes: the gateway, its pre-fork workers and the intake writer."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import os
import select
import signal
import threading
import time
from typing import Any

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
# What the children of a server process run; the forkserver imports them once.
CHILD_MODULES = ("engine.intakewriter", "engine.outboxworker")


def child_context() -> multiprocessing.context.BaseContext:
    """How a server process starts its children (the intake writer, the outbox worker).

    The forkserver: a fresh, single-threaded interpreter that imports ``CHILD_MODULES``
    once and forks each child from there. Unlike a fork of the caller it is safe beside the
    caller's threads and event loop; unlike spawn, a child costs a fork, not a new
    interpreter importing the engine (~1 s of CPU each). The children's parent is then the
    forkserver, which exits when the caller does (see ``die_with_parent``).
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(CHILD_MODULES))
    return context


def start_child_server() -> None:
    """Start the forkserver now, so that its imports overlap the rest of the caller's
    start-up. Not in a process that will fork workers: each worker needs its own."""
    child_context()
    multiprocessing.forkserver.ensure_running()


def die_with_parent(parent: int, sig: int = signal.SIGTERM) -> None:
    """Get ``sig`` when ``parent`` exits (even by SIGKILL); exit now if it already has.

    Without it a child whose parent was SIGKILLed lives on, holding sockets and files. A
    direct child asks Linux (``PR_SET_PDEATHSIG``). A child of the forkserver
    (``child_context``) cannot: its parent is the forkserver, which lives as long as any of
    its children do, so a thread watches ``parent`` itself (a pidfd, else polling).
    """
    if os.getppid() == parent:
        _prctl(PR_SET_PDEATHSIG, sig)
        if os.getppid() == parent:  # else it exited before the prctl took effect
            return
        os._exit(0)
    try:
        pidfd: int | None = os.pidfd_open(parent)
    except ProcessLookupError:
        os._exit(0)
    except (OSError, AttributeError):  # no pidfds (kernel before 5.3, not Linux)
        pidfd = None
    threading.Thread(target=_signal_when_gone, args=(parent, pidfd, sig), daemon=True,
                     name="parent-watch").start()


def _signal_when_gone(parent: int, pidfd: int | None, sig: int) -> None:
    if pidfd is not None:
        select.select([pidfd], [], [])  # readable once the process has exited
    else:
        while _alive(parent):
            time.sleep(1.0)
    os.kill(os.getpid(), sig)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or someone else's pid by now
        return False
    return True


def name_process(name: str) -> None:
    """Show ``name`` (at most 15 bytes) for this process in ``top``, ``ps -o comm`` and
    ``/proc/PID/comm``: children of the forkserver all share its command line."""
    _prctl(PR_SET_NAME, name.encode()[:15])


def _prctl(option: int, value: Any) -> None:
    with contextlib.suppress(OSError, AttributeError):  # elsewhere than Linux: no prctl
        ctypes.CDLL(None, use_errno=True).prctl(option, value)


def settle_heap() -> None:
    """Call once started: what start-up built (modules, rules, the engine) lives as long as
    the process, so the garbage collector stops walking it (``gc.freeze``). Each full
    collection walked all of it again: 7% of the writer's instructions per message."""
    gc.collect()
    gc.freeze()
