"""One IMAP session for the poller (``gateway.imap``), over aioimaplib.

Wraps the few commands the poller needs (RFC 3501 with UIDPLUS, MOVE, IDLE) and turns every
failure into one of three exceptions: ``LoginFailed`` (the credentials, an admin must act),
``ConnectionLost`` (the socket went away, or the server stopped answering; reconnect) and
``ImapError`` (a command failed). aioimaplib leaves commands pending when the socket closes,
so every call races the connection-lost callback instead of waiting out its timeout; and
several of its commands (UID MOVE, COPY, STORE, EXPUNGE, the IDLE handshake) have no timeout
at all, so every call is also bounded by the server's ``timeout`` here.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aioimaplib import IMAP4
from aioimaplib.aioimaplib import (
    STOP_WAIT_SERVER_PUSH,
    AioImapException,
    Command,
    CommandTimeout,
    FetchCommand,
)
from aioimaplib.aioimaplib import quoted as imap_quoted

T = TypeVar("T")
_SERVER_TIMEOUT = -1.0  # ``_call``: bound the call by ``ServerSettings.timeout``
_FETCH_START = re.compile(rb"^\d+ FETCH \(")
_UID = re.compile(rb"\bUID (\d+)")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_EXISTS = re.compile(rb"^\d+ (EXISTS|RECENT)\b")


class ImapError(Exception):
    """A command failed; the session may still be usable."""


class ConnectionLost(ImapError):
    """The connection closed, could not be opened, or the server did not answer a command in
    time (the session is dropped then): reconnect with back-off."""


class LoginFailed(ImapError):
    """The server refused the credentials (or TLS could not be verified)."""


@dataclass(frozen=True)
class ServerSettings:
    """Where and how to connect; built from an ``imap-poll`` driver."""

    host: str
    port: int
    tls: str  # implicit | starttls | none
    user: str
    password: str
    timeout: float = 30.0
    ca_file: Path | None = None


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verify the server certificate and host name; ``ca_file`` trusts that CA only."""
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


def uid_set(uids: Iterable[int]) -> str:
    """``[1, 2, 3, 7]`` → ``1:3,7`` (RFC 3501 sequence-set, compact for big batches)."""
    ranges: list[str] = []
    ordered = sorted(set(uids))
    start = prev = ordered[0]
    for uid in [*ordered[1:], None]:
        if uid is not None and uid == prev + 1:
            prev = uid
            continue
        ranges.append(str(start) if start == prev else f"{start}:{prev}")
        if uid is not None:
            start = prev = uid
    return ",".join(ranges)


def mailbox_name(name: str) -> str:
    """A mailbox argument; names are ASCII here (modified UTF-7 is not implemented)."""
    if not name.isascii() or not name.isprintable():
        raise ImapError(f"folder name {name!r}: use printable ASCII characters")
    return imap_quoted(name)


