"""The inline SMTP and LMTP front end (aiosmtpd), milter-style.

An MTA relays support mail here. RCPT is checked against the configured accounts; DATA runs
``engine.intake`` inside the transaction and answers 250 only after the message is committed.
LMTP answers once per recipient (RFC 2033). Every reply we write is one of the constants
below, with RFC 3463 enhanced status codes.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import re
import secrets
import socket
import ssl
import time
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session

from engine.accounts import AccountDirectory
from engine.deliveries import Envelope as IntakeEnvelope
from engine.deliveries import Rejected
from engine.intake import Intake, StoreUnavailable

log = logging.getLogger(__name__)

OK_RCPT = "250 2.1.5 Recipient ok"
OK_QUEUED = "250 2.0.0 Ok: queued as {queue_id}"
NO_SUCH_USER = "550 5.1.1 <{address}>: no support account here for this address"
TOO_BIG = "552 5.3.4 Message exceeds the size limit of {limit} bytes"
NOT_ALLOWED = "554 5.7.1 Your network is not allowed to deliver here"
TEMP_FAILURE = "451 4.3.0 Temporary failure storing the message, please retry"
REJECTED = "550 5.7.1 {message}"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, please retry"
LISTEN_BACKLOG = 1024  # connections the kernel queues while every worker is busy

# aiosmtpd writes a few fixed replies itself; we give them enhanced status codes.
_AIOSMTPD_REPLIES = {
    "552 Error: Too much mail data": TOO_BIG,
    "552 Error: message size exceeds fixed maximum message size": TOO_BIG,
}


@dataclass
class GatewayStats:
    """Counters for /healthz and the logs."""

    accepted: int = 0
    duplicates: int = 0
    needs_attention: int = 0
    rejected_recipients: int = 0
    tempfailed: int = 0
    rejected_by_rules: int = 0
    refused_clients: int = 0
    in_flight: int = 0
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class IntakeHandler:
    """aiosmtpd handler: recipients → accounts, DATA → ``Intake.receive``."""

    def __init__(self, intake: Intake, directory: AccountDirectory, hostname: str,
                 stats: GatewayStats, *, lmtp: bool):
        self.intake = intake
        self.directory = directory
        self.hostname = hostname
        self.stats = stats
        self.lmtp = lmtp
        self.connections: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self._boot = secrets.token_hex(4)

    def in_transaction(self) -> int:
        """Open connections between MAIL FROM and the end of DATA (drained on shutdown)."""
        return sum(1 for proto in self.connections
                   if proto.transport is not None and not proto.transport.is_closing()
                   and proto.envelope is not None and proto.envelope.mail_from is not None)

    def close_connections(self) -> None:
        for proto in list(self.connections):
            if proto.transport is not None:
                proto.transport.close()

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        # aiosmtpd reads commands one at a time, so pipelining (RFC 2920) is safe to offer;
        # our replies carry RFC 3463 codes, so say so (RFC 2034).
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if self.directory.lookup(address) is None:
            self.stats.rejected_recipients += 1
            return NO_SUCH_USER.format(address=address)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return OK_RCPT

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.stats.in_flight += 1
        try:
            status = await self._deliver(session, envelope)
        finally:
            self.stats.in_flight -= 1
        # LMTP: one reply per accepted recipient; they share one stored message
        return "\r\n".join([status] * len(envelope.rcpt_tos)) if self.lmtp else status

    async def _deliver(self, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        recipients = [(self.directory.lookup(r), r) for r in envelope.rcpt_tos]
        intake_env = IntakeEnvelope(
            mail_from=envelope.mail_from or "",
            recipients=[(acc, rcpt) for acc, rcpt in recipients if acc is not None],
            received_header=self._received(session, envelope),
            protocol="LMTP" if self.lmtp else ("ESMTP" if session.extended_smtp else "SMTP"),
        )
        try:
            receipt = await self.intake.receive(bytes(raw), intake_env)
        except StoreUnavailable as exc:
            self.stats.tempfailed += 1
            log.warning("tempfail for %s: %s", envelope.mail_from, exc)
            return TEMP_FAILURE
        if isinstance(receipt, Rejected):
            self.stats.rejected_by_rules += 1
            log.info("rejected by rule %s: from=%s to=%s", receipt.rule, envelope.mail_from,
                     ",".join(envelope.rcpt_tos))
            return REJECTED.format(message=_one_line(receipt.message))
        self.stats.accepted += 1
        self.stats.duplicates += receipt.duplicate
        self.stats.needs_attention += receipt.needs_attention
        return OK_QUEUED.format(queue_id=receipt.queue_id)

    def _received(self, session: Session, envelope: Envelope) -> str:
        """Our RFC 5321 §4.4 trace line (kept beside the byte-exact message)."""
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        helo = session.host_name or "unknown"
        proto = "LMTP" if self.lmtp else ("ESMTP" if session.extended_smtp else "SMTP")
        if session.ssl:
            proto += "S"
        rcpt = envelope.rcpt_tos[0] if len(envelope.rcpt_tos) == 1 else None
        for_part = f"\r\n\tfor <{rcpt}>" if rcpt else ""
        return (f"Received: from {helo} ([{peer}])\r\n\tby {self.hostname} (Postdesk) with "
                f"{proto} id {self._trace_id()}{for_part};\r\n\t{_rfc5322_now()}\r\n")

    def _trace_id(self) -> str:
        # unique per process and delivery; a counter, because os.urandom costs a syscall
        self._traces = getattr(self, "_traces", 0) + 1
        return f"{self._boot}{self._traces:x}"

    async def handle_exception(self, error: Exception) -> str:
        # our own faults must make the MTA retry, never bounce (aiosmtpd would answer 500)
        log.exception("gateway fault", exc_info=error)
        self.stats.tempfailed += 1
        return TEMP_FAILURE


def _one_line(text: str) -> str:
    """A rule's text as a safe single SMTP reply line."""
    clean = " ".join(text.split())
    return "".join(c for c in clean if 32 <= ord(c) < 127)[:400] or "Message refused by policy"


