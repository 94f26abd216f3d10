"""Bounces: VERP return paths for our outbound mail, and reading delivery reports (issue 5).

The outbox sends every mail with an envelope sender made by ``verp_address`` (for example
``bounces+3k7h2dqb6v0m4e1gq8@support.example.com``); a bounce comes back to that address,
``read_verp`` gives the outbox id back, and ``parse_bounce`` says which recipients failed and
whether for good. Pure: no database, no I/O.

Trust
-----
A delivery report is only as trustworthy as its link to a mail we sent. Anyone can mail us a
forged DSN claiming ``customer@example.com`` does not exist, so the integrator acts on a bounce
(marking an address dead, failing an outbox row) only when

* its envelope recipient verifies with ``read_verp`` (the token is an HMAC under our secret, so
  it cannot be guessed: forging one succeeds with probability 2**-80 per try), and then only for
  that outbox row's recipients; or
* its ``original_message_id`` is the Message-ID of a mail we sent (weaker: Message-IDs travel
  in every reply and quote, so use it for history and display, not to disable an address).

A report that references nothing we sent is recorded at most, never acted on.

VERP token
----------
``<local><delimiter><id><mac>@<domain>``: ``id`` is the outbox id in lower-case Crockford base32
(no leading zeros), ``mac`` the first 80 bits of HMAC-SHA-256 over ``PDV1|<id>`` as 16 base32
characters, with a key derived from the secret by HKDF-SHA-256 (info ``b"postdesk verp"``), so
the secret may be shared with other purposes. Lower case because MTAs may case-fold local parts;
``read_verp`` ignores case and reads I/L as 1 and O as 0 like ``engine.tags``. Several secrets
may be given to ``read_verp`` during a key rotation.

Reports
-------
``parse_bounce`` returns None for anything that is not a delivery report, including read
receipts (``report-type=disposition-notification``, RFC 8098) and abuse reports
(``feedback-report``, RFC 5965): neither says anything about deliverability, and
``engine.autoresponse`` already keeps us from answering them. Otherwise:

* ``kind="dsn"``: RFC 3464 ``multipart/report; report-type=delivery-status`` (Postfix, Exim,
  Sendmail, Exchange/Office 365, Gmail...), one recipient per per-recipient block;
* ``kind="heuristic"``: a non-standard bounce (qmail, old Exim, Notes...) recognised by its
  sender (MAILER-DAEMON, postmaster, "Mail Delivery System", ``Return-Path: <>``,
  ``X-Failed-Recipients``) together with a typical subject or body; recipients come from
  ``X-Failed-Recipients``, ``<address>:`` blocks, address lines after "failed:", or the
  addresses in the notice, and statuses from SMTP codes in the text (``550 5.1.1``, ``#5.1.1``).
  Plain mail merely mentioning "undelivered" has no bounce sender and gives None.

An ``action`` of ``failed`` with a 4.x.x status (a transient error the MTA gave up on) is in
``failed`` but not ``permanent``: it says nothing against the address itself.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import hashlib
import hmac
import quopri
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses
from functools import lru_cache

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from engine.charsets import decode_body
from engine.headertext import header_text
from engine.mime import normalize_message_id

# --- VERP --------------------------------------------------------------------------------------

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
MAC_CHARS = 16  # 80 bits
MAX_ID_CHARS = 13  # 65 bits: any 64-bit id
MIN_SECRET_BYTES = 16
_VERP_INFO = b"postdesk verp"
_READ_AS = str.maketrans("ilo", "110")
_LOCAL = re.compile(r"[a-z0-9][a-z0-9._\-]*", re.IGNORECASE)
_DOMAIN = re.compile(r"[a-z0-9.\-\[\]:]+", re.IGNORECASE)


def verp_address(
    outbox_id: int, domain: str, secret: bytes, local: str = "bounces", *, delimiter: str = "+"
) -> str:
    """The envelope sender for outbox row ``outbox_id``: ``bounces+<token>@domain``."""
    if isinstance(outbox_id, bool) or not isinstance(outbox_id, int) or not 0 <= outbox_id < 2**64:
        raise ValueError(f"verp_address: outbox id must be an int in [0, 2**64), not {outbox_id!r}")
    _check_parts(domain, local, delimiter)
    ident = _encode(outbox_id)
    return f"{local.lower()}{delimiter}{ident}{_mac(_key(_secret(secret)), ident)}@{domain.lower()}"


def read_verp(
    address: str, secret: bytes | Collection[bytes], local: str = "bounces", *,
    delimiter: str = "+",
) -> int | None:
    """The outbox id in a VERP ``address`` whose token verifies under (one of) ``secret``.

    None for other addresses and for forged, garbled or tampered tokens.
    """
    candidates = [secret] if isinstance(secret, bytes | bytearray) else list(secret)
    keys = [_key(_secret(s)) for s in candidates]
    if not isinstance(address, str):
        return None
    mailbox, at, _ = address.strip().strip("<>").strip().rpartition("@")
    prefix = f"{local}{delimiter}".lower()
    if not at or not mailbox.lower().startswith(prefix):
        return None
    token = mailbox[len(prefix):].lower().translate(_READ_AS)
    ident, mac = token[:-MAC_CHARS], token[-MAC_CHARS:]
    if not 0 < len(ident) <= MAX_ID_CHARS or any(c not in ALPHABET for c in token):
        return None
    number = _decode(ident)
    if number >= 2**64 or _encode(number) != ident:  # one spelling per id
        return None
    valid = False
    for key in keys:  # no early exit: the time taken does not say which key matched
        valid |= hmac.compare_digest(_mac(key, ident), mac)
    return number if valid else None


def _check_parts(domain: str, local: str, delimiter: str) -> None:
    if not isinstance(domain, str) or not _DOMAIN.fullmatch(domain):
        raise ValueError(f"verp_address: bad domain {domain!r}")
    if not isinstance(local, str) or not _LOCAL.fullmatch(local) or delimiter in local:
        raise ValueError(f"verp_address: bad local part {local!r} (letters, digits, . _ -, "
                         "without the delimiter)")
    if delimiter not in ("+", "-", "="):
        raise ValueError(f"verp_address: delimiter must be +, - or =, not {delimiter!r}")


def _secret(secret: object) -> bytes:
    if not isinstance(secret, bytes | bytearray) or len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"VERP secret must be at least {MIN_SECRET_BYTES} bytes")
    return bytes(secret)


@lru_cache(maxsize=16)
def _key(secret: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_VERP_INFO).derive(secret)


def _mac(key: bytes, ident: str) -> str:
    digest = hmac.new(key, f"PDV1|{ident}".encode("ascii"), hashlib.sha256).digest()
    return _encode(int.from_bytes(digest[:10], "big")).rjust(MAC_CHARS, "0")


def _encode(number: int) -> str:
    digits = ""
    while True:
        number, digit = divmod(number, 32)
        digits = ALPHABET[digit] + digits
        if not number:
            return digits


def _decode(text: str) -> int:
    number = 0
    for char in text:
        number = number * 32 + ALPHABET.index(char)
    return number


# --- reports -----------------------------------------------------------------------------------


@dataclass
class BounceRecipient:
    """One recipient of a delivery report."""

    address: str  # lower case, address type ("rfc822;") and brackets removed
    status: str  # RFC 3463 enhanced status, "5.1.1"
    action: str  # failed, delayed, delivered, relayed, expanded
    diagnostic: str = ""  # the remote server's words ("550 5.1.1 user unknown")
    original_recipient: str | None = None  # Original-Recipient, when the report gives one


@dataclass
class Bounce:
    """A delivery report: who failed, why, and which mail it was about."""

    recipients: list[BounceRecipient]
    original_message_id: str | None
    kind: str  # "dsn" (RFC 3464) or "heuristic"
    original_envelope_id: str | None = None  # RFC 3461 ENVID echoed back
    reporting_mta: str | None = None
    subject: str = ""
    notice: str = field(default="", repr=False)  # the human-readable part, for history

    @property
    def failed(self) -> list[BounceRecipient]:
        """Recipients the MTA gave up on (permanent or not)."""
        return [r for r in self.recipients if r.action == "failed"]

    @property
    def delayed(self) -> list[BounceRecipient]:
        """Recipients still being retried (a warning, not a failure)."""
        return [r for r in self.recipients if r.action == "delayed"]

    @property
    def permanent(self) -> bool:
        """True when some recipient failed with a 5.x.x status: the address is bad."""
        return any(r.status.startswith("5") for r in self.failed)


MAX_BYTES = 4 * 1024 * 1024  # a bounce quoting a huge original: the head is all we need
MAX_TEXT = 200_000
MAX_RECIPIENTS = 100
_STATUS_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
_ORIGINAL_TYPES = frozenset({"message/rfc822", "message/global"})
_HEADER_TYPES = frozenset({"text/rfc822-headers", "message/global-headers"})
_ACTIONS = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})
_ACTION_BY_CLASS = {"5": "failed", "4": "delayed", "2": "delivered"}
_NOT_BOUNCES = frozenset({"disposition-notification", "feedback-report"})
_DAEMON_NAMES = ("mail delivery system", "mail delivery subsystem", "mail delivery service",
                 "microsoft outlook", "postmaster", "mailer-daemon")

_ENHANCED = re.compile(r"(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?!\.?\d)")
_BASIC = re.compile(r"(?<![\d.\-])([45][0-5]\d)[ -](?=\S)")
_FIELD = re.compile(r"([A-Za-z0-9][A-Za-z0-9\-]*)[ \t]*:[ \t]*(.*)")
_SPACE = re.compile(r"\s+")
_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+")
# Matched one line at a time, lines of at most _MAX_WORD characters (bounded backtracking).
_ANGLE_LINE = re.compile(r"[ \t]*<([^<>\s@]+@[^<>\s@]+)>:?[ \t]*(.*)")
_ADDRESS_LINE = re.compile(
    r"[ \t]*(?:[^<>@]*<)?([^<>\s@:()]+@[^<>\s@:()]+)>?[ \t]*(?:\([^()]*\))?[ \t]*")
_FAILED_INTRO = re.compile(
    r"(?:following (?:address(?:\(es\)|es)?|recipients?)(?: or groups)?"
    r"(?: had permanent fatal errors| failed(?: permanently)?)?|"
    r"delivery (?:has )?failed to these recipients(?: or groups)?|"
    r"delivery to the following recipients? (?:failed|has been delayed)[^\n:]*|"
    r"address(?:\(es\)|es)? failed)\s*:",
    re.IGNORECASE)
_MESSAGE_ID_LINE = re.compile(r"^[ \t]*Message-ID:[ \t]*(?:\r?\n[ \t]+)?(\S[^\r\n]*)",
                              re.IGNORECASE | re.MULTILINE)
_SEPARATOR = re.compile(
    r"^(?:-+ ?Below this line is a copy of the message"
    r"|-+ This is a copy of the message"
    r"|-+ The header of the original message"
    r"|-+ ?(?:original message|undelivered message|returned message|message headers?)\b"
    r"|Original message follows"
    r"|Original message headers:"
    r"|Below is a copy of the original message"
    r"|The original message was received at"
    r"|Received: |Return-Path: )",
    re.IGNORECASE | re.MULTILINE)
_BOUNCE_SUBJECT = re.compile(
    r"^\s*(?:undeliver(?:ed|able)|mail delivery (?:failed|failure|problem|system)"
    r"|delivery status notification|failure notice|returned mail|delivery failure"
    r"|delivery (?:has )?failed|delivery notification|non[- ]?deliver|nondeliverable"
    r"|message (?:not delivered|delivery (?:failure|delayed))|could not deliver|unable to deliver"
    r"|mail system error|delayed mail|delivery delayed|warning: could not send"
    r"|unzustellbar|nicht zustellbar|non remis|non distribuable|no entregado|niet afgeleverd"
    r"|olevererbar|onbestelbaar)",
    re.IGNORECASE)
_BOUNCE_BODY = re.compile(
    r"this is the qmail-send program|created automatically by mail delivery software"
    r"|this is the mail system at host|could not be delivered to one or more"
    r"|i'm sorry to have to inform you that your message could not"
    r"|the following addresses had permanent fatal errors|delivery to the following recipient"
    r"|delivery has failed to these recipients|your message (?:couldn't|could not|wasn't|was not)"
    r" be delivered|message could not be delivered|unable to deliver|permanent fatal errors"
    r"|the original message was received at",
    re.IGNORECASE)
_DELAY = re.compile(
    r"\bdelay(?:ed)?\b|will (?:continue|keep) (?:to try|trying)|still trying|will retry"
    r"|will be retried|not yet been delivered|warning: could not send", re.IGNORECASE)
_GIVE_UP = re.compile(
    r"giving up|given up|in the queue too long|not going to try again|failed permanently"
    r"|permanent (?:error|failure|fatal)|retry timeout exceeded", re.IGNORECASE)
_TAG = re.compile(r"<[^<>]*>")
_MAX_WORD = 400  # longer "addresses" are junk; the cap keeps the address regexes linear


def parse_bounce(raw: bytes) -> Bounce | None:
    """The delivery report in ``raw``, or None when it is none; never raises."""
    try:
        msg = email.message_from_bytes(bytes(raw)[:MAX_BYTES], policy=email.policy.compat32)
    except Exception:  # the stdlib parser on hostile input
        return None
    try:
        report_type = _report_type(msg)
        if report_type in _NOT_BOUNCES:
            return None
        bounce = _standard(msg)
        if bounce is None:
            bounce = _heuristic(msg, declared=report_type == "delivery-status")
        return bounce
    except Exception:  # a bug or a pathological message: not a bounce we can use
        return None


# --- RFC 3464 ----------------------------------------------------------------------------------


def _standard(msg: Message) -> Bounce | None:
    """A report with a delivery-status part; None when there is no such part."""
    parts = list(_parts(msg))
    status = next((p for p in parts if p.get_content_type() in _STATUS_TYPES), None)
    if status is None:
        return None
    blocks = _blocks(_part_text(status))
    per_message = blocks[0] if blocks and not _is_recipient(blocks[0]) else {}
    recipients = [_recipient(b) for b in blocks if _is_recipient(b)][:MAX_RECIPIENTS]
    notice = _notice(parts)
    kind = "dsn"
    if not recipients:  # a broken status part: read the human-readable one instead
        recipients, kind = _text_recipients(msg, notice), "heuristic"
    original = _original_id(parts, notice) or normalize_message_id(
        per_message.get("x-original-message-id"))
    return Bounce(
        recipients=recipients, original_message_id=original, kind=kind,
        original_envelope_id=per_message.get("original-envelope-id") or None,
        reporting_mta=_typed_value(per_message.get("reporting-mta")) or None,
        subject=_subject(msg), notice=notice[0],
    )


def _blocks(text: str) -> list[dict[str, str]]:
    """RFC 3464 field groups: unfolded, names lower case, the first of each name kept."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
            current, name = {}, None
        elif line[0] in " \t" and name is not None:
            current[name] = f"{current[name]} {line.strip()}".strip()
        elif match := _FIELD.match(line):
            name = match.group(1).lower()
            if name in current:
                name = None  # a repeat: keep the first, drop its continuation lines too
            else:
                current[name] = match.group(2).strip()
    if current:
        blocks.append(current)
    return blocks


