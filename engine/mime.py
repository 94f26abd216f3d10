"""MIME parsing: raw bytes in, a ParsedMessage out (pipeline step 1, see DESIGN.md).

Contract (other modules rely on it; keep it stable):

- ``parse_message(raw: bytes, received_at: datetime) -> ParsedMessage`` never raises, for any
  input bytes. Problems are listed in ``ParsedMessage.defects`` instead.
- ``normalize_message_id(value) -> str | None`` returns ``<local@domain>`` (angle brackets,
  surrounding whitespace and comments stripped) or None when nothing usable is there.
- ``ParsedMessage.message_id`` is always set; when the mail has none, a deterministic one is
  generated from a hash of the raw bytes (``<sha256hex[:32]@postdesk.invalid>``) and
  ``message_id_generated`` is True, so a retried delivery gets the same id.
- ``ParsedMessage.body_hash`` is the sha256 hex digest of the raw body (bytes after the first
  blank line, line endings normalised to CRLF); two deliveries of one message that differ only
  in trace headers (Received, Delivered-To) share it.
- ``date`` is a timezone-aware UTC datetime; a missing or unparseable Date falls back to
  ``received_at`` (with a defect noted).

The work is shared out: engine.mimetree builds the part tree from the raw bytes,
engine.mimebodies picks and decodes the bodies and reads attachment details,
engine.headertext decodes header values and engine.charsets turns bytes into text. This
module keeps the dataclasses, addresses, dates and message ids, and puts it all together.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import Message
from email.utils import getaddresses, parsedate_to_datetime

from engine.charsets import clean_text, header_hint
from engine.headertext import LINE_BREAK, decoded, read_headers
from engine.mimebodies import (
    Leaves,
    bodies,
    email_defects,
    eml_name,
    part_content_id,
    part_filename,
    part_payload,
    sort_leaves,
)
from engine.mimetree import TreeBuilder, body_start, real_type
from engine.wire import compact


@compact()
@dataclass(frozen=True, slots=True)
class Address:
    """One mailbox from an address header, decoded (RFC 2047) and lower-cased address."""

    name: str
    addr: str


@compact()
@dataclass(frozen=True, slots=True)
class Attachment:
    """A non-body MIME part: attachment, inline image or nested message/rfc822."""

    filename: str | None
    content_type: str
    disposition: str  # "attachment" or "inline"
    content_id: str | None
    data: bytes


@compact("date")  # crosses the pipe to the writer process with every delivery
@dataclass(slots=True)
class ParsedMessage:
    """What the pipeline needs to know about one mail; built by ``parse_message``."""

    message_id: str
    message_id_generated: bool
    subject: str
    from_: Address | None
    to: list[Address]
    cc: list[Address]
    reply_to: list[Address]
    date: datetime
    in_reply_to: str | None
    references: list[str]
    text: str
    html: str | None
    charset: str | None
    body_hash: str
    attachments: list[Attachment] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)

    @property
    def participants(self) -> set[str]:
        """Every address on the From/To/Cc/Reply-To lines (lower case)."""
        people = [self.from_, *self.to, *self.cc, *self.reply_to]
        return {a.addr for a in people if a is not None and a.addr}


_FUTURE_SLACK = timedelta(days=1)  # sender clocks and zone mistakes; beyond is out of range
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NESTED_TYPES = frozenset({"message/rfc822", "message/global"})

_ANGLE_ID = re.compile(r"<([^<>]*)>")
_COMMENT = re.compile(r"\([^()]*\)")  # innermost RFC 5322 comment
_ADDRESS_HINT = re.compile(r"[@<>(),;:]")  # without these, several words are only a name
_ADDR_SPEC = r'[^<>@\s",;:()\\\[\]]+@[^<>@\s",;:()\\\[\]]+'  # no quoting, no route, no group
_SIMPLE_ADDRESS = re.compile(  # "Name" <a@b>, Name <a@b>, <a@b>, a@b: nothing to unquote
    rf'\s*(?:(?:"([^"\\]*)"|([^"<>@,;:()\\\[\]]*?))\s*<({_ADDR_SPEC})>|({_ADDR_SPEC}))\s*'
)
_ADDR_JUNK = re.compile(r'[\s<>"]')
_ADDR_SPEC_IN = re.compile(r'[^\s<>"]+@[^\s<>"]+')
_ID_FORBIDDEN = re.compile(r"[\s<>()\x00-\x1f\x7f\ufffd]")


# --- addresses, dates, message ids -------------------------------------------------------------


def _addresses(text: str | None, hint: str | None) -> list[Address]:
    """Mailboxes of an address header; group syntax flattened, junk salvaged, never raises."""
    if not text or not text.strip():
        return []
    simple = _SIMPLE_ADDRESS.fullmatch(text)
    if simple:  # one plain mailbox, the usual case: skip the stdlib's slow tokenizer
        quoted, bare, angle, plain = simple.groups()
        name = quoted if quoted is not None else " ".join((bare or "").split())
        return [Address(decoded(name, hint), (angle or plain).lower())]
    if not _ADDRESS_HINT.search(text) and len(text.split()) > 1:  # "From: John Smith"
        return [Address(decoded(text, hint), "")]
    try:
        pairs = getaddresses([text])
    except Exception:  # stdlib parser bugs on hostile input (CPython gh-102988 and kin)
        pairs = []
    found = []
    for name, addr in pairs:
        name, addr = decoded(name, hint), addr.strip().lower()
        if _ADDR_JUNK.search(addr) and (spec := _ADDR_SPEC_IN.search(addr)):
            addr = spec.group(0)  # '"unterminated <a@b' and the like: keep the address part
        if name or addr:
            found.append(Address(name, addr))
    return found


def _as_utc(moment: datetime) -> datetime:
    """Aware UTC datetime; a naive one is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _parse_date(text: str | None, received_at: datetime, defects: list[str]) -> datetime:
    """The Date header in UTC, or ``received_at`` when it is missing, garbled or implausible."""
    fallback = _as_utc(received_at)
    if not text or not text.strip():
        defects.append("no Date header; using the time received")
        return fallback
    try:
        date = _as_utc(parsedate_to_datetime(text))  # "-0000" gives naive: UTC (RFC 5322 §3.3)
    except (TypeError, ValueError, IndexError, OverflowError):
        defects.append(f"unparseable Date {text[:80]!r}; using the time received")
        return fallback
    if not _EPOCH <= date <= fallback + _FUTURE_SLACK:
        defects.append(f"Date {text[:80]!r} out of range; using the time received")
        return fallback
    return date


