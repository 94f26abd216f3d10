"""Merge fields: the standard field catalogue and the context a reply template is rendered with.

Sits between the pipeline and ``engine.templates``: whoever sends mail (outbox auto-acks, agent
replies) gathers plain values here — account settings, the inbound message, the agent, the
customer/contact, acknowledgement details — and gets a flat ``{CODE: text}`` mapping with every
standard field present. The codes follow Oracle Email Center's groups and prefixes: customer
``CP_``, contact ``CON_``, agent ``AD_``, miscellaneous ``MD_``, current account ``ACCT_``,
current inbound message ``INB_``, auto-acknowledgement ``ACK_``.

Pure: no I/O; ``now`` and the time zone are parameters. The typed errors of the template
layer live here too, so ``engine.templates`` and ``engine.sqlfields`` share them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any

from engine.config import AccountSettings
from engine.tags import strip_markers

FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
Stamp = Callable[[datetime | None], str]


# --- errors ---------------------------------------------------------------------------------------


class TemplateError(Exception):
    """Base of every template and merge-field error Postdesk raises."""


class InvalidTemplate(TemplateError):
    """A template that cannot be loaded or compiled (``line`` when known)."""

    def __init__(self, name: str, message: str, line: int | None = None):
        self.name, self.line = name, line
        where = f"{name}:{line}" if line else name
        super().__init__(f"template {where}: {message}")


class FieldError(TemplateError):
    """A merge-field problem that names the fields (``names``, sorted)."""

    what = "merge field"

    def __init__(self, names: Iterable[str], hint: str = ""):
        self.names = tuple(sorted(set(names)))
        listed = ", ".join(self.names)
        super().__init__(f"{self.what}: {listed}" + (f" ({hint})" if hint else ""))


class UnknownField(FieldError):
    """A template uses a field that is neither standard nor supplied (a typo, usually)."""

    what = "unknown merge field"


class MissingField(FieldError):
    """A required custom field has no value; the agent must enter it before sending."""

    what = "missing required merge field"


class SandboxViolation(TemplateError):
    """A template tried something the sandbox forbids (private attributes, huge values)."""


# --- the standard fields --------------------------------------------------------------------------


@dataclass(frozen=True)
class MergeField:
    code: str
    group: str
    description: str


_GROUPS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "customer": ("CP_", [
        ("PARTY_ID", "customer identifier"), ("PARTY_NAME", "customer (organisation) name"),
        ("PARTY_NUMBER", "customer number"), ("PARTY_TYPE", "organisation or person"),
        ("EMAIL", "customer e-mail address"), ("PHONE", "customer phone number"),
        ("ADDRESS", "street address"), ("CITY", "city"), ("POSTAL_CODE", "postal code"),
        ("COUNTRY", "country"),
    ]),
    "contact": ("CON_", [
        ("PARTY_ID", "contact identifier"), ("TITLE", "salutation (Mr, Ms, Dr)"),
        ("FIRST_NAME", "first name"), ("LAST_NAME", "last name"), ("FULL_NAME", "full name"),
        ("EMAIL", "e-mail address"), ("PHONE", "phone number"),
    ]),
    "agent": ("AD_", [
        ("FIRST_NAME", "agent first name"), ("LAST_NAME", "agent last name"),
        ("FULL_NAME", "agent full name"), ("USER_NAME", "agent login name"),
        ("EMAIL", "agent e-mail address"), ("TITLE", "agent job title"),
    ]),
    "miscellaneous": ("MD_", [
        ("CURR_DATE", "today's date"), ("CURR_TIME", "the time now"),
    ]),
    "account": ("ACCT_", [
        ("NAME", "e-mail account name"), ("EMAIL", "account's first address"),
        ("FROM_NAME", "display name mail is sent as"), ("REPLY_TO", "reply-to address"),
        ("SIGNATURE", "account signature"),
    ]),
    "inbound": ("INB_", [
        ("SUBJECT", "subject (reference tag removed)"), ("FROM", "sender address"),
        ("FROM_NAME", "sender display name"), ("TO", "To addresses, comma-separated"),
        ("CC", "Cc addresses, comma-separated"), ("RECEIVED_DATE", "date received"),
        ("RECEIVED_TIME", "time received"), ("MESSAGE_ID", "Message-ID header"),
        ("BODY", "the original text, quoted with '> '"),
    ]),
    "acknowledgement": ("ACK_", [
        ("SUBJECT", "subject of the acknowledged mail"), ("RECEIVED_DATE", "date received"),
        ("RECEIVED_TIME", "time received"), ("REFERENCE", "reference number to quote"),
        ("TAG", "subject tag marker, e.g. [#AB12CD]"),
    ]),
}

STANDARD_FIELDS: dict[str, MergeField] = {
    prefix + suffix: MergeField(prefix + suffix, group, description)
    for group, (prefix, fields) in _GROUPS.items()
    for suffix, description in fields
}
PREFIXES: tuple[str, ...] = tuple(prefix for prefix, _ in _GROUPS.values())

DEFAULT_VALUES: dict[str, str] = {  # until customers exist (a later issue)
    "CP_PARTY_NAME": "Customer",
    "CON_FIRST_NAME": "Customer",
    "CON_FULL_NAME": "Customer",
}


def is_reserved(name: str) -> bool:
    """A name with a standard prefix: only standard codes may use it (so typos are caught)."""
    return name.upper().startswith(PREFIXES)


# --- the values -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InboundFields:
    """What the ``INB_``/``ACK_`` fields need from the message being answered."""

    subject: str = ""
    from_addr: str = ""
    from_name: str = ""
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    received_at: datetime | None = None
    message_id: str = ""
    text: str = ""

    @classmethod
    def from_parsed(cls, parsed: Any, received_at: datetime) -> InboundFields:
        """From an ``engine.mime.ParsedMessage`` (subject markers stripped)."""
        sender = parsed.from_
        return cls(strip_markers(parsed.subject), sender.addr if sender else "",
                   sender.name if sender else "", tuple(a.addr for a in parsed.to),
                   tuple(a.addr for a in parsed.cc), received_at, parsed.message_id, parsed.text)

    @classmethod
    def from_stored(cls, message: Any) -> InboundFields:
        """From an ``engine.store.models.Message`` row."""
        return cls(message.subject, message.from_addr, message.from_name,
                   tuple(message.to_addrs or ()), tuple(message.cc_addrs or ()),
                   message.received_at, message.message_id_header, message.body_text)


@dataclass(frozen=True)
class AgentInfo:
    first_name: str = ""
    last_name: str = ""
    email: str = ""
    user_name: str = ""
    title: str = ""

    @classmethod
    def from_display_name(cls, name: str, email: str = "", user_name: str = "") -> AgentInfo:
        """``Ana Lima`` → first ``Ana``, last ``Lima`` (the users table keeps one name)."""
        first, _, last = name.strip().partition(" ")
        return cls(first, last.strip(), email, user_name)


@dataclass(frozen=True)
class AckInfo:
    reference: str = ""
    tag: str = ""


def merge_context(*, account: AccountSettings | None = None,
                  inbound: InboundFields | None = None, agent: AgentInfo | None = None,
                  customer: Mapping[str, Any] | None = None,
                  contact: Mapping[str, Any] | None = None, ack: AckInfo | None = None,
                  defaults: Mapping[str, str] | None = None, now: datetime | None = None,
                  tz: tzinfo = UTC, date_format: str = "%Y-%m-%d",
                  time_format: str = "%H:%M") -> dict[str, str]:
    """Every standard field as text: given values, else ``defaults``, else ``DEFAULT_VALUES``.

    ``customer``/``contact`` keys may be codes (``CP_PARTY_NAME``) or their suffixes
    (``party_name``); a key naming no field of its group is a ``ValueError``.
    """
    def day(moment: datetime | None) -> str:
        return moment.astimezone(tz).strftime(date_format) if moment else ""

    def clock(moment: datetime | None) -> str:
        return moment.astimezone(tz).strftime(time_format) if moment else ""

    unknown = sorted(set(defaults or ()) - set(STANDARD_FIELDS))
    if unknown:
        raise ValueError(f"defaults for unknown merge fields: {', '.join(unknown)}")
    values = {code: "" for code in STANDARD_FIELDS} | DEFAULT_VALUES | dict(defaults or {})
    moment = now or datetime.now(UTC)
    values |= {"MD_CURR_DATE": day(moment), "MD_CURR_TIME": clock(moment)}
    if account is not None:
        values |= _present(_account(account))
    if inbound is not None:
        values |= _present(_inbound(inbound, day, clock))
    if agent is not None:
        values |= _present(_agent(agent))
    values |= _present(_ack(ack or AckInfo(), inbound, day, clock))
    values |= _present(_party("CP_", customer)) | _present(_party("CON_", contact))
    return values


def _present(fields: Mapping[str, Any]) -> dict[str, str]:
    """Given values as text; missing ones (None, "") leave the default in place."""
    return {code: str(value) for code, value in fields.items() if value not in (None, "")}


def _party(prefix: str, record: Mapping[str, Any] | None) -> dict[str, Any]:
    out = {}
    for key, value in (record or {}).items():
        code = key.upper() if key.upper().startswith(prefix) else prefix + key.upper()
        if code not in STANDARD_FIELDS:
            raise ValueError(f"{key!r} is not a {prefix}* merge field")
        out[code] = value
    return out


def _account(acc: AccountSettings) -> dict[str, Any]:
    return {"ACCT_NAME": acc.name, "ACCT_EMAIL": acc.addresses[0],
            "ACCT_FROM_NAME": acc.from_name, "ACCT_REPLY_TO": acc.reply_to or acc.addresses[0],
            "ACCT_SIGNATURE": acc.signature}


def _inbound(inb: InboundFields, day: Stamp, clock: Stamp) -> dict[str, Any]:
    return {"INB_SUBJECT": inb.subject, "INB_FROM": inb.from_addr, "INB_FROM_NAME": inb.from_name,
            "INB_TO": ", ".join(inb.to), "INB_CC": ", ".join(inb.cc),
            "INB_RECEIVED_DATE": day(inb.received_at), "INB_RECEIVED_TIME": clock(inb.received_at),
            "INB_MESSAGE_ID": inb.message_id, "INB_BODY": quote(inb.text)}


def _agent(agent: AgentInfo) -> dict[str, Any]:
    full = " ".join(part for part in (agent.first_name, agent.last_name) if part)
    return {"AD_FIRST_NAME": agent.first_name, "AD_LAST_NAME": agent.last_name,
            "AD_FULL_NAME": full, "AD_USER_NAME": agent.user_name, "AD_EMAIL": agent.email,
            "AD_TITLE": agent.title}


def _ack(ack: AckInfo, inb: InboundFields | None, day: Stamp, clock: Stamp) -> dict[str, Any]:
    received = inb.received_at if inb else None
    return {"ACK_SUBJECT": inb.subject if inb else "", "ACK_RECEIVED_DATE": day(received),
            "ACK_RECEIVED_TIME": clock(received), "ACK_REFERENCE": ack.reference,
            "ACK_TAG": ack.tag}


def quote(text: str) -> str:
    """``text`` as a reply quotes it: every line prefixed with ``> `` (``>`` when empty)."""
    lines = text.rstrip("\n").splitlines()
    return "\n".join(f"> {line}" if line.strip() else ">" for line in lines)
