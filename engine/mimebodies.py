"""MIME bodies: a part tree's leaves to text, HTML and attachment details (pipeline step 1).

Used by engine.mime after engine.mimetree has built the tree: the first text/plain and
text/html leaves are the bodies (decoded with engine.charsets, HTML-only mail rendered to text),
everything else becomes an attachment, whose name, Content-ID and bytes are read here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.message import Message

from inscriptis import get_text

from engine.charsets import clean_label, clean_text, codec_name, decode_body
from engine.headertext import LINE_BREAK, decode_words, header_text, raw_text
from engine.mimetree import (
    MAX_DEPTH,
    MAX_PARTS,
    STDLIB_FAULTS,
    body_start,
    parse_head,
    real_type,
)

_MAX_HTML_RENDER = 200_000  # inscriptis needs ~1.5 s for 1 MB of HTML, ~5 ms for 20 KB

_FILENAME_JUNK = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_EML_JUNK = re.compile(r'[\\/:*?"<>|]')
_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9._:-]{1,40})""",
                           re.IGNORECASE)


# --- body, attachments -------------------------------------------------------------------------


@dataclass(slots=True)
class Leaves:
    """The MIME tree's leaves sorted in document order: the two bodies and everything else."""

    plain: Message | None = None
    html: Message | None = None
    others: list[tuple[Message, bool]] = field(default_factory=list)  # (part, in related)
    visited: list[Message] = field(default_factory=list)
    limited: bool = False  # parts beyond MAX_DEPTH or MAX_PARTS were left out


def _body_kind(part: Message) -> str | None:
    """Say "plain" or "html" when the part can be the message body, else None."""
    if part.get_content_disposition() == "attachment":
        return None
    ctype = real_type(part)
    if ctype == "text/html":
        return "html"
    # multipart without a usable boundary: the parser leaves its text as one payload
    return "plain" if ctype == "text/plain" or ctype.startswith("multipart/") else None


def sort_leaves(part: Message, leaves: Leaves, related: bool = False, depth: int = 0) -> None:
    """Walk the tree: the first text/plain and text/html are bodies, the rest attachments."""
    if depth >= MAX_DEPTH or len(leaves.visited) >= MAX_PARTS:
        leaves.limited = True
        return
    leaves.visited.append(part)
    if part.is_multipart():
        inner_related = related or real_type(part) == "multipart/related"
        for child in part.get_payload():
            if isinstance(child, Message):
                sort_leaves(child, leaves, inner_related, depth + 1)
        return
    kind = _body_kind(part)
    if kind == "plain" and leaves.plain is None:
        leaves.plain = part
    elif kind == "html" and leaves.html is None:
        leaves.html = part
    else:
        leaves.others.append((part, related))


def part_payload(part: Message) -> bytes:
    """The part's content with its Content-Transfer-Encoding undone."""
    try:
        data = part.get_payload(decode=True)
    except STDLIB_FAULTS:  # odd uuencode and the like: keep it raw
        data = part.get_payload(decode=False)
        data = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else None
    return data if isinstance(data, bytes) else b""


def _part_charset(part: Message, data: bytes) -> str | None:
    """The declared charset; HTML without a usable one may name it in a <meta> tag."""
    try:
        label = clean_label(part.get_content_charset())
    except STDLIB_FAULTS:
        label = None
    if codec_name(label) is None and real_type(part) == "text/html":
        meta = _META_CHARSET.search(data, 0, 4096)
        if meta:
            label = meta.group(1).decode("ascii").lower()
    return label


def _decode_part(part: Message, defects: list[str]) -> tuple[str, str]:
    """A body part's text and the charset actually used for it."""
    data = part_payload(part)
    return decode_body(data, _part_charset(part, data), defects)


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


def bodies(leaves: Leaves, defects: list[str]) -> tuple[str, str | None, str | None]:
    """text, html and the charset used for text (an empty plain part yields to the HTML)."""
    text = html = charset = None
    if leaves.plain is not None:
        text, charset = _decode_part(leaves.plain, defects)
    if leaves.html is not None:
        html, html_charset = _decode_part(leaves.html, defects)
        if text is None or not text.strip():
            text, charset = _html_to_text(html, defects), html_charset
    text = (text or "").replace("\r\n", "\n").replace("\r", "\n")
    return clean_text(text), None if html is None else clean_text(html), charset


def _param_view(part: Message, hint: str | None) -> Message:
    """The part's Content-Type/-Disposition with raw 8-bit bytes decoded: compat32 would turn
    them into U+FFFD before its RFC 2231 parameter decoding sees them."""
    view = Message()
    for name, value in part.raw_items():
        if name.lower() in ("content-type", "content-disposition"):
            view[name] = raw_text(value, hint)
    return view


def part_filename(part: Message, hint: str | None) -> str | None:
    """Attachment name: RFC 2231 (charset, continuations) or RFC 2047 form; basename only."""
    try:
        value = _param_view(part, hint).get_filename()
    except STDLIB_FAULTS:
        return None
    if not value:
        return None
    name = decode_words(raw_text(value, hint), hint)
    name = name.replace("\\", "/").rsplit("/", 1)[-1]  # "C:\\Users\\..." from old clients
    return _FILENAME_JUNK.sub(" ", name).strip() or None


def eml_name(data: bytes, hint: str | None) -> str:
    """A file name for a nested message: its Subject + ".eml"."""
    head = data[: body_start(data)]
    subjects = [v for n, v in parse_head(head).raw_items() if n.lower() == "subject"]
    subject = header_text(subjects[0], hint) if subjects else ""
    name = " ".join(_EML_JUNK.sub("_", _FILENAME_JUNK.sub(" ", subject)).split())[:100]
    return (name or "message") + ".eml"


def _first(part: Message, name: str) -> str | None:
    """The first raw value of a header in a part."""
    name = name.lower()
    return next((str(v) for n, v in part.raw_items() if n.lower() == name), None)


def part_content_id(part: Message) -> str | None:
    """Content-ID without angle brackets (RFC 2392 cid: URLs leave them out)."""
    value = _first(part, "content-id")
    if value is None:
        return None
    ident = clean_text(LINE_BREAK.sub("", value)).strip()
    if ident.startswith("<") and ident.endswith(">"):
        ident = ident[1:-1].strip()
    return ident or None


def email_defects(leaves: Leaves) -> list[str]:
    """The email package's defects as sentences (each defect class's docstring says it)."""
    found = []
    if leaves.limited:
        found.append(f"MIME tree deeper than {MAX_DEPTH} or over {MAX_PARTS} parts; rest ignored")
    for part in leaves.visited:
        for defect in part.defects:
            doc = (type(defect).__doc__ or type(defect).__name__).strip().splitlines()[0]
            found.append(str(defect) or doc)
    return found