@functools.lru_cache(maxsize=2)
def _rfc5322_date(second: int) -> str:
    return format_datetime(datetime.fromtimestamp(second, UTC))


def _rfc5322_now() -> str:
    """The current time as an RFC 5322 date, formatted once per second (a hot path)."""
    return _rfc5322_date(int(time.time()))


class _Guarded:
    """Mixin for SMTP/LMTP: refuse clients outside the allowed networks, fix reply codes."""

    allowed_networks: list[Any] = []
    stats: GatewayStats | None = None

    _held: bytes = b""  # replies not yet written (see ``push``)

    async def push(self, status: Any) -> None:
        """Send a reply; replies to pipelined commands go out together.

        A client that pipelines (RFC 2920: MAIL, RCPT... DATA in one packet, as Postfix
        does) waits for the whole group's replies, so a 250 (or a continuation line of a
        multi-line reply) is held while the next command is already buffered and written
        with the next reply: one write instead of one per command. Anything else, or a
        reply after which we would wait for the client, flushes at once.
        """
        if isinstance(status, str) and status in _AIOSMTPD_REPLIES:
            status = _AIOSMTPD_REPLIES[status].format(limit=self.data_size_limit)
        line = status if isinstance(status, bytes) else status.encode(  # type: ignore[attr-defined]
            "utf-8" if self.enable_SMTPUTF8 else "ascii")  # type: ignore[attr-defined]
        if line[3:4] == b"-" or (line[:3] == b"250" and self._command_waiting()):
            self._held += line + b"\r\n"
            return
        held, self._held = self._held, b""
        await super().push(held + line)  # type: ignore[misc]

    async def smtp_DATA(self, arg: str) -> None:
        """DATA as aiosmtpd answers it (same checks, replies and limits), but the message is
        read in blocks rather than line by line: aiosmtpd's per-line loop was most of the
        event loop's time on a 20 KB message and stalls it on big ones."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):  # type: ignore[attr-defined]
            return
        if not self.envelope.rcpt_tos:  # type: ignore[attr-defined]
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            content = await read_data(self._reader, self.data_size_limit,  # type: ignore[attr-defined]
                                      self.line_length_limit)  # type: ignore[attr-defined]
        except asyncio.CancelledError:  # the connection went away mid-DATA
            self._writer.close()  # type: ignore[attr-defined]
            raise
        if content is None:
            return
        if isinstance(content, str):  # too big or a line too long: said after the dot
            await self.push(content)
            self._set_post_data_state()  # type: ignore[attr-defined]
            return
        self.envelope.content = self.envelope.original_content = content  # type: ignore[attr-defined]
        status = await self._call_handler_hook("DATA")  # type: ignore[attr-defined]
        self._set_post_data_state()  # type: ignore[attr-defined]
        await self.push("250 OK" if status is MISSING else status)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """The address of MAIL/RCPT and the rest of the line. The common ``<local@domain>``
        (dot-atom local part, plain domain) is read with one regex; anything else goes
        through aiosmtpd's full RFC 5322 parser (which also builds a class per call)."""
        simple = _SIMPLE_PATH.match(arg)
        rest = arg[simple.end():].lstrip() if simple else ""
        if simple is None or ".." in simple[1] or simple[1].startswith(".") or (
                rest.startswith("(")) or (  # a comment: the full parser skips it
                self.local_part_limit  # type: ignore[attr-defined]
                and len(simple["local"]) > self.local_part_limit):  # type: ignore[attr-defined]
            return super()._getaddr(arg)  # type: ignore[misc]
        return simple[1], rest

    def _command_waiting(self) -> bool:
        """Whether a whole command line is already buffered (the client pipelined)."""
        buffered = getattr(self._reader, "_buffer", None)  # type: ignore[attr-defined]
        return buffered is not None and b"\n" in buffered

    async def _handle_client(self) -> None:
        if not _peer_allowed(self.session.peer, self.allowed_networks):
            if self.stats is not None:
                self.stats.refused_clients += 1
            await self.push(NOT_ALLOWED)
            self.transport.close()
            return
        await super()._handle_client()  # type: ignore[misc]