class _Fetch(FetchCommand):
    """aioimaplib's FETCH rescans every response line per line received (quadratic in the
    batch); this one remembers where the last message began and its parenthesis balance."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._seen = 0
        self._depth = 0

    def wait_data(self) -> bool:
        lines = self._resp_lines
        for line in lines[self._seen:]:
            if isinstance(line, bytes):
                if _FETCH_START.match(line):
                    self._depth = 0
                self._depth += line.count(b"(") - line.count(b")")
        self._seen = len(lines)
        return self._depth != 0


class ImapConnection:
    """A logged-in session; use ``await ImapConnection.open(settings)``."""

    def __init__(self, server: ServerSettings):
        self.server = server
        self._lost: asyncio.Future[BaseException | None] = (
            asyncio.get_running_loop().create_future())
        self._aborted = False
        context = tls_context(server.ca_file) if server.tls == "implicit" else None
        self.client = IMAP4(server.host, server.port, timeout=server.timeout,
                            conn_lost_cb=self._connection_lost, ssl_context=context)

    @classmethod
    async def open(cls, server: ServerSettings) -> ImapConnection:
        conn = cls(server)
        try:
            await conn._greet_and_login()
        except BaseException:
            conn.abort()
            raise
        return conn

    @property
    def capabilities(self) -> set[str]:
        return {c.upper() for c in self.client.protocol.capabilities}

    async def _greet_and_login(self) -> None:
        where = f"{self.server.host}:{self.server.port}"
        try:
            await self._call(self.client.wait_hello_from_server())
        except ssl.SSLCertVerificationError as exc:
            raise LoginFailed(f"TLS certificate of {where} not trusted: {exc.verify_message} "
                              "(set ca_file to the CA that signed it)") from None
        except OSError as exc:
            raise ConnectionLost(f"cannot connect to {where}: {exc}") from None
        if self.server.tls == "starttls":
            await self._starttls()
        response = await self._call(self.client.login(self.server.user, self.server.password))
        if response.result != "OK":
            text = _text(response.lines[-1:]) or response.result
            raise LoginFailed(f"login as {self.server.user!r} at {where} refused: {text}")

    async def _starttls(self) -> None:
        """RFC 3501 §6.2.1; aioimaplib has no STARTTLS of its own, so upgrade its transport."""
        protocol = self.client.protocol
        if "STARTTLS" not in self.capabilities:
            raise LoginFailed(f"{self.server.host}:{self.server.port} does not offer STARTTLS")
        await self._ok(protocol.execute(Command("STARTTLS", protocol.new_tag(),
                                                loop=protocol.loop)), "STARTTLS")
        try:
            protocol.transport = await self._call(protocol.loop.start_tls(
                protocol.transport, protocol, tls_context(self.server.ca_file),
                server_hostname=self.server.host))
        except ssl.SSLCertVerificationError as exc:
            raise LoginFailed(f"TLS certificate of {self.server.host} not trusted: "
                              f"{exc.verify_message} (set ca_file)") from None
        await self._call(protocol.capability())  # capabilities may change after TLS

    def _connection_lost(self, exc: BaseException | None) -> None:
        if not self._lost.done():
            self._lost.set_result(exc)

    @property
    def closed(self) -> bool:
        return self._aborted or self._lost.done()

    async def _call(self, awaitable: Awaitable[T], timeout: float | None = _SERVER_TIMEOUT) -> T:
        """Await ``awaitable`` unless the connection drops first or the server leaves it
        unanswered for ``timeout`` seconds (default: the server's; None: ``awaitable`` has a
        timeout of its own)."""
        if self.closed:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise ConnectionLost("connection closed")
        limit = self.server.timeout if timeout == _SERVER_TIMEOUT else timeout
        task = asyncio.ensure_future(awaitable)
        await asyncio.wait({task, self._lost}, timeout=limit,
                           return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            if self._lost.done():
                raise ConnectionLost(
                    f"connection lost: {self._lost.result() or 'closed by server'}")
            raise self._no_answer()
        try:
            return task.result()
        except (TimeoutError, CommandTimeout):
            raise self._no_answer() from None
        except AioImapException as exc:  # e.g. a command illegal in the session's state
            raise ImapError(f"IMAP client: {exc}") from None

    def _no_answer(self) -> ConnectionLost:
        """A command the server left unanswered: the session is in an unknown state (the reply
        may still come, and aioimaplib holds every later command behind it), so drop it."""
        self.abort()
        return ConnectionLost(f"no answer from {self.server.host}:{self.server.port} "
                              f"within {self.server.timeout:g} s; reconnecting")

    async def _ok(self, awaitable: Awaitable[Any], what: str,
                  timeout: float | None = _SERVER_TIMEOUT) -> Any:
        response = await self._call(awaitable, timeout)
        if response.result != "OK":
            raise ImapError(f"{what} failed: {_text(response.lines[-1:]) or response.result}")
        return response

    async def select(self, mailbox: str = "INBOX") -> int:
        """Select ``mailbox``; returns its UIDVALIDITY."""
        response = await self._ok(self.client.select(mailbox_name(mailbox)), f"SELECT {mailbox}")
        for line in response.lines:
            match = _UIDVALIDITY.search(line)
            if match:
                return int(match.group(1))
        raise ImapError(f"SELECT {mailbox}: the server sent no UIDVALIDITY")

    async def ensure_folder(self, name: str) -> None:
        """Create ``name`` unless it exists (RFC 3501 §6.3.3)."""
        quoted = mailbox_name(name)
        listing = await self._ok(self.client.list('""', quoted), f"LIST {name}")
        if not any(line.endswith((b" " + name.encode(), b" " + quoted.encode()))
                   for line in listing.lines[:-1]):
            await self._ok(self.client.create(quoted), f"CREATE {name}")

    async def search_uids(self) -> list[int]:
        """UIDs of every message not flagged \\Deleted, oldest first."""
        response = await self._ok(self.client.uid_search("UNDELETED", charset=None), "SEARCH")
        words = b" ".join(line for line in response.lines[:-1] if isinstance(line, bytes))
        return sorted(int(w) for w in words.split() if w.isdigit())

    async def fetch_sizes(self, uids: list[int]) -> dict[int, int]:
        """RFC822.SIZE of each UID (so oversized mail is never downloaded)."""
        records = await self._fetch(uids, "(UID RFC822.SIZE)")
        return {uid: size for uid, size, _ in records}

    async def fetch_bodies(self, uids: list[int]) -> dict[int, bytes]:
        """The full raw bytes of each UID; BODY.PEEK leaves \\Seen alone."""
        records = await self._fetch(uids, "(UID BODY.PEEK[])")
        return {uid: body for uid, _, body in records if body is not None}

    async def _fetch(self, uids: list[int], items: str) -> list[tuple[int, int, bytes | None]]:
        protocol = self.client.protocol
        command = _Fetch(protocol.new_tag(), uid_set(uids), items, prefix="UID",
                         loop=protocol.loop, timeout=self.server.timeout)
        # the command's own timer fires after ``timeout`` s without data (a big batch may take
        # longer than that in all, and is not cut off while it flows)
        response = await self._ok(protocol.execute(command), "FETCH", timeout=None)
        return _parse_fetch(response.lines[:-1])

    async def move(self, uids: list[int], folder: str, *, use_move: bool = True) -> None:
        """Move ``uids`` into ``folder``: UID MOVE (RFC 6851), else COPY + \\Deleted + UID
        EXPUNGE (RFC 4315), so only these messages are expunged."""
        target, uids_ = mailbox_name(folder), uid_set(uids)
        if use_move and "MOVE" in self.capabilities:
            await self._ok(self.client.uid("move", uids_, target), f"MOVE to {folder}")
            return
        await self._ok(self.client.uid("copy", uids_, target), f"COPY to {folder}")
        await self._ok(self.client.uid("store", uids_, "+FLAGS.SILENT", r"(\Deleted)"), "STORE")
        if "UIDPLUS" in self.capabilities:
            await self._ok(self.client.uid("expunge", uids_), "UID EXPUNGE")
        else:  # RFC 3501 EXPUNGE: also removes other \Deleted messages (documented)
            await self._ok(self.client.expunge(), "EXPUNGE")

    async def add_keyword(self, uids: list[int], keyword: str) -> None:
        """Tag messages (e.g. why they went to Retry); servers without keywords ignore it."""
        await self._call(self.client.uid("store", uid_set(uids), "+FLAGS.SILENT",
                                         f"({keyword})"))

    async def wait_for_news(self, seconds: float) -> bool:
        """IDLE (RFC 2177) up to ``seconds``; True when the server announced new mail."""
        queue = self.client.protocol.idle_queue
        while not queue.empty():  # pushes left over from the previous IDLE are stale
            queue.get_nowait()
        idle = await self._call(self.client.idle_start(timeout=seconds + 60))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        news = False
        try:
            while not news and (left := deadline - loop.time()) > 0:
                push = await self._call(self._next_push(left), timeout=None)
                if push is None or push == STOP_WAIT_SERVER_PUSH:
                    break  # the interval is over, or interrupt_idle()
                news = any(isinstance(line, bytes) and _EXISTS.match(line) for line in push)
        finally:
            if not self.closed and self.client.has_pending_idle():
                self.client.idle_done()
                await self._call(idle)
        return news

    async def _next_push(self, seconds: float) -> Any:
        """What the server sends while idling, or None after ``seconds`` of silence."""
        try:
            return await self.client.wait_server_push(timeout=seconds)
        except TimeoutError:
            return None

    def interrupt_idle(self) -> None:
        """End a ``wait_for_news`` early (shutdown)."""
        if self.client.has_pending_idle():
            self.client.protocol.idle_queue.put_nowait(STOP_WAIT_SERVER_PUSH)

    async def logout(self) -> None:
        """Say goodbye politely; a session already gone is fine."""
        if not self.closed:
            with contextlib.suppress(ImapError, AioImapException, OSError):
                await self._call(self.client.logout())
        self.abort()

    def abort(self) -> None:
        self._aborted = True
        transport = self.client.protocol.transport
        if transport is not None:
            transport.close()


def _parse_fetch(lines: list[Any]) -> list[tuple[int, int, bytes | None]]:
    """FETCH responses → (uid, size, body); unsolicited FETCHes without a UID are skipped."""
    records: list[tuple[int, int, bytes | None]] = []
    meta, body = b"", None

    def flush() -> None:
        uid = _UID.search(meta)
        if uid:
            size = _SIZE.search(meta)
            records.append((int(uid.group(1)), int(size.group(1)) if size else 0, body))

    for line in lines:
        if isinstance(line, bytearray):
            body = bytes(line)
        elif _FETCH_START.match(line):
            if meta:
                flush()
            meta, body = line, None
        else:
            meta += b" " + line
    if meta:
        flush()
    return records


def _text(lines: list[Any]) -> str:
    return " ".join(bytes(line).decode("utf-8", "replace") for line in lines).strip()
