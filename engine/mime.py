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

from dataclasses import dataclass, field
from datetime import datetime


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