def _is_recipient(block: dict[str, str]) -> bool:
    return "final-recipient" in block or "original-recipient" in block


def _recipient(block: dict[str, str]) -> BounceRecipient:
    final = _typed_address(block.get("final-recipient"))
    original = _typed_address(block.get("original-recipient"))
    diagnostic = _typed_value(block.get("diagnostic-code"))
    action = (block.get("action", "").split() or [""])[0].lower().strip(";")
    status = _status(block.get("status", "")) or _status(diagnostic)
    return _settled(final or original or "", status, action, diagnostic, original)


def _settled(address: str, status: str | None, action: str, diagnostic: str,
             original: str | None = None, delayed: bool = False) -> BounceRecipient:
    """Fill a missing action from the status class and a missing status from the action."""
    if action not in _ACTIONS:
        action = _ACTION_BY_CLASS.get((status or "")[:1], "delayed" if delayed else "failed")
    if status is None:
        status = {"failed": "5.0.0", "delayed": "4.0.0"}.get(action, "2.0.0")
    return BounceRecipient(address, status, action, diagnostic[:1000], original)


def _status(text: str) -> str | None:
    """The first RFC 3463 enhanced status code in ``text``."""
    match = _ENHANCED.search(text or "")
    return match.group(1) if match else None


def _typed_value(value: str | None) -> str:
    """``rfc822; a@b`` / ``smtp; 550 ...`` / ``dns; mx`` without the type label."""
    text = _SPACE.sub(" ", value or "").strip()
    label, semicolon, rest = text.partition(";")
    if semicolon and re.fullmatch(r"[A-Za-z0-9\-]+", label.strip()):
        return rest.strip()
    return text