def _strip_comments(text: str) -> str:
    """Remove RFC 5322 comments, nested ones from the inside out (depth capped)."""
    for _ in range(8):
        if "(" not in text:
            break
        stripped = _COMMENT.sub(" ", text)
        if stripped == text:
            break
        text = stripped
    return text


def _message_ids(value: str | None) -> list[str]:
    """All usable message ids in a header value, normalized, in order, without repeats."""
    if not value:
        return []
    text = _strip_comments(LINE_BREAK.sub("", value))
    candidates = _ANGLE_ID.findall(text) or text.split()  # brackets optional for the lenient
    found: dict[str, None] = {}
    for candidate in candidates:
        ident = "".join(candidate.split()).strip("<>")  # folding inside an id: glue it back
        local, at, domain = ident.rpartition("@")
        if at and local and domain and not _ID_FORBIDDEN.search(ident) and len(ident) < 990:
            found.setdefault(f"<{ident}>")
    return list(found)


def normalize_message_id(value: str | None) -> str | None:
    """``<local@domain>`` from a Message-ID-like value, or None when nothing usable is there."""
    if not isinstance(value, str):
        return None
    ids = _message_ids(clean_text(value))
    return ids[0] if ids else None


def _generated_id(raw: bytes) -> str:
    """Deterministic id for a mail without one, so a retried delivery gets the same id."""
    return f"<{hashlib.sha256(raw).hexdigest()[:32]}@postdesk.invalid>"


# --- body hash, attachments --------------------------------------------------------------------


