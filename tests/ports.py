"""Loopback ports for throwaway servers (stdlib only: the benchmarks import it too).

A port the OS called free a moment ago may be taken by the time a server binds it (another
test worker), and a restarted server's old port can still be held for a moment; the two
helpers here retry a start that failed with ``PortTaken`` in those two ways.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

PORT_ATTEMPTS = 5


class PortTaken(RuntimeError):
    """A server could not listen: another process has the port."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_on_free_ports(start: Callable[[], None], pick_ports: Callable[[], None]) -> None:
    """``start()``; when its port was taken meanwhile, ``pick_ports()`` and try again."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            start()
            return
        except PortTaken:
            if attempt == PORT_ATTEMPTS:
                raise
            pick_ports()


def start_when_port_free(start: Callable[[], None], timeout: float = 30.0) -> None:
    """``start()`` again on the same port, waiting up to ``timeout`` for it to be let go."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            start()
            return
        except PortTaken:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
