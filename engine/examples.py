"""Example custom procedures, referenced by ``rules.example.yaml``.

A procedure receives the message facts (a mapping; ``facts.headers`` has every header)
and returns True to continue processing or False to stop (Oracle's Y/N).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

VIP_DOMAINS = frozenset({"bigcustomer.example"})


def is_vip(facts: Mapping[str, Any]) -> str:
    """A custom tag value: "yes" for senders from a VIP domain."""
    return "yes" if facts.get("sender.domain") in VIP_DOMAINS else "no"


def quarantine_check(facts: Mapping[str, Any]) -> bool:
    """Stop automatic processing of mail carrying executables from unknown senders."""
    return not any(str(name).lower().endswith((".exe", ".scr", ".bat"))
                   for name in facts.get("attachment.name") or [])
