"""The HTTP listener: a WSGI app (the console) served by waitress in threads of its own.

``postdesk serve`` binds ``gateway.http_listen`` up front like the mail ports and hands the
socket here. The app comes from the ``postdesk.http`` entry point (the console registers
``console.app:wsgi_app``), so the gateway never imports the console; without one installed
the gateway keeps answering /healthz alone (``Gateway._http``).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from waitress import create_server
from waitress.wasyncore import close_all

from engine.config import Settings

log = logging.getLogger(__name__)
Health = Callable[[], dict[str, Any]]


def load_app(settings: Settings, health: Health | None) -> Any | None:
    """The installed WSGI app for ``settings`` (first ``postdesk.http`` entry point)."""
    found = sorted(entry_points(group="postdesk.http"), key=lambda e: e.name)
    if not found:
        log.warning("no postdesk.http app installed: serving /healthz only")
        return None
    return found[0].load()(settings, health)


class WsgiServer:
    """waitress on an already bound socket, run on a daemon thread until ``stop``."""

    def __init__(self, app: Any, sock: socket.socket, threads: int = 8):
        self.server = create_server(app, sockets=[sock], threads=threads, ident="postdesk",
                                    clear_untrusted_proxy_headers=True)
        self.thread = threading.Thread(target=self.run, name="http", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def run(self) -> None:
        self.server.run()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and open connections; requests in progress get ``timeout``."""
        self.server.task_dispatcher.shutdown(timeout=timeout)
        close_all(self.server._map)  # noqa: SLF001 — waitress keeps its socket map there
        self.thread.join(timeout)


def run_alone(settings: Settings, listen: str | None = None) -> int:
    """``postdesk console``: only the console, on ``listen`` or ``gateway.http_listen``."""
    import signal

    from engine.config import parse_listen

    where = parse_listen(listen or settings.gateway.http_listen)
    if where is None:
        raise SystemExit("postdesk: the console needs an address (gateway.http_listen is off)")
    app = load_app(settings, None)
    if app is None:
        raise SystemExit("postdesk: the console is not installed (pip install -e .)")
    sock = socket.create_server(where, reuse_port=False)
    print(f"postdesk: console listening on {where[0]}:{sock.getsockname()[1]}", flush=True)
    server = WsgiServer(app, sock, settings.console.threads)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    stop.wait()
    server.stop()
    return 0