def _typed_address(value: str | None) -> str | None:
    text = _typed_value(value).strip().strip("<>").strip()
    return text.lower() or None


# --- non-standard bounces ----------------------------------------------------------------------


def _heuristic(msg: Message, declared: bool) -> Bounce | None:
    """A non-RFC 3464 bounce recognised by sender plus subject or body; else None."""
    subject = _subject(msg)
    parts = list(_parts(msg))
    notice = _notice(parts)
    if not _looks_like_bounce(msg, subject, notice[0], declared):
        return None
    return Bounce(
        recipients=_text_recipients(msg, notice), kind="heuristic",
        original_message_id=_original_id(parts, notice), subject=subject, notice=notice[0],
    )


def _looks_like_bounce(msg: Message, subject: str, notice: str, declared: bool) -> bool:
    if (msg.get("Auto-Submitted") or "").strip().lower().startswith("auto-replied"):
        return False  # an out-of-office reply about an undelivered parcel is not a bounce
    if msg.get("X-Failed-Recipients"):
        return True  # Exim's own marker
    name, addr = _from(msg)
    local = addr.rpartition("@")[0].replace("-", "").replace("_", "")
    sender = (local in ("mailerdaemon", "postmaster") or name in _DAEMON_NAMES
              or (msg.get("Return-Path") or "").strip() == "<>" or declared)
    return sender and bool(_BOUNCE_SUBJECT.search(subject) or _BOUNCE_BODY.search(notice))


