"""Composing outbound mail (pure): an answer from a template, an agent's new message, or a
redirect of the original.

Every message we send has its own Message-ID, a Date, From/Reply-To/signature from its
account, In-Reply-To and References when it answers a message, the reference tag in its
subject, the loop headers of automatic mail (``engine.autoresponse``), a text part and an
HTML alternative when the template is HTML.

External redirects resend the original unchanged with ``Resent-*`` headers prepended
(RFC 5322 §3.6.6: the recipient sees the customer's own message, and replies go to the
customer) or, with ``mode: attach``, forward it attached as ``message/rfc822``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import SMTP, compat32
from email.utils import format_datetime, formataddr, make_msgid

from engine.config import AccountSettings
from engine.mime import ParsedMessage
from engine.tags import strip_markers, with_marker

REPLY_PREFIX = "Re: "


@dataclass(frozen=True)
class Composed:
    raw: bytes
    message_id: str
    subject: str


def answer(*, account: AccountSettings, inbound: ParsedMessage, rcpt: str, text: str,
           html: str | None, marker: str | None, hostname: str, now: datetime,
           headers: list[tuple[str, str]],
           attachments: Sequence[tuple[str, str, bytes]] = ()) -> Composed:
    """An answer to ``inbound`` from ``account`` (auto-acknowledgement, auto-reply, an
    agent's reply with ``attachments``: (filename, content type, bytes))."""
    msg = EmailMessage(policy=SMTP)
    subject = strip_markers(inbound.subject).strip() or "(no subject)"
    if not subject.lower().startswith(("re:", "aw:", "sv:")):
        subject = REPLY_PREFIX + subject
    if marker:
        subject = with_marker(subject, marker)
    _identity(msg, account, subject, now, hostname)
    msg["To"] = rcpt
    if inbound.message_id:
        msg["In-Reply-To"] = inbound.message_id
        refs = [*inbound.references[-9:], inbound.message_id]  # RFC 5322 §3.6.4, trimmed
        msg["References"] = " ".join(dict.fromkeys(refs))
    for name, value in headers:
        msg[name] = value
    _body(msg, account, text, html, attachments)
    return Composed(msg.as_bytes(), msg["Message-ID"], subject)


def _body(msg: EmailMessage, account: AccountSettings, text: str, html: str | None,
          attachments: Sequence[tuple[str, str, bytes]]) -> None:
    """Text with the account's signature, an HTML alternative, then the attachments."""
    body = text.rstrip("\n") + ("\n\n" + account.signature.rstrip("\n") if account.signature
                                else "") + "\n"
    msg.set_content(body)
    if html is not None:
        signature = f"<pre>{_escape(account.signature)}</pre>" if account.signature else ""
        msg.add_alternative(html + signature, subtype="html")
    for filename, content_type, data in attachments:
        maintype, _, subtype = content_type.partition("/")
        if not subtype or maintype in ("multipart", "message"):
            maintype, subtype = "application", "octet-stream"
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)


def new_message(*, account: AccountSettings, to: Sequence[str], cc: Sequence[str],
                subject: str, text: str, html: str | None, marker: str | None, hostname: str,
                now: datetime, attachments: Sequence[tuple[str, str, bytes]] = ()) -> Composed:
    """A new message from ``account`` (an agent's, not an answer: no In-Reply-To)."""
    msg = EmailMessage(policy=SMTP)
    title = strip_markers(subject).strip() or "(no subject)"
    if marker:
        title = with_marker(title, marker)
    _identity(msg, account, title, now, hostname)
    msg["To"] = ", ".join(to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    _body(msg, account, text, html, attachments)
    return Composed(msg.as_bytes(), msg["Message-ID"], title)


def resend(*, original: bytes, account: AccountSettings, rcpt: str, hostname: str,
           now: datetime) -> Composed:
    """The original bytes with ``Resent-*`` headers on top (RFC 5322 §3.6.6)."""
    message_id = make_msgid(domain=hostname)
    sender = account.addresses[0]
    block = (f"Resent-From: {formataddr((account.from_name or '', sender))}\r\n"
             f"Resent-To: {rcpt}\r\nResent-Date: {format_datetime(now)}\r\n"
             f"Resent-Message-ID: {message_id}\r\n").encode()
    return Composed(block + original, message_id, "")


def forward_attached(*, original: bytes, subject: str, account: AccountSettings, rcpt: str,
                     hostname: str, now: datetime,
                     headers: list[tuple[str, str]]) -> Composed:
    """A new message carrying the original as ``message/rfc822``."""
    msg = EmailMessage(policy=SMTP)
    title = "Fwd: " + (strip_markers(subject).strip() or "(no subject)")
    _identity(msg, account, title, now, hostname)
    msg["To"] = rcpt
    for name, value in headers:
        msg[name] = value
    msg.set_content(f"Redirected by {account.name}: the original message is attached.\n")
    # a message/rfc822 part must not be base64 (RFC 2046 §5.2.1): attach it as a message
    msg.add_attachment(message_from_bytes(original, policy=compat32), filename="original.eml")
    return Composed(msg.as_bytes(), msg["Message-ID"], title)


def _identity(msg: EmailMessage, account: AccountSettings, subject: str, now: datetime,
              hostname: str) -> None:
    msg["From"] = formataddr((account.from_name or "", account.addresses[0]))
    if account.reply_to:
        msg["Reply-To"] = account.reply_to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = make_msgid(domain=hostname)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