def _raw_body(raw: bytes) -> bytes:
    """The bytes after the first blank line; empty when there is none."""
    return raw[body_start(raw) :]


def _body_hash(raw: bytes) -> str:
    """sha256 of the body with CRLF line ends, so LF and CRLF copies of one mail agree."""
    body = _raw_body(raw)
    if body.count(b"\n") != body.count(b"\r\n"):
        body = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return hashlib.sha256(body).hexdigest()


def _attachment(part: Message, related: bool, hint: str | None) -> Attachment:
    """One non-body part; a cid-referenced part of multipart/related counts as inline."""
    ctype, data = real_type(part), part_payload(part)
    content_id = part_content_id(part)
    declared = part.get_content_disposition()
    inline = declared == "inline" or (declared is None and related and content_id is not None)
    filename = part_filename(part, hint)
    if filename is None and ctype in _NESTED_TYPES:
        filename = eml_name(data, hint)
    return Attachment(filename, ctype, "inline" if inline else "attachment", content_id, data)


# --- entry points ------------------------------------------------------------------------------


def _message_id(text: str | None, raw: bytes, defects: list[str]) -> tuple[str, bool]:
    """The normalized Message-ID, or a generated one (True) when there is none."""
    ident = normalize_message_id(text)
    if ident is not None:
        return ident, False
    defects.append("no usable Message-ID; generated one from the raw bytes")
    return _generated_id(raw), True


def _parse(raw: bytes, received_at: datetime) -> ParsedMessage:
    """The real work of ``parse_message``; may raise on input the stdlib chokes on."""
    msg, defects, leaves = TreeBuilder().tree(raw), [], Leaves()
    sort_leaves(msg, leaves)
    text, html, charset = bodies(leaves, defects)
    hint = header_hint(charset)
    attachments = [_attachment(part, related, hint) for part, related in leaves.others]
    headers, first = read_headers(msg, hint, defects)
    message_id, generated = _message_id(first.get("message-id"), raw, defects)
    from_ = _addresses(first.get("from"), hint)
    return ParsedMessage(
        message_id=message_id, message_id_generated=generated,
        subject=decoded(first.get("subject", ""), hint),
        from_=from_[0] if from_ else None, to=_addresses(first.get("to"), hint),
        cc=_addresses(first.get("cc"), hint), reply_to=_addresses(first.get("reply-to"), hint),
        date=_parse_date(first.get("date"), received_at, defects),
        in_reply_to=normalize_message_id(first.get("in-reply-to")),
        references=_message_ids(first.get("references")),
        text=text, html=html, charset=charset, body_hash=_body_hash(raw),
        attachments=attachments, headers=headers,
        defects=list(dict.fromkeys(email_defects(leaves) + defects)),
    )


def _as_bytes(raw: object) -> bytes:
    """The input as bytes (bytearray and memoryview are welcome too)."""
    if isinstance(raw, bytes | bytearray | memoryview):
        return bytes(raw)
    return str(raw).encode("utf-8", "replace")


def _fallback(raw: bytes, received_at: datetime, exc: Exception) -> ParsedMessage:
    """Minimal result when parsing failed outright: the raw mail must still be stored."""
    try:
        date = _as_utc(received_at)
    except (AttributeError, TypeError, ValueError, OverflowError):
        date = datetime.now(UTC)
    return ParsedMessage(
        message_id=_generated_id(raw), message_id_generated=True, subject="", from_=None,
        to=[], cc=[], reply_to=[], date=date, in_reply_to=None, references=[],
        text=clean_text(_raw_body(raw).decode("utf-8", "replace")), html=None, charset=None,
        body_hash=_body_hash(raw),
        defects=[f"message could not be parsed ({type(exc).__name__}: {exc}); raw kept"],
    )


def parse_message(raw: bytes, received_at: datetime) -> ParsedMessage:
    """Parse one raw mail into a ParsedMessage; never raises (problems go to ``defects``)."""
    data = _as_bytes(raw)
    try:
        return _parse(data, received_at)
    except Exception as exc:  # last resort: a parse fault must never lose or bounce mail
        return _fallback(data, received_at, exc)