def _text_recipients(msg: Message, notice: tuple[str, str]) -> list[BounceRecipient]:
    """Recipients named in a human-readable notice, with the codes found near them."""
    text = notice[0]
    delayed = bool(_DELAY.search(text) or _DELAY.search(_subject(msg))) and not _GIVE_UP.search(
        text)
    found = _angle_blocks(text) or _after_intro(text)
    if failed := _x_failed(msg):  # Exim names them for sure; the text may tell why
        found = {address: found.get(address, "") for address in failed}
    elif not found:
        found = _loose(msg, text)
    fallback = _status(text)
    recipients = []
    for address, diagnostic in list(found.items())[:MAX_RECIPIENTS]:
        status = _status(diagnostic) or _basic_status(diagnostic) or fallback
        action = ""
        if status and status.startswith("4") and not delayed:
            action = "failed" if _GIVE_UP.search(text) else "delayed"
        recipients.append(_settled(address, status, action, diagnostic, delayed=delayed))
    return recipients


def _x_failed(msg: Message) -> dict[str, str]:
    values = msg.get_all("X-Failed-Recipients") or []
    pairs = getaddresses([str(v) for v in values])
    return {addr.lower(): "" for _, addr in pairs if "@" in addr}


def _angle_blocks(text: str) -> dict[str, str]:
    """qmail and Postfix: ``<a@b>:`` then the diagnostic, up to the next blank line."""
    found: dict[str, str] = {}
    lines = text.splitlines()
    for number, line in enumerate(lines):
        if len(line) <= _MAX_WORD and (match := _ANGLE_LINE.match(line)):
            found.setdefault(match.group(1).lower(), _paragraph(match.group(2), lines[number + 1:]))
    return found


