"""Email parser definitions: named fields pulled from the subject or body (pure).

A definition is a regex (its ``value`` group, else group 1, else the whole match) or a
``Label: value`` line. Extracted fields become facts (``field.NAME``) for later rules and
for service requests.
"""

from __future__ import annotations

from rules import regexguard
from rules.schema import ParserDef, RuleSet


def extract_fields(ruleset: RuleSet, subject: str, body: str) -> dict[str, str]:
    """Every parser's first match; a field found in the subject wins over the body."""
    fields: dict[str, str] = {}
    for parser in ruleset.parsers:
        texts = {"subject": [subject], "body": [body], "any": [subject, body]}[parser.source]
        for text in texts:
            value = _first(parser, text)
            if value is not None:
                fields.setdefault(parser.name, value)
                break
    return fields


def _first(parser: ParserDef, text: str) -> str | None:
    try:
        match = regexguard.search(parser.pattern, text)
    except TimeoutError:
        return None
    if match is None:
        return None
    groups = match.groupdict()
    if "value" in groups:
        value = groups["value"]
    else:
        value = match.group(1) if match.re.groups else match.group(0)
    return value.strip() if value is not None else None  # an optional group that took no part
