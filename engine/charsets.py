"""Charsets: bytes to clean text (pipeline step 1, parse; used by engine.mime, see DESIGN.md).

Charset labels as senders write them are aliased the way mail clients read them (WHATWG-style
Windows supersets), declared charsets are tried strictly, and bytes that fit none are guessed
with charset-normalizer. Every text leaving here is free of NUL and lone surrogates.
"""

from __future__ import annotations

import codecs
import re
from functools import lru_cache

from charset_normalizer import CharsetMatch, from_bytes

_SURROGATES = re.compile("[\ud800-\udfff]")  # lone surrogates (and NUL) break storage
_C1_BYTES = re.compile(rb"[\x80-\x9f]")

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


def clean_text(text: str) -> str:
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
def codec_name(label: str | None) -> str | None:
    """Python's name for a charset label, or None when unknown or not a text charset."""
    if not label or len(label) > 40 or not label.isascii():
        return None
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError, TypeError):
        return None
    text_codec = getattr(info, "_is_text_encoding", True)  # base64, zlib... are not
    return info.name if text_codec and info.name not in _UNSAFE_CODECS else None


def clean_label(label: str | None) -> str | None:
    """A charset parameter as senders write it: quotes, spaces and case vary."""
    label = (label or "").strip().strip("\"'").strip().lower()
    return label or None


def header_hint(charset: str | None) -> str | None:
    """The body's legacy 8-bit charset: raw 8-bit headers from the same sender likely use it."""
    name = codec_name(charset)
    return None if name is None or name == "ascii" or name.startswith("utf") else charset


def _candidates(label: str | None, data: bytes) -> list[str]:
    """Codecs to try strictly, best first, for bytes declared as ``label``."""
    name = codec_name(label)
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


def decode_body(data: bytes, label: str | None, defects: list[str]) -> tuple[str, str]:
    """Decode a text part: declared charset, else detection, else utf-8 with replacement."""
    if label and codec_name(label) is None:
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


def decode_header_bytes(data: bytes, label: str | None, hint: str | None) -> str:
    """Header bytes: declared charset, utf-8, the body's charset, windows-1252, latin-1."""
    found = _decode_strict(data, [*_candidates(label, data), "utf-8", hint, "windows-1252"])
    return found[0] if found else data.decode("latin-1")