def _after_intro(text: str) -> dict[str, str]:
    """Exim and friends: "The following address(es) failed:" then address lines."""
    intro = _FAILED_INTRO.search(text)
    if intro is None:
        return {}
    found: dict[str, str] = {}
    lines = text[intro.end():].splitlines()
    for number, line in enumerate(lines):
        if len(line) <= _MAX_WORD and (match := _ADDRESS_LINE.fullmatch(line)):
            found.setdefault(match.group(1).lower(), _paragraph("", lines[number + 1:]))
    return found


def _loose(msg: Message, text: str) -> dict[str, str]:
    """Last resort: every address in the notice but the bounce's own and the daemons'."""
    own = {addr.lower() for _, addr in getaddresses(
        [str(v) for name in ("From", "To", "Cc", "Return-Path", "Delivered-To", "Sender")
         for v in msg.get_all(name) or []])}
    found: dict[str, str] = {}
    for line in text.splitlines():
        for word in line.split():  # words first: a regex over a long run would be quadratic
            match = _ADDRESS.search(word[:_MAX_WORD]) if "@" in word else None
            if match is None:
                continue
            address = match.group(0).lower().rstrip(".")
            local = address.rpartition("@")[0].replace("-", "")
            if address not in own and local not in ("mailerdaemon", "postmaster"):
                found.setdefault(address, _SPACE.sub(" ", line).strip()[:1000])
    return found