class GuardedSMTP(_Guarded, SMTP):
    pass


class GuardedLMTP(_Guarded, LMTP):
    pass


# <local@domain>: an RFC 5322 dot-atom local part (no leading, trailing or double dot: those
# and quoted strings, literals, UTF-8 go to aiosmtpd's parser) and a plain domain name
_SIMPLE_PATH = re.compile(
    r"\s*<((?P<local>[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+(?<!\.))@[A-Za-z0-9](?:[A-Za-z0-9.-]*"
    r"[A-Za-z0-9])?)>")
DATA_BLOCK = 1 << 20  # more than a stream reader holds (one 256 KiB read plus its limit)
END_OF_DATA = b"\r\n.\r\n"
TOO_MUCH_DATA = "552 Error: Too much mail data"
LINE_TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"


async def read_data(reader: asyncio.StreamReader, size_limit: int | None,
                    line_limit: int) -> bytes | str | None:
    """Read a message after 354 up to the lone dot (RFC 5321 4.5.2), in blocks.

    Returns the dot-unstuffed bytes, an error reply when the message is over ``size_limit``
    bytes or has a line over ``line_limit`` bytes with its CRLF (aiosmtpd's replies, sent
    after the dot as RFC 5321 4.2.5 implies), or None if the client went away. Whatever the
    client pipelined after the dot is handed back to ``reader`` for the next command.
    """
    buf = bytearray(b"\r\n")  # a virtual line end: the dot may close the very first line
    scan, dropped = 0, 0  # where to look for the dot next; bytes discarded when too big
    while (end := buf.find(END_OF_DATA, scan)) < 0:
        scan = max(len(buf) - len(END_OF_DATA) + 1, 0)
        if size_limit and dropped + len(buf) - 2 > size_limit:
            # too big: keep reading to the dot, but only what could be the start of it
            keep = len(END_OF_DATA) - 1
            dropped += len(buf) - keep
            del buf[:-keep]
            scan = 0
        block = await reader.read(DATA_BLOCK)
        if not block:
            return None
        buf += block
    if len(buf) > end + len(END_OF_DATA) and not reader.at_eof():
        # the buffer was empty after our read and nothing ran since: this goes back in order
        reader.feed_data(bytes(buf[end + len(END_OF_DATA):]))
    if dropped or (size_limit and end > size_limit):
        return TOO_MUCH_DATA
    data = bytes(buf[:end + 2])  # the virtual CRLF, the lines, the last line's CRLF
    if len(data) > line_limit and max(map(len, data.split(b"\r\n"))) > line_limit - 2:
        return LINE_TOO_LONG
    return data.replace(b"\r\n.", b"\r\n")[2:]


def _peer_allowed(peer: Any, networks: list[Any]) -> bool:
    if not isinstance(peer, tuple):  # a unix socket: local by definition
        return True
    try:
        addr = ipaddress.ip_address(peer[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks if addr.version == net.version)


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def start_listener(
    handler: IntakeHandler, sock: socket.socket, *, networks: list[Any], size_limit: int,
    hostname: str, tls: ssl.SSLContext | None, timeout: float,
) -> asyncio.Server:
    """Serve SMTP or LMTP (as ``handler`` says) on an already bound socket."""
    loop = asyncio.get_running_loop()
    cls = GuardedLMTP if handler.lmtp else GuardedSMTP

    def factory() -> SMTP:
        proto = cls(handler, data_size_limit=size_limit, enable_SMTPUTF8=True,
                    hostname=hostname, ident="Postdesk ESMTP", tls_context=tls,
                    timeout=timeout, loop=loop)
        proto.allowed_networks = networks
        proto.stats = handler.stats
        handler.connections.add(proto)
        return proto

    return await loop.create_server(factory, sock=sock, backlog=LISTEN_BACKLOG)
