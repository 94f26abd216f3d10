"""Facts: what the rules can ask about a message (pipeline step between parse and rules).

Built from the parsed message, the envelope and what the store knows (thread, tags,
customer). Cheap facts are computed up front; ``header.*`` and anything passed as a lazy
callable are looked up only when a rule asks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

from engine.mime import ParsedMessage
from engine.tags import strip_markers

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_MISSING = object()


class MessageFacts(Mapping[str, Any]):
    """A read-only mapping of rule keys (see ``rules.conditions``) to values."""

    def __init__(self, values: dict[str, Any], headers: list[tuple[str, str]],
                 lazy: dict[str, Callable[[], Any]] | None = None):
        self._values = values
        self._headers = headers
        self._lazy = lazy or {}
        self._by_name: dict[str, str] | None = None  # header name (lower) -> first value

    def __getitem__(self, key: str) -> Any:
        found = self.get(key, _MISSING)
        if found is _MISSING:
            raise KeyError(key)
        return found

    def get(self, key: str, default: Any = None) -> Any:
        # not via __getitem__: rules ask for absent headers and tags on every message, and
        # a KeyError raised and caught costs more than the lookup
        if key in self._values:
            return self._values[key]
        if key in self._lazy:
            self._values[key] = self._lazy.pop(key)()
            return self._values[key]
        if key.startswith("header."):
            if self._by_name is None:  # the first occurrence of each name, as email.Message
                self._by_name = {}
                for name, value in self._headers:
                    self._by_name.setdefault(name.lower(), value)
            found = self._by_name.get(key[7:].lower())
            if found is not None:
                return found
        return default

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    @property
    def headers(self) -> list[tuple[str, str]]:
        return self._headers


def message_facts(parsed: ParsedMessage, *, size: int, received_at: datetime,
                  accounts: list[str], thread_known: bool = False,
                  fields: dict[str, str] | None = None, tags: dict[str, str] | None = None,
                  lazy: dict[str, Callable[[], Any]] | None = None) -> MessageFacts:
    """Facts for one inbound message."""
    sender = parsed.from_.addr if parsed.from_ else ""
    values: dict[str, Any] = {
        "sender.address": sender,
        "sender.domain": sender.rpartition("@")[2] if "@" in sender else "",
        "sender.name": parsed.from_.name if parsed.from_ else "",
        "to": [a.addr for a in parsed.to],
        "cc": [a.addr for a in parsed.cc],
        "recipient.account": accounts,
        "subject": strip_markers(parsed.subject),
        "body": parsed.text,
        "size": size,
        "received.date": received_at.date(),
        "received.time": f"{received_at.hour:02d}:{received_at.minute:02d}",  # strftime: 3x as long
        "received.weekday": WEEKDAYS[received_at.weekday()],
        "attachment.present": bool(parsed.attachments),
        "attachment.type": [a.content_type for a in parsed.attachments],
        "attachment.name": [a.filename for a in parsed.attachments if a.filename],
        "language": None,
        "charset": parsed.charset,
        "classification": None,
        "intent": None,
        "thread.known": thread_known,
    }
    values |= {f"field.{k}": v for k, v in (fields or {}).items()}
    values |= {f"tag.{k}": v for k, v in (tags or {}).items()}
    return MessageFacts(values, parsed.headers, lazy)
