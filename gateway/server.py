"""Starts the services of ``postdesk serve`` on one asyncio loop and stops them cleanly.

SMTP and LMTP listeners and the HTTP health endpoint share the loop; the intake writer thread
commits messages. On SIGTERM/SIGINT the listeners stop accepting, in-flight DATA transactions
finish (their 250s are sent), pending commits drain, and the process exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, text

from engine.accounts import sync_accounts
from engine.config import Settings, parse_listen
from engine.intake import Intake
from engine.store.database import make_engine
from gateway.smtp import GatewayStats, IntakeHandler, start_listener, tls_context

log = logging.getLogger(__name__)
DRAIN_SECONDS = 30
SWITCH_INTERVAL = float(os.environ.get("POSTDESK_SWITCH_INTERVAL", "0.0005"))


class Gateway:
    """The running services of one process; ``run`` blocks until a stop signal."""

    def __init__(self, settings: Settings, engine: Engine | None = None):
        self.settings = settings
        self.engine = engine or make_engine(
            settings.database_url, busy_timeout_ms=settings.database.busy_timeout_ms,
            pool_size=settings.database.pool_size,
        )
        self.stats = GatewayStats()
        self.intake = Intake(self.engine, max_batch=settings.gateway.max_batch)
        self.servers: dict[str, asyncio.Server] = {}
        self.handlers: list[IntakeHandler] = []
        self.stopping = asyncio.Event()

    async def start(self) -> None:
        directory = sync_accounts(self.engine, self.settings)
        await self.intake.start()
        gw = self.settings.gateway
        tls = tls_context(str(gw.starttls.cert), str(gw.starttls.key)) if gw.starttls else None
        for name, listen, lmtp in (("smtp", gw.smtp_listen, False),
                                   ("lmtp", gw.lmtp_listen, True)):
            where = parse_listen(listen)
            if where is None:
                continue
            handler = IntakeHandler(self.intake, directory, gw.hostname, self.stats, lmtp=lmtp)
            self.handlers.append(handler)
            self.servers[name] = await start_listener(
                handler, *where, networks=gw.networks(), size_limit=gw.max_message_size,
                hostname=gw.hostname, tls=tls, timeout=gw.timeout,
            )
        http = parse_listen(gw.http_listen)
        if http is not None:
            self.servers["http"] = await asyncio.start_server(self._http, *http)
        for name, server in self.servers.items():
            host, port = server.sockets[0].getsockname()[:2]
            log.info("listening %s on %s:%s", name, host, port)
            print(f"postdesk: {name} listening on {host}:{port}", flush=True)

    async def stop(self) -> None:
        """Stop accepting, let in-flight transactions finish, drain commits."""
        for server in self.servers.values():
            server.close()
        deadline = asyncio.get_running_loop().time() + DRAIN_SECONDS
        while (open_ := sum(h.in_transaction() for h in self.handlers)) and (
                asyncio.get_running_loop().time() < deadline):
            await asyncio.sleep(0.05)
        if open_:
            log.warning("stopping with %d transactions unfinished (no 250 was given)", open_)
        for handler in self.handlers:
            handler.close_connections()
        await self.intake.stop()
        self.engine.dispose()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        await self.start()
        await self.stopping.wait()
        log.info("stopping")
        await self.stop()

    def health(self) -> dict[str, Any]:
        """Liveness plus counters; ``database`` says whether a trivial query works."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            database = "ok"
        except Exception as exc:  # noqa: BLE001 — reported, not raised
            database = f"error: {exc.__class__.__name__}"
        stats = asdict(self.stats)
        stats["started_at"] = self.stats.started_at.isoformat()
        return {
            "status": "ok" if database == "ok" else "degraded",
            "database": database,
            "time": datetime.now(UTC).isoformat(),
            "listeners": sorted(self.servers),
            "gateway": stats,
        }

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A minimal HTTP/1.0 responder for /healthz until the console takes over this port."""
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            path = request.split(b" ", 2)[1].decode("latin-1") if b" " in request else "/"
            if path.split("?")[0] in ("/healthz", "/health", "/"):
                body = await asyncio.get_running_loop().run_in_executor(None, self.health)
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


def serve(settings: Settings) -> None:
    """Run all services until SIGTERM (``postdesk serve``)."""
    # The intake writer thread and the event loop share the GIL; with the default 5 ms
    # switch interval the loop waits behind the writer after every socket call (measured:
    # most of the loop's time went to re-acquiring the GIL in transport.write).
    sys.setswitchinterval(SWITCH_INTERVAL)
    asyncio.run(Gateway(settings).run())
