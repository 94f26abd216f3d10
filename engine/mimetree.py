"""MIME tree: raw bytes to a compat32 Message tree (pipeline step 1, parse; see DESIGN.md).

Used by engine.mime and engine.mimebodies. Well-formed MIME is split with ``bytes.find`` (the
fast path); any entity it is unsure of goes to the stdlib feed parser, whose defect handling we
keep. message/* parts stay opaque bytes, and hard limits keep a hostile mail from stalling the
SMTP transaction.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.errors import CloseBoundaryNotFoundDefect, MessageDefect
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser
from email.policy import compat32


class _RawMessage(Message):
    """compat32 Message that makes the feed parser keep message/* parts as raw text.

    FeedParser descends into a part when ``get_content_type()`` starts with ``message/``;
    reporting such parts as octet-stream keeps their exact bytes for the nested-message
    attachment (re-serialising a parsed message would refold headers and line endings).
    Our own code asks ``real_type`` for the declared type.
    """

    def get_content_type(self) -> str:
        """The declared type, except message/* which passes for opaque bytes."""
        ctype = super().get_content_type()
        return "application/octet-stream" if ctype.startswith("message/") else ctype


def real_type(part: Message) -> str:
    """The declared content type, lower case (RFC 2045 defaults apply)."""
    return Message.get_content_type(part)


# compat32 costs ~0.04 ms per 1 KB message; email.policy.default ~0.4 ms (DESIGN.md budget).
_PARSER = BytesParser(_class=_RawMessage, policy=compat32)
HEAD_PARSER = BytesHeaderParser(_class=_RawMessage, policy=compat32)

# A header block every line of which the feed parser would read as a field or its
# continuation (RFC 5322 §2.2, §2.2.3), ending in CRLF or LF, then at most the blank line.
# ``parse_head`` reads such a block with one regex; anything else (a bare CR, a line with no
# colon, a leading continuation, a "From " line) goes to the feed parser and its defects.
_FIELD = r"[\x21-\x39\x3b-\x7e]+:[^\r\n]*\r?\n(?:[ \t][^\r\n]*\r?\n)*"
_PLAIN_HEAD = re.compile(rf"(?:{_FIELD})*(?:\r?\n)?")
_FIELDS = re.compile(r"([\x21-\x39\x3b-\x7e]+):([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)\r?\n")


def parse_head(block: bytes) -> Message:
    """``HEAD_PARSER.parsebytes(block)``, the same Message, for a header block (a whole mail
    cut at ``body_start``). The feed parser handles every line in Python (~45 us for a
    typical 8-field head); a plain block is read here with one regex instead."""
    text = block.decode("ascii", "surrogateescape")  # as the bytes parser decodes
    if _PLAIN_HEAD.fullmatch(text) is None:
        return HEAD_PARSER.parsebytes(block)
    msg = _RawMessage(compat32)
    # compat32.header_source_parse: the value's first line left-stripped, CRLFs within kept
    msg._headers = [(name, value.lstrip(" \t")) for name, value in _FIELDS.findall(text)]
    msg.set_payload("")  # what a headers-only parse leaves
    return msg


# Bounds that keep a hostile mail from stalling the SMTP transaction (no real mail nears them).
MAX_DEPTH = 40  # MIME nesting
MAX_PARTS = 1000  # MIME parts in one mail
# What the email package raises on hostile parameters (a NUL in an RFC 2231 charset, mixed
# continuation numbering), where it should have noted a defect instead.
STDLIB_FAULTS = (LookupError, UnicodeError, ValueError, TypeError, IndexError)


def body_start(raw: bytes) -> int:
    """Offset just past the first blank line (RFC 5322 §2.1); ``len(raw)`` when none."""
    if raw[:1] == b"\n" or raw[:2] == b"\r\n":
        return 1 if raw[:1] == b"\n" else 2
    crlf = raw.find(b"\r\n\r\n")
    # bounded: a full scan for "\n\n" in a CRLF mail costs 17 us per 16 KB
    lf = raw.find(b"\n\n", 0, len(raw) if crlf < 0 else crlf + 2)
    if lf >= 0:
        return lf + 2
    return len(raw) if crlf < 0 else crlf + 4


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
class TreeBuilder:
    """Builds the MIME tree: the fast path where MIME is well formed, the feed parser for any
    part it is unsure of; counts parts so 50,000 empty ones cannot stall the intake."""

    parts_left: int = MAX_PARTS

    def tree(self, raw: bytes, depth: int = 0) -> Message:
        """The parsed entity (a whole mail or one body part)."""
        try:
            msg = self._fast(raw, depth)
        except STDLIB_FAULTS:
            msg = None
        if msg is not None:
            return msg
        try:
            return _PARSER.parsebytes(raw)
        except STDLIB_FAULTS as exc:  # headers still count; the body is kept as one text
            msg = HEAD_PARSER.parsebytes(raw)
            msg.defects.append(MessageDefect(f"MIME structure unreadable ({exc}); body kept whole"))
            return msg

    def _fast(self, raw: bytes, depth: int) -> Message | None:
        """The entity split without the feed parser; None when it had better judge."""
        start = body_start(raw)
        msg = parse_head(raw[:start])
        if msg.get_payload():
            return None  # a line in the header block that is no header: the parser's call
        body = raw[start:]
        if depth < MAX_DEPTH and real_type(msg).startswith("multipart/"):
            return self._multipart(msg, body, depth)
        msg.set_payload(body.decode("ascii", "surrogateescape"))  # as the feed parser does
        return msg

    def _multipart(self, msg: Message, body: bytes, depth: int) -> Message | None:
        """Fill a multipart's children from its body; None when it is not well formed."""
        boundary = msg.get_boundary()
        if not boundary:
            return None
        if self.parts_left <= 0:  # over the budget: an empty multipart, noted by sort_leaves
            msg.set_payload([])
            return msg
        chunks, closed = _split_parts(body, boundary, self.parts_left)
        if not chunks:
            return None
        if not closed:
            msg.defects.append(CloseBoundaryNotFoundDefect())  # as the feed parser reports it
        self.parts_left -= len(chunks)
        children = [self.tree(chunk, depth + 1) for chunk in chunks]
        if real_type(msg) == "multipart/digest":
            for child in children:
                child.set_default_type("message/rfc822")  # RFC 2046 §5.1.5
        msg.set_payload(children)
        return msg
