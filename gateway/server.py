"""Starts the services of ``postdesk serve`` (or of one role: ``postdesk gateway``) and
stops them cleanly.

The listening sockets are bound once, up front (a taken port fails before anything runs);
then one or more worker processes (``gateway.workers``) each run the SMTP and LMTP listeners
on one asyncio loop with their own intake writer; worker 0 also serves HTTP (the console with
/healthz, on waitress threads beside the loop: ``gateway.http``), polls the IMAP mailboxes
(``gateway.imap``) and starts the outbox worker — each as far as ``Services`` asks: ``serve``
runs all of them, ``postdesk gateway`` only the listeners and a bare /healthz. On
SIGTERM/SIGINT the listeners stop accepting, in-flight transactions finish (their 250s are
sent), pending commits drain, and the process exits.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import multiprocessing
import os
import signal
import socket
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, text

from engine.accounts import AccountDirectory, sync_accounts
from engine.config import Settings, parse_listen, tag_keys
from engine.decisions import RuleFiles
from engine.intake import Intake
from engine.outbox import health as outbox_health
from engine.outboxworker import run_worker
from engine.processes import child_context, settle_heap
from engine.store.database import make_engine
from gateway.http import WsgiServer, load_app
from gateway.imap import PollerSet
from gateway.smtp import (
    LISTEN_BACKLOG,
    GatewayStats,
    IntakeHandler,
    start_listener,
    tls_context,
)

log = logging.getLogger(__name__)
DRAIN_SECONDS = 30


@dataclass(frozen=True)
class Services:
    """What a process runs besides the SMTP/LMTP listeners (worker 0 only, when forking)."""

    console: bool = True  # the console on http_listen; False: a bare /healthz there
    pollers: bool = True  # the IMAP pollers (one per mailbox across processes: a lease)
    outbox: bool = True  # the outbox worker, in a child process


SERVE = Services()  # postdesk serve: everything in one process tree
GATEWAY = Services(console=False, pollers=False, outbox=False)  # postdesk gateway


class Gateway:
    """The running services of one process; ``run`` blocks until a stop signal."""

    def __init__(self, settings: Settings, sockets: dict[str, socket.socket],
                 directory: AccountDirectory, *, services: Services = SERVE, worker: int = 0):
        self.settings = settings
        self.directory = directory
        self.services = services
        self.sockets = sockets if worker == 0 else {
            k: v for k, v in sockets.items() if k != "http"}
        self.worker = worker
        self.engine = _engine(settings)  # health and leases; the intake writer has its own
        self.stats = GatewayStats()
        rules = RuleFiles([str(p) for p in settings.rules], directory.names,
                          tag_keys(settings), frozenset(directory.by_address),
                          settings.outbox.bounce_local)
        self.intake = Intake(settings.database_url, max_batch=settings.gateway.max_batch,
                             busy_timeout_ms=settings.database.busy_timeout_ms, isolate=True,
                             rules=rules)
        self.servers: dict[str, asyncio.Server] = {}
        self.wsgi: WsgiServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.handlers: list[IntakeHandler] = []
        # IMAP mailboxes are polled by one process only (worker 0 when pre-forking, and a
        # lease in the database against other processes)
        self.pollers = PollerSet.from_settings(settings, directory, self.intake,
                                               engine=self.engine) \
            if worker == 0 and services.pollers else PollerSet([], self.intake)
        # one outbox worker per process tree, in its own process (rows are claimed: more
        # are safe); worker 0 starts it
        self.sends = worker == 0 and services.outbox
        self.outbox: multiprocessing.process.BaseProcess | None = None
        self.stopping = asyncio.Event()

    async def start(self) -> None:
        await self.intake.start()
        gw = self.settings.gateway
        tls = tls_context(str(gw.starttls.cert), str(gw.starttls.key)) if gw.starttls else None
        for name in ("smtp", "lmtp"):
            if name not in self.sockets:
                continue
            handler = IntakeHandler(self.intake, self.directory, gw.hostname, self.stats,
                                    lmtp=name == "lmtp")
            self.handlers.append(handler)
            self.servers[name] = await start_listener(
                handler, self.sockets[name], networks=gw.networks(),
                size_limit=gw.max_message_size, hostname=gw.hostname, tls=tls,
                timeout=gw.timeout,
            )
        if "http" in self.sockets:
            await self._start_http()
        await self.pollers.start()
        if self.sends:
            self.outbox = child_context().Process(
                target=run_worker, args=(self.settings, os.getpid()), name="postdesk-outbox")
            self.outbox.start()
        log.info("worker %d serving %s", self.worker, ", ".join(sorted(self.servers)))

    async def _start_http(self) -> None:
        """The console on waitress threads if wanted and installed, else a bare /healthz."""
        self._loop = asyncio.get_running_loop()
        app = load_app(self.settings, self._health_from_thread) \
            if self.services.console else None
        if app is None:
            self.servers["http"] = await asyncio.start_server(
                self._http, sock=self.sockets["http"], backlog=LISTEN_BACKLOG)
            return
        self.wsgi = WsgiServer(app, self.sockets["http"], self.settings.console.threads)
        self.wsgi.start()

    def _health_from_thread(self) -> dict[str, Any]:
        """``health`` for a waitress thread: the rules' status comes from the loop."""
        assert self._loop is not None
        rules = asyncio.run_coroutine_threadsafe(self.intake.status(), self._loop).result(10)
        return self.health(rules)

    async def stop(self) -> None:
        """Stop accepting, let in-flight transactions finish, drain commits."""
        for server in self.servers.values():
            server.close()
        if self.wsgi is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.wsgi.stop)
        deadline = asyncio.get_running_loop().time() + DRAIN_SECONDS
        while (open_ := sum(h.in_transaction() for h in self.handlers)) and (
                asyncio.get_running_loop().time() < deadline):
            await asyncio.sleep(0.05)
        if open_:
            log.warning("stopping with %d transactions unfinished (no 250 was given)", open_)
        for handler in self.handlers:
            handler.close_connections()
        await self.pollers.stop()
        if self.outbox is not None:
            self.outbox.terminate()  # SIGTERM: the worker finishes the mail in hand
            await asyncio.to_thread(self.outbox.join, DRAIN_SECONDS)
            if self.outbox.is_alive():
                self.outbox.kill()
        await self.intake.stop()
        self.engine.dispose()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        await self.start()
        settle_heap()
        await self.stopping.wait()
        log.info("stopping")
        await self.stop()

    def health(self, rules: dict[str, Any] | None = None) -> dict[str, Any]:
        """Liveness plus counters; ``database`` says whether a trivial query works."""
        outbox: dict[str, Any] = {}
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                outbox = outbox_health(conn)
            database = "ok"
        except Exception as exc:  # noqa: BLE001 — reported, not raised
            database = f"error: {exc.__class__.__name__}"
        stats = asdict(self.stats)
        stats["started_at"] = self.stats.started_at.isoformat()
        return {
            "status": "ok" if database == "ok" else "degraded",
            "database": database,
            "time": datetime.now(UTC).isoformat(),
            "listeners": sorted([*self.servers, *(["http"] if self.wsgi else [])]),
            "gateway": stats,
            "rules": rules or {},
            "imap": self.pollers.health(),
            "outbox": outbox,
            "alerts": [f"automatic sending paused: {outbox['paused']}"]
            if outbox.get("paused") else [],
        }

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A minimal HTTP/1.0 responder for /healthz without the console."""
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            path = request.split(b" ", 2)[1].decode("latin-1") if b" " in request else "/"
            if path.split("?")[0] in ("/healthz", "/health", "/"):
                rules = await self.intake.status()
                body = await asyncio.get_running_loop().run_in_executor(None, self.health, rules)
                code = "200 OK" if body["status"] == "ok" else "503 Service Unavailable"
                payload = json.dumps(body).encode()
            else:
                code, payload = "404 Not Found", b'{"error": "not found"}'
            writer.write(f"HTTP/1.0 {code}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
                         .encode() + payload)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):
            pass
        finally:
            writer.close()


def bind_sockets(settings: Settings, retry_seconds: float = 5.0) -> dict[str, socket.socket]:
    """Bind every configured listener now; a port still held by a stopping predecessor
    is retried for a few seconds, any other error is raised at once.

    The sockets listen only once their server starts: a client that connects during
    start-up (accounts synced, writer started) is refused and retries, as an MTA does,
    instead of waiting in the backlog of a process that may still fail to start."""
    gw = settings.gateway
    wanted = {name: parse_listen(listen) for name, listen in
              (("smtp", gw.smtp_listen), ("lmtp", gw.lmtp_listen), ("http", gw.http_listen))}
    sockets: dict[str, socket.socket] = {}
    for name, where in wanted.items():
        if where is not None:
            sockets[name] = _bind(*where, retry_seconds)
            host, port = sockets[name].getsockname()[:2]
            print(f"postdesk: {name} listening on {host}:{port}", flush=True)
    return sockets


def _bind(host: str, port: int, retry_seconds: float) -> socket.socket:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    deadline = time.monotonic() + retry_seconds
    while True:
        # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose
        # proto says TCP; without it Nagle + delayed ACK add ~40 ms to every SMTP command reply
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((host, port))
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def serve(settings: Settings, services: Services = SERVE) -> int:
    """Run the services until SIGTERM (``postdesk serve``, ``postdesk gateway``), pre-forking
    ``gateway.workers`` processes; returns the exit status."""
    sockets = bind_sockets(settings)
    engine = _engine(settings)
    directory = sync_accounts(engine, settings)  # once, before any worker accepts
    engine.dispose()  # workers open their own connections
    if settings.gateway.workers == 1:
        asyncio.run(Gateway(settings, sockets, directory, services=services).run())
        return 0
    from gateway.workers import Supervisor

    def worker(index: int) -> None:
        asyncio.run(Gateway(settings, sockets, directory, services=services,
                            worker=index).run())

    return Supervisor(settings.gateway.workers, worker).run()


def _engine(settings: Settings) -> Engine:
    """Health checks and leases: a small pool (``database.pool_size`` if set)."""
    return make_engine(settings.database_url, **settings.database.engine_options(2))
