"""Header text: raw header values to readable text (pipeline step 1, parse; see DESIGN.md).

Used by engine.mime and engine.mimebodies: unfolding (RFC 5322 §2.2.3), raw 8-bit bytes decoded
with engine.charsets, RFC 2047 encoded-words decoded, and controls that could smuggle a header
line into a reply blanked out.
"""

from __future__ import annotations

import binascii
import re
from email.message import Message

from engine.charsets import clean_text, decode_header_bytes

_MAX_HEADER_CHARS = 32768  # one header value (a References line of ~500 ids)

LINE_BREAK = re.compile(r"\r\n|[\r\n]")
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?]*)\?=")  # RFC 2047 §2
_HEADER_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


# --- header text -------------------------------------------------------------------------------


def raw_text(value: object, hint: str | None) -> str:
    """Unfold a raw header value (RFC 5322 §2.2.3) and decode raw 8-bit bytes in it."""
    text = (value if isinstance(value, str) else str(value))[:_MAX_HEADER_CHARS]
    if "\n" in text or "\r" in text:
        text = LINE_BREAK.sub("", text)
    if not text.isascii():  # the parser hands 8-bit bytes over as surrogate escapes
        text = decode_header_bytes(text.encode("utf-8", "surrogateescape"), None, hint)
    return clean_text(text)


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
    return "".join(decode_header_bytes(data, charset, hint) for charset, data in merged)


def decode_words(text: str, hint: str | None) -> str:
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


def decoded(text: str, hint: str | None) -> str:
    """Unfolded header text with its encoded-words decoded; a decoded CR/LF or other control
    becomes a space, so a subject can never smuggle a header line into a reply."""
    text = decode_words(text, hint)
    if not text.isprintable():
        text = _HEADER_CONTROLS.sub(" ", text)
    return clean_text(text).strip()


def header_text(value: object, hint: str | None) -> str:
    """A header value as a reader sees it: unfolded, 8-bit and RFC 2047 decoded."""
    return decoded(raw_text(value, hint), hint)


def read_headers(
    msg: Message, hint: str | None, defects: list[str]
) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """All top-level headers decoded, in order, and the first raw text of each name."""
    headers: list[tuple[str, str]] = []
    first: dict[str, str] = {}
    for name, value in msg.raw_items():
        if len(value) > _MAX_HEADER_CHARS:
            defects.append(f"{name} header longer than {_MAX_HEADER_CHARS} characters; cut")
        text = raw_text(value, hint)
        first.setdefault(name.lower(), text)
        headers.append((name, decoded(text, hint)))
    return headers, first