def _paragraph(head: str, following: list[str]) -> str:
    """``head`` plus the ``following`` lines up to a blank line or an address line."""
    lines = [head]
    for line in following[:20]:
        if not line.strip() or (len(line) <= _MAX_WORD and (
                _ANGLE_LINE.match(line) or _ADDRESS_LINE.fullmatch(line))):
            break
        lines.append(line)
    return _SPACE.sub(" ", " ".join(lines)).strip()[:1000]


def _basic_status(text: str) -> str | None:
    match = _BASIC.search(text or "")
    return f"{match.group(1)[0]}.0.0" if match else None


# --- message parts -----------------------------------------------------------------------------


def _parts(msg: Message, depth: int = 0) -> Iterator[Message]:
    """The parts of ``msg`` itself: not those inside a returned message or a status part."""
    yield msg
    if depth > 20 or msg.get_content_maintype() == "message" or not msg.is_multipart():
        return
    for part in msg.get_payload():
        if isinstance(part, Message):
            yield from _parts(part, depth + 1)


def _part_bytes(part: Message) -> bytes:
    """The decoded body of a leaf or a message/* part whose body the stdlib split up."""
    payload = part.get_payload()
    if isinstance(payload, list):  # message/*: the stdlib parsed it; put the text back
        raw = "\n".join(p.as_string(maxheaderlen=0) for p in payload if isinstance(p, Message))
        body = raw.encode("utf-8", "surrogateescape")
    else:
        body = str(payload).encode("utf-8", "surrogateescape")
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    try:
        if encoding == "base64":
            return base64.b64decode(re.sub(rb"[^A-Za-z0-9+/=]", b"", body) + b"==")
        if encoding == "quoted-printable":
            return quopri.decodestring(body)
    except (binascii.Error, ValueError):
        pass
    return body


def _part_text(part: Message) -> str:
    data = _part_bytes(part)[:MAX_TEXT]
    try:
        label = part.get_content_charset()
    except Exception:  # a garbled charset parameter
        label = None
    return decode_body(data, label, [])[0]


def _notice(parts: list[Message]) -> tuple[str, str]:
    """(the human-readable report, the original quoted after it) from the text parts."""
    texts = [_part_text(p) for p in parts if p.get_content_type() == "text/plain"]
    if not texts:
        texts = [_TAG.sub(" ", _part_text(p)) for p in parts
                 if p.get_content_type() == "text/html"]
    text = "\n\n".join(texts)[:MAX_TEXT]
    cut = _SEPARATOR.search(text)
    return (text[:cut.start()], text[cut.start():]) if cut else (text, "")


def _original_id(parts: list[Message], notice: tuple[str, str]) -> str | None:
    """The Message-ID of the returned mail: its attached copy or headers, else the quoted text."""
    for part in parts:
        ctype = part.get_content_type()
        if ctype in _ORIGINAL_TYPES:
            payload = part.get_payload()
            inner = payload[0] if isinstance(payload, list) and payload else None
            if isinstance(inner, Message) and inner.get("Message-ID"):
                found = normalize_message_id(str(inner.get("Message-ID")))
            else:
                found = _header_id(_part_bytes(part))
        elif ctype in _HEADER_TYPES:
            found = _header_id(_part_bytes(part))
        else:
            continue
        if found:
            return found
    for text in (notice[1], notice[0]):
        if match := _MESSAGE_ID_LINE.search(text):
            return normalize_message_id(match.group(1))
    return None


def _header_id(data: bytes) -> str | None:
    headers = HeaderParser(policy=email.policy.compat32).parsestr(
        data[:MAX_TEXT].decode("utf-8", "replace"), headersonly=True)
    value = headers.get("Message-ID")
    return normalize_message_id(str(value)) if value else None


def _report_type(msg: Message) -> str | None:
    if msg.get_content_type() != "multipart/report":
        return None
    value = msg.get_param("report-type")
    return str(value).strip().lower() if isinstance(value, str) else None


def _subject(msg: Message) -> str:
    return header_text(msg.get("Subject", ""), None)


def _from(msg: Message) -> tuple[str, str]:
    pairs = getaddresses([str(msg.get("From", ""))])
    name, addr = pairs[0] if pairs else ("", "")
    return header_text(name, None).strip().lower(), addr.strip().lower()
