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
"""

from __future__ import annotations

import binascii
import codecs
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.errors import CloseBoundaryNotFoundDefect, MessageDefect
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser
from email.policy import compat32
from email.utils import getaddresses, parsedate_to_datetime
from functools import lru_cache

from charset_normalizer import CharsetMatch, from_bytes
from inscriptis import get_text


@dataclass(frozen=True, slots=True)
class Address:
    """One mailbox from an address header, decoded (RFC 2047) and lower-cased address."""

    name: str
    addr: str


@dataclass(frozen=True, slots=True)
class Attachment:
    """A non-body MIME part: attachment, inline image or nested message/rfc822."""

    filename: str | None
    content_type: str
    disposition: str  # "attachment" or "inline"
    content_id: str | None
    data: bytes


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


# --- the parser --------------------------------------------------------------------------------


class _RawMessage(Message):
    """compat32 Message that makes the feed parser keep message/* parts as raw text.

    FeedParser descends into a part when ``get_content_type()`` starts with ``message/``;
    reporting such parts as octet-stream keeps their exact bytes for the nested-message
    attachment (re-serialising a parsed message would refold headers and line endings).
    Our own code asks ``_real_type`` for the declared type.
    """

    def get_content_type(self) -> str:
        """The declared type, except message/* which passes for opaque bytes."""
        ctype = super().get_content_type()
        return "application/octet-stream" if ctype.startswith("message/") else ctype


def _real_type(part: Message) -> str:
    """The declared content type, lower case (RFC 2045 defaults apply)."""
    return Message.get_content_type(part)


# compat32 costs ~0.04 ms per 1 KB message; email.policy.default ~0.4 ms (DESIGN.md budget).
_PARSER = BytesParser(_class=_RawMessage, policy=compat32)
_HEAD_PARSER = BytesHeaderParser(_class=_RawMessage, policy=compat32)

# Bounds that keep a hostile mail from stalling the SMTP transaction (no real mail nears them).
_MAX_DEPTH = 40  # MIME nesting
_MAX_PARTS = 1000  # MIME parts in one mail
_MAX_HEADER_CHARS = 32768  # one header value (a References line of ~500 ids)
_MAX_HTML_RENDER = 200_000  # inscriptis needs ~1.5 s for 1 MB of HTML, ~5 ms for 20 KB
# What the email package raises on hostile parameters (a NUL in an RFC 2231 charset, mixed
# continuation numbering), where it should have noted a defect instead.
_STDLIB_FAULTS = (LookupError, UnicodeError, ValueError, TypeError, IndexError)
_FUTURE_SLACK = timedelta(days=1)  # sender clocks and zone mistakes; beyond is out of range
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NESTED_TYPES = frozenset({"message/rfc822", "message/global"})

_BREAK = re.compile(r"\r\n|[\r\n]")
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?]*)\?=")  # RFC 2047 §2
_ANGLE_ID = re.compile(r"<([^<>]*)>")
_COMMENT = re.compile(r"\([^()]*\)")  # innermost RFC 5322 comment
_ADDRESS_HINT = re.compile(r"[@<>(),;:]")  # without these, several words are only a name
_ADDR_SPEC = r'[^<>@\s",;:()\\\[\]]+@[^<>@\s",;:()\\\[\]]+'  # no quoting, no route, no group
_SIMPLE_ADDRESS = re.compile(  # "Name" <a@b>, Name <a@b>, <a@b>, a@b: nothing to unquote
    rf'\s*(?:(?:"([^"\\]*)"|([^"<>@,;:()\\\[\]]*?))\s*<({_ADDR_SPEC})>|({_ADDR_SPEC}))\s*'
)
_ADDR_JUNK = re.compile(r'[\s<>"]')
_ADDR_SPEC_IN = re.compile(r'[^\s<>"]+@[^\s<>"]+')
_HEADER_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_ID_FORBIDDEN = re.compile(r"[\s<>()\x00-\x1f\x7f\ufffd]")
_SURROGATES = re.compile("[\ud800-\udfff]")  # lone surrogates (and NUL) break storage
_FILENAME_JUNK = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_EML_JUNK = re.compile(r'[\\/:*?"<>|]')
_C1_BYTES = re.compile(rb"[\x80-\x9f]")
_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9._:-]{1,40})""",
                           re.IGNORECASE)

# WHATWG Encoding Standard style: mail clients decode these labels with a Windows superset.
_SUPERSETS = {"shift_jis": "cp932", "euc_kr": "cp949", "big5": "big5hkscs",
              "iso8859-9": "cp1254", "tis-620": "cp874"}
_AS_GB18030 = frozenset({"gb2312", "gbk"})  # gb18030 is a strict superset of both
_LATIN1_LIKE = frozenset({"iso8859-1", "iso8859-15"})
_UNSAFE_CODECS = frozenset({"unicode-escape", "raw-unicode-escape", "idna", "punycode",
                            "undefined", "unicode_escape", "raw_unicode_escape"})
# Charsets worth guessing for mail, most common first (charset-normalizer's codec names).
_DETECTABLE = (
    "utf_8", "cp1252", "iso8859_15", "cp1250", "iso8859_2", "cp1251", "koi8_r", "koi8_u",
    "iso8859_5", "cp1253", "iso8859_7", "cp1254", "cp1257", "cp1255", "cp1256", "cp932",
    "euc_jp", "iso2022_jp", "gb18030", "big5", "cp949", "cp874", "cp1258", "utf_16", "utf_32",
)


# --- characters and charsets -------------------------------------------------------------------


def _clean(text: str) -> str:
    """Replace NUL and lone surrogates, which no database or template should ever see."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if not text.isascii():
        try:
            text.encode("utf-8")  # C-speed check; a regex scan of a 20 KB text costs 0.2 ms
        except UnicodeEncodeError:
            text = _SURROGATES.sub("\ufffd", text)
    return text


@lru_cache(maxsize=256)
def _codec_name(label: str | None) -> str | None:
    """Python's name for a charset label, or None when unknown or not a text charset."""
    if not label or len(label) > 40 or not label.isascii():
        return None
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError, TypeError):
        return None
    text_codec = getattr(info, "_is_text_encoding", True)  # base64, zlib... are not
    return info.name if text_codec and info.name not in _UNSAFE_CODECS else None


def _clean_label(label: str | None) -> str | None:
    """A charset parameter as senders write it: quotes, spaces and case vary."""
    label = (label or "").strip().strip("\"'").strip().lower()
    return label or None


def _candidates(label: str | None, data: bytes) -> list[str]:
    """Codecs to try strictly, best first, for bytes declared as ``label``."""
    name = _codec_name(label)
    if name is None or (name == "ascii" and not data.isascii()):
        if data.isascii():
            return ["us-ascii"]
        # A missing or false us-ascii label on 8-bit text: utf-8 is far likelier than not.
        return ["utf-8", "windows-1252"] if name == "ascii" else ["utf-8"]
    if name in _LATIN1_LIKE and _C1_BYTES.search(data):
        return ["windows-1252", label]  # C1 controls are never meant; browsers do the same
    if name in _AS_GB18030:
        return ["gb18030"]
    superset = _SUPERSETS.get(name)
    return [label, superset] if superset else [label]


def _decode_strict(data: bytes, codecs_: list[str | None]) -> tuple[str, str] | None:
    """The first codec that decodes ``data`` without error, with its text."""
    for codec in codecs_:
        if not codec:
            continue
        try:
            return data.decode(codec), codec
        except (LookupError, UnicodeError):
            continue
    return None


def _mostly_utf8(data: bytes) -> str | None:
    """utf-8 with a few stray bytes (a pasted cp1252 quote) is still utf-8: replace those."""
    text = data.decode("utf-8", "replace")
    bad = text.count("\ufffd")
    valid_extra = len(text.encode("utf-8")) - len(text) - 2 * bad  # continuation bytes
    return text if valid_extra >= 2 * bad else None


def _detect(data: bytes) -> tuple[str, str]:
    """Guess with charset-normalizer among mail charsets (given all codecs it calls short
    German text big5); ties go to the more common charset. utf-8 when it has no answer."""
    try:
        matches = list(from_bytes(data, cp_isolation=list(_DETECTABLE)))
    except Exception:  # third-party heuristics on hostile bytes must not sink the parse
        matches = []
    if not matches:
        return data.decode("utf-8", "replace"), "utf-8"
    best = min(matches, key=_detect_rank).encoding
    return data.decode(best, "replace"), best.replace("_", "-")


def _detect_rank(match: CharsetMatch) -> tuple[float, float, int]:
    """Less chaos, more language coherence, then the charset more common in mail."""
    order = _DETECTABLE.index(match.encoding) if match.encoding in _DETECTABLE else 99
    return round(match.chaos, 3), -round(match.coherence, 3), order


def _decode_body(data: bytes, label: str | None, defects: list[str]) -> tuple[str, str]:
    """Decode a text part: declared charset, else detection, else utf-8 with replacement."""
    if label and _codec_name(label) is None:
        defects.append(f"unknown charset {label!r} in a text part; guessed instead")
    candidates = _candidates(label, data)
    found = _decode_strict(data, candidates)
    if found is None and "utf-8" in candidates and (text := _mostly_utf8(data)) is not None:
        defects.append("invalid utf-8 sequences in a text part were replaced")
        found = text, "utf-8"
    if found is None:
        found = _detect(data)
        defects.append(f"text part does not decode as {candidates[0]}; detected {found[1]}")
    return found[0].removeprefix("\ufeff"), found[1]


def _decode_header_bytes(data: bytes, label: str | None, hint: str | None) -> str:
    """Header bytes: declared charset, utf-8, the body's charset, windows-1252, latin-1."""
    found = _decode_strict(data, [*_candidates(label, data), "utf-8", hint, "windows-1252"])
    return found[0] if found else data.decode("latin-1")


# --- header text -------------------------------------------------------------------------------


def _raw_text(value: object, hint: str | None) -> str:
    """Unfold a raw header value (RFC 5322 §2.2.3) and decode raw 8-bit bytes in it."""
    text = (value if isinstance(value, str) else str(value))[:_MAX_HEADER_CHARS]
    if "\n" in text or "\r" in text:
        text = _BREAK.sub("", text)
    if not text.isascii():  # the parser hands 8-bit bytes over as surrogate escapes
        text = _decode_header_bytes(text.encode("utf-8", "surrogateescape"), None, hint)
    return _clean(text)


def _word_bytes(match: re.Match[str]) -> tuple[str, bytes] | None:
    """Charset and bytes of one encoded-word; None when its payload is malformed."""
    charset = match.group(1).split("*", 1)[0].lower()  # RFC 2231 §5 language suffix
    payload = match.group(3).encode("utf-8")
    if match.group(2) in "qQ":
        return charset, binascii.a2b_qp(payload, header=True)
    try:
        return charset, binascii.a2b_base64(payload)
    except binascii.Error:
        try:  # missing padding is the usual fault; excess padding is ignored
            return charset, binascii.a2b_base64(payload + b"==")
        except binascii.Error:
            return None


def _flush(run: list[tuple[str, bytes]], hint: str | None) -> str:
    """Decode adjacent encoded-words; same-charset bytes are joined first, since senders split
    multibyte characters across words."""
    merged: list[tuple[str, bytes]] = []
    for charset, data in run:
        if merged and merged[-1][0] == charset:
            merged[-1] = (charset, merged[-1][1] + data)
        else:
            merged.append((charset, data))
    return "".join(_decode_header_bytes(data, charset, hint) for charset, data in merged)


def _decode_words(text: str, hint: str | None) -> str:
    """Decode RFC 2047 encoded-words; whitespace between two of them is dropped (§6.2)."""
    if "=?" not in text:
        return text
    out: list[str] = []
    run: list[tuple[str, bytes]] = []
    pos = 0
    for match in _ENCODED_WORD.finditer(text):
        word = _word_bytes(match)
        if word is None:
            continue  # a malformed word stays as literal text
        gap = text[pos : match.start()]
        if gap and not (run and gap.isspace()):
            out += [_flush(run, hint), gap]
            run = []
        run.append(word)
        pos = match.end()
    out += [_flush(run, hint), text[pos:]]
    return "".join(out)


def _decoded(text: str, hint: str | None) -> str:
    """Unfolded header text with its encoded-words decoded; a decoded CR/LF or other control
    becomes a space, so a subject can never smuggle a header line into a reply."""
    text = _decode_words(text, hint)
    if not text.isprintable():
        text = _HEADER_CONTROLS.sub(" ", text)
    return _clean(text).strip()


def _header_text(value: object, hint: str | None) -> str:
    """A header value as a reader sees it: unfolded, 8-bit and RFC 2047 decoded."""
    return _decoded(_raw_text(value, hint), hint)


def _read_headers(
    msg: Message, hint: str | None, defects: list[str]
) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """All top-level headers decoded, in order, and the first raw text of each name."""
    headers: list[tuple[str, str]] = []
    first: dict[str, str] = {}
    for name, value in msg.raw_items():
        if len(value) > _MAX_HEADER_CHARS:
            defects.append(f"{name} header longer than {_MAX_HEADER_CHARS} characters; cut")
        text = _raw_text(value, hint)
        first.setdefault(name.lower(), text)
        headers.append((name, _decoded(text, hint)))
    return headers, first


# --- addresses, dates, message ids -------------------------------------------------------------


def _addresses(text: str | None, hint: str | None) -> list[Address]:
    """Mailboxes of an address header; group syntax flattened, junk salvaged, never raises."""
    if not text or not text.strip():
        return []
    simple = _SIMPLE_ADDRESS.fullmatch(text)
    if simple:  # one plain mailbox, the usual case: skip the stdlib's slow tokenizer
        quoted, bare, angle, plain = simple.groups()
        name = quoted if quoted is not None else " ".join((bare or "").split())
        return [Address(_decoded(name, hint), (angle or plain).lower())]
    if not _ADDRESS_HINT.search(text) and len(text.split()) > 1:  # "From: John Smith"
        return [Address(_decoded(text, hint), "")]
    try:
        pairs = getaddresses([text])
    except Exception:  # stdlib parser bugs on hostile input (CPython gh-102988 and kin)
        pairs = []
    found = []
    for name, addr in pairs:
        name, addr = _decoded(name, hint), addr.strip().lower()
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
    text = _strip_comments(_BREAK.sub("", value))
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
    ids = _message_ids(_clean(value))
    return ids[0] if ids else None


def _generated_id(raw: bytes) -> str:
    """Deterministic id for a mail without one, so a retried delivery gets the same id."""
    return f"<{hashlib.sha256(raw).hexdigest()[:32]}@postdesk.invalid>"


# --- body, hash, attachments -------------------------------------------------------------------


def _body_start(raw: bytes) -> int:
    """Offset just past the first blank line (RFC 5322 §2.1); ``len(raw)`` when none."""
    if raw[:1] == b"\n" or raw[:2] == b"\r\n":
        return 1 if raw[:1] == b"\n" else 2
    crlf = raw.find(b"\r\n\r\n")
    # bounded: a full scan for "\n\n" in a CRLF mail costs 17 us per 16 KB
    lf = raw.find(b"\n\n", 0, len(raw) if crlf < 0 else crlf + 2)
    if lf >= 0:
        return lf + 2
    return len(raw) if crlf < 0 else crlf + 4


def _raw_body(raw: bytes) -> bytes:
    """The bytes after the first blank line; empty when there is none."""
    return raw[_body_start(raw) :]


def _body_hash(raw: bytes) -> str:
    """sha256 of the body with CRLF line ends, so LF and CRLF copies of one mail agree."""
    body = _raw_body(raw)
    if body.count(b"\n") != body.count(b"\r\n"):
        body = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return hashlib.sha256(body).hexdigest()


@dataclass(slots=True)
class _Leaves:
    """The MIME tree's leaves sorted in document order: the two bodies and everything else."""

    plain: Message | None = None
    html: Message | None = None
    others: list[tuple[Message, bool]] = field(default_factory=list)  # (part, in related)
    visited: list[Message] = field(default_factory=list)
    limited: bool = False  # parts beyond _MAX_DEPTH or _MAX_PARTS were left out


def _body_kind(part: Message) -> str | None:
    """Say "plain" or "html" when the part can be the message body, else None."""
    if part.get_content_disposition() == "attachment":
        return None
    ctype = _real_type(part)
    if ctype == "text/html":
        return "html"
    # multipart without a usable boundary: the parser leaves its text as one payload
    return "plain" if ctype == "text/plain" or ctype.startswith("multipart/") else None


def _sort_leaves(part: Message, leaves: _Leaves, related: bool = False, depth: int = 0) -> None:
    """Walk the tree: the first text/plain and text/html are bodies, the rest attachments."""
    if depth >= _MAX_DEPTH or len(leaves.visited) >= _MAX_PARTS:
        leaves.limited = True
        return
    leaves.visited.append(part)
    if part.is_multipart():
        inner_related = related or _real_type(part) == "multipart/related"
        for child in part.get_payload():
            if isinstance(child, Message):
                _sort_leaves(child, leaves, inner_related, depth + 1)
        return
    kind = _body_kind(part)
    if kind == "plain" and leaves.plain is None:
        leaves.plain = part
    elif kind == "html" and leaves.html is None:
        leaves.html = part
    else:
        leaves.others.append((part, related))


def _payload(part: Message) -> bytes:
    """The part's content with its Content-Transfer-Encoding undone."""
    try:
        data = part.get_payload(decode=True)
    except _STDLIB_FAULTS:  # odd uuencode and the like: keep it raw
        data = part.get_payload(decode=False)
        data = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else None
    return data if isinstance(data, bytes) else b""


def _part_charset(part: Message, data: bytes) -> str | None:
    """The declared charset; HTML without a usable one may name it in a <meta> tag."""
    try:
        label = _clean_label(part.get_content_charset())
    except _STDLIB_FAULTS:
        label = None
    if _codec_name(label) is None and _real_type(part) == "text/html":
        meta = _META_CHARSET.search(data, 0, 4096)
        if meta:
            label = meta.group(1).decode("ascii").lower()
    return label


def _decode_part(part: Message, defects: list[str]) -> tuple[str, str]:
    """A body part's text and the charset actually used for it."""
    data = _payload(part)
    return _decode_body(data, _part_charset(part, data), defects)


def _html_to_text(html: str, defects: list[str]) -> str:
    """Plain-text rendering of an HTML-only mail (inscriptis keeps tables and lists legible)."""
    if not html.strip():
        return ""
    if len(html) > _MAX_HTML_RENDER:
        defects.append(f"HTML longer than {_MAX_HTML_RENDER} characters; only its start rendered")
        html = html[:_MAX_HTML_RENDER]
    try:
        return get_text(html)
    except Exception as exc:  # lxml on hostile markup; tags stripped crudely instead
        defects.append(f"HTML rendering failed ({type(exc).__name__}); tags stripped")
        return re.sub(r"<[^>]*>", " ", html)


def _bodies(leaves: _Leaves, defects: list[str]) -> tuple[str, str | None, str | None]:
    """text, html and the charset used for text (an empty plain part yields to the HTML)."""
    text = html = charset = None
    if leaves.plain is not None:
        text, charset = _decode_part(leaves.plain, defects)
    if leaves.html is not None:
        html, html_charset = _decode_part(leaves.html, defects)
        if text is None or not text.strip():
            text, charset = _html_to_text(html, defects), html_charset
    text = (text or "").replace("\r\n", "\n").replace("\r", "\n")
    return _clean(text), None if html is None else _clean(html), charset


def _param_view(part: Message, hint: str | None) -> Message:
    """The part's Content-Type/-Disposition with raw 8-bit bytes decoded: compat32 would turn
    them into U+FFFD before its RFC 2231 parameter decoding sees them."""
    view = Message()
    for name, value in part.raw_items():
        if name.lower() in ("content-type", "content-disposition"):
            view[name] = _raw_text(value, hint)
    return view


def _filename(part: Message, hint: str | None) -> str | None:
    """Attachment name: RFC 2231 (charset, continuations) or RFC 2047 form; basename only."""
    try:
        value = _param_view(part, hint).get_filename()
    except _STDLIB_FAULTS:
        return None
    if not value:
        return None
    name = _decode_words(_raw_text(value, hint), hint)
    name = name.replace("\\", "/").rsplit("/", 1)[-1]  # "C:\\Users\\..." from old clients
    return _FILENAME_JUNK.sub(" ", name).strip() or None


def _eml_name(data: bytes, hint: str | None) -> str:
    """A file name for a nested message: its Subject + ".eml"."""
    head = data[: _body_start(data)]
    subjects = [v for n, v in _HEAD_PARSER.parsebytes(head).raw_items() if n.lower() == "subject"]
    subject = _header_text(subjects[0], hint) if subjects else ""
    name = " ".join(_EML_JUNK.sub("_", _FILENAME_JUNK.sub(" ", subject)).split())[:100]
    return (name or "message") + ".eml"


def _first(part: Message, name: str) -> str | None:
    """The first raw value of a header in a part."""
    name = name.lower()
    return next((str(v) for n, v in part.raw_items() if n.lower() == name), None)


def _content_id(part: Message) -> str | None:
    """Content-ID without angle brackets (RFC 2392 cid: URLs leave them out)."""
    value = _first(part, "content-id")
    if value is None:
        return None
    ident = _clean(_BREAK.sub("", value)).strip()
    if ident.startswith("<") and ident.endswith(">"):
        ident = ident[1:-1].strip()
    return ident or None


def _attachment(part: Message, related: bool, hint: str | None) -> Attachment:
    """One non-body part; a cid-referenced part of multipart/related counts as inline."""
    ctype, data = _real_type(part), _payload(part)
    content_id = _content_id(part)
    declared = part.get_content_disposition()
    inline = declared == "inline" or (declared is None and related and content_id is not None)
    filename = _filename(part, hint)
    if filename is None and ctype in _NESTED_TYPES:
        filename = _eml_name(data, hint)
    return Attachment(filename, ctype, "inline" if inline else "attachment", content_id, data)


def _email_defects(leaves: _Leaves) -> list[str]:
    """The email package's defects as sentences (each defect class's docstring says it)."""
    found = []
    if leaves.limited:
        found.append(f"MIME tree deeper than {_MAX_DEPTH} or over {_MAX_PARTS} parts; rest ignored")
    for part in leaves.visited:
        for defect in part.defects:
            doc = (type(defect).__doc__ or type(defect).__name__).strip().splitlines()[0]
            found.append(str(defect) or doc)
    return found


# --- MIME structure ----------------------------------------------------------------------------
# The feed parser handles every line in Python (~2.5 us a line: 35 ms for a 1 MB attachment).
# Well-formed MIME is split here with bytes.find instead, with the same header parser and the
# same RFC 2046 rules; anything unusual goes to the feed parser, whose defect handling we keep.


def _line_starts(body: bytes, sep: bytes) -> Iterator[int]:
    """Offsets of lines that start with ``sep``; each line is looked at once at most."""
    if body.startswith(sep):
        yield 0
    at = body.find(b"\n" + sep)
    while at >= 0:
        yield at + 1
        at = body.find(b"\n" + sep, at + 1)


def _delimiters(body: bytes, boundary: bytes, limit: int) -> tuple[list[tuple[int, int]], bool]:
    """(start, end of line) of each delimiter line (RFC 2046 §5.1.1) up to the close
    delimiter, and whether that close delimiter was found (or ``limit`` parts were)."""
    found: list[tuple[int, int]] = []
    sep = b"--" + boundary
    for start in _line_starts(body, sep):
        end = body.find(b"\n", start)
        end = len(body) if end < 0 else end
        tail = body[start + len(sep) : end].rstrip(b" \t\r")
        if tail in (b"", b"--"):
            found.append((start, end))
            if tail or len(found) > limit:
                return found, True
    return found, False


def _before_line_break(body: bytes, end: int) -> int:
    """``end`` moved before the line break that ends there, if any (CRLF, LF or CR)."""
    if body[end - 2 : end] == b"\r\n":
        return end - 2
    return end - 1 if body[end - 1 : end] in (b"\n", b"\r") else end


def _split_parts(body: bytes, boundary: str, limit: int) -> tuple[list[bytes], bool]:
    """Up to ``limit`` body parts of a multipart body (preamble and epilogue dropped), and
    whether it was closed; an unclosed one runs to the end, as in the feed parser."""
    try:
        lines, closed = _delimiters(body, boundary.encode("ascii"), limit)
    except UnicodeEncodeError:
        return [], False
    if not closed:
        lines.append((len(body), len(body)))
    parts = []
    for (_, opening_end), (closing, _) in zip(lines, lines[1:], strict=False):
        start = opening_end + 1
        if closing <= start:
            return [], closed  # delimiter after delimiter: the feed parser has its own rules
        # the line break before a delimiter belongs to the delimiter (RFC 2046 §5.1.1)
        parts.append(body[start : max(start, _before_line_break(body, closing))])
    return parts, closed


@dataclass(slots=True)
class _TreeBuilder:
    """Builds the MIME tree: the fast path where MIME is well formed, the feed parser for any
    part it is unsure of; counts parts so 50,000 empty ones cannot stall the intake."""

    parts_left: int = _MAX_PARTS

    def tree(self, raw: bytes, depth: int = 0) -> Message:
        """The parsed entity (a whole mail or one body part)."""
        try:
            msg = self._fast(raw, depth)
        except _STDLIB_FAULTS:
            msg = None
        if msg is not None:
            return msg
        try:
            return _PARSER.parsebytes(raw)
        except _STDLIB_FAULTS as exc:  # headers still count; the body is kept as one text
            msg = _HEAD_PARSER.parsebytes(raw)
            msg.defects.append(MessageDefect(f"MIME structure unreadable ({exc}); body kept whole"))
            return msg

    def _fast(self, raw: bytes, depth: int) -> Message | None:
        """The entity split without the feed parser; None when it had better judge."""
        start = _body_start(raw)
        msg = _HEAD_PARSER.parsebytes(raw[:start])
        if msg.get_payload():
            return None  # a line in the header block that is no header: the parser's call
        body = raw[start:]
        if depth < _MAX_DEPTH and _real_type(msg).startswith("multipart/"):
            return self._multipart(msg, body, depth)
        msg.set_payload(body.decode("ascii", "surrogateescape"))  # as the feed parser does
        return msg

    def _multipart(self, msg: Message, body: bytes, depth: int) -> Message | None:
        """Fill a multipart's children from its body; None when it is not well formed."""
        boundary = msg.get_boundary()
        if not boundary:
            return None
        if self.parts_left <= 0:  # over the budget: an empty multipart, noted by _sort_leaves
            msg.set_payload([])
            return msg
        chunks, closed = _split_parts(body, boundary, self.parts_left)
        if not chunks:
            return None
        if not closed:
            msg.defects.append(CloseBoundaryNotFoundDefect())  # as the feed parser reports it
        self.parts_left -= len(chunks)
        children = [self.tree(chunk, depth + 1) for chunk in chunks]
        if _real_type(msg) == "multipart/digest":
            for child in children:
                child.set_default_type("message/rfc822")  # RFC 2046 §5.1.5
        msg.set_payload(children)
        return msg


# --- entry points ------------------------------------------------------------------------------


def _header_hint(charset: str | None) -> str | None:
    """The body's legacy 8-bit charset: raw 8-bit headers from the same sender likely use it."""
    name = _codec_name(charset)
    return None if name is None or name == "ascii" or name.startswith("utf") else charset


def _message_id(text: str | None, raw: bytes, defects: list[str]) -> tuple[str, bool]:
    """The normalized Message-ID, or a generated one (True) when there is none."""
    ident = normalize_message_id(text)
    if ident is not None:
        return ident, False
    defects.append("no usable Message-ID; generated one from the raw bytes")
    return _generated_id(raw), True


def _parse(raw: bytes, received_at: datetime) -> ParsedMessage:
    """The real work of ``parse_message``; may raise on input the stdlib chokes on."""
    msg, defects, leaves = _TreeBuilder().tree(raw), [], _Leaves()
    _sort_leaves(msg, leaves)
    text, html, charset = _bodies(leaves, defects)
    hint = _header_hint(charset)
    attachments = [_attachment(part, related, hint) for part, related in leaves.others]
    headers, first = _read_headers(msg, hint, defects)
    message_id, generated = _message_id(first.get("message-id"), raw, defects)
    from_ = _addresses(first.get("from"), hint)
    return ParsedMessage(
        message_id=message_id, message_id_generated=generated,
        subject=_decoded(first.get("subject", ""), hint),
        from_=from_[0] if from_ else None, to=_addresses(first.get("to"), hint),
        cc=_addresses(first.get("cc"), hint), reply_to=_addresses(first.get("reply-to"), hint),
        date=_parse_date(first.get("date"), received_at, defects),
        in_reply_to=normalize_message_id(first.get("in-reply-to")),
        references=_message_ids(first.get("references")),
        text=text, html=html, charset=charset, body_hash=_body_hash(raw),
        attachments=attachments, headers=headers,
        defects=list(dict.fromkeys(_email_defects(leaves) + defects)),
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
        text=_clean(_raw_body(raw).decode("utf-8", "replace")), html=None, charset=None,
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
