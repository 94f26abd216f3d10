"""Condition keys and operators: the vocabulary of ``when:`` blocks (pure, no I/O).

A key names a fact about the message (``subject``, ``sender.domain``, ``header.X-Spam``);
an operator compares that fact with the rule's operand. Both live in registries, one small
named unit each (Mailman-style), so ``rules check`` can list them and suggest the nearest
valid name for a typo. Facts come from the caller as a mapping; a missing fact is ``None``.
List-valued facts (``to``, ``attachment.name``) match when any element matches.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import regex

from rules import regexsplit

if TYPE_CHECKING:
    from rules.schema import Condition


@dataclass(frozen=True)
class Key:
    """A fact a condition can test; ``kind`` decides which operators make sense."""

    name: str
    kind: str  # text | number | date | time | weekday | bool | list
    help: str


KEYS: dict[str, Key] = {k.name: k for k in [
    Key("sender.address", "text", "the From address, lower case"),
    Key("sender.domain", "text", "the domain of the From address"),
    Key("sender.name", "text", "the From display name"),
    Key("to", "list", "every To address"),
    Key("cc", "list", "every Cc address"),
    Key("recipient.account", "list", "the accounts the message was delivered to"),
    Key("subject", "text", "the subject, decoded, without our reference tag"),
    Key("body", "text", "the text body (HTML-only mail: its text rendering)"),
    Key("size", "number", "the raw message size in bytes"),
    Key("received.date", "date", "the day it arrived (UTC), YYYY-MM-DD"),
    Key("received.time", "time", "the time it arrived (UTC), HH:MM"),
    Key("received.weekday", "weekday", "mon, tue, wed, thu, fri, sat or sun"),
    Key("attachment.present", "bool", "whether it has attachments"),
    Key("attachment.type", "list", "attachment content types, e.g. application/pdf"),
    Key("attachment.name", "list", "attachment file names"),
    Key("language", "text", "detected language code, e.g. en"),
    Key("charset", "text", "charset of the text body"),
    Key("classification", "text", "the classification a classification rule gave it"),
    Key("intent", "text", "the detected intent"),
    Key("thread.known", "bool", "whether it joined an existing thread"),
    Key("thread.state", "text", "state of that thread's latest message"),
]}
# Families: any name after the dot is allowed.
PREFIXES: dict[str, Key] = {
    "header.": Key("header.NAME", "text", "any header by name, e.g. header.X-Priority"),
    "customer.": Key("customer.FIELD", "text", "a field of the sender's customer record"),
    "tag.": Key("tag.KEY", "text", "a value from the reference tag of a reply"),
    "field.": Key("field.NAME", "text", "a value extracted by a parser definition"),
}


def key_for(name: str) -> Key | None:
    """The Key for ``name`` (a fixed key or a member of a prefixed family)."""
    if name in KEYS:
        return KEYS[name]
    for prefix, key in PREFIXES.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            return key
    return None


def all_key_names() -> list[str]:
    return [*KEYS, *(k.name for k in PREFIXES.values())]


# --- operators -----------------------------------------------------------------------------

Test = Callable[[Any, Any], bool]


@dataclass(frozen=True)
class Operator:
    """``test(fact, operand)``; operands are prepared once by ``prepare`` when rules load."""

    name: str
    kinds: frozenset[str]
    test: Test
    prepare: Callable[[Any, bool], Any] = lambda operand, sensitive: operand
    casefold: bool = False  # compare case-insensitively unless ``case: sensitive``


TEXTY = frozenset({"text", "list"})
ORDERED = frozenset({"number", "date", "time", "text"})


def _fold(value: Any, sensitive: bool) -> Any:
    if isinstance(value, str) and not sensitive:
        return value.casefold()
    if isinstance(value, list) and not sensitive:
        return [v.casefold() if isinstance(v, str) else v for v in value]
    return value


def _compile(pattern: Any, sensitive: bool) -> Any:
    return regexsplit.warmed(regex.compile(str(pattern), 0 if sensitive else regex.IGNORECASE))


def _matches(fact: Any, pattern: Any) -> bool:
    try:
        return regexsplit.found(pattern, fact)
    except TimeoutError:  # a catastrophic pattern fails closed, never hangs
        return False


def _ordered(op: Callable[[Any, Any], bool]) -> Test:
    def test(fact: Any, operand: Any) -> bool:
        try:
            return bool(op(fact, operand))
        except TypeError:
            return False
    return test


OPERATORS: dict[str, Operator] = {o.name: o for o in [
    Operator("equals", TEXTY | ORDERED | {"bool", "weekday"}, lambda f, o: f == o,
             _fold, casefold=True),
    Operator("not_equals", TEXTY | ORDERED | {"bool", "weekday"}, lambda f, o: f != o,
             _fold, casefold=True),
    Operator("contains", TEXTY, lambda f, o: o in f, _fold, casefold=True),
    Operator("starts_with", TEXTY, lambda f, o: f.startswith(o), _fold, casefold=True),
    Operator("ends_with", TEXTY, lambda f, o: f.endswith(o), _fold, casefold=True),
    Operator("matches", TEXTY, _matches, _compile),
    Operator("in", TEXTY | ORDERED | {"weekday", "bool"}, lambda f, o: f in o, _fold,
             casefold=True),
    Operator("less_than", ORDERED, _ordered(lambda f, o: f < o)),
    Operator("greater_than", ORDERED, _ordered(lambda f, o: f > o)),
    Operator("before", frozenset({"date", "time"}), _ordered(lambda f, o: f < o)),
    Operator("after", frozenset({"date", "time"}), _ordered(lambda f, o: f > o)),
    Operator("exists", frozenset({"text", "list", "number", "date", "time", "bool",
                                   "weekday"}), lambda f, o: True),
]}
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class FactSource(Protocol):
    """What ``check`` reads: a fact by key (None when missing) and its case-folded copy."""

    def get(self, key: str) -> Any: ...

    def folded(self, key: str) -> Any: ...


def check(cond: Condition, facts: FactSource) -> tuple[bool, Any]:
    """Test one condition: (result, the fact's actual value, for the trace)."""
    actual = facts.get(cond.key)
    operator = OPERATORS[cond.op]
    if cond.op == "exists":
        present = actual not in (None, "", [])
        return present == cond.operand, actual
    if actual is None:
        return cond.op == "not_equals", actual
    value = facts.folded(cond.key) if operator.casefold and not cond.sensitive else actual
    if cond.op in TEXT_OPS and _texty(cond.operand):  # a number where text is compared
        value = [_as_text(v) for v in value] if isinstance(value, list) else _as_text(value)
    if isinstance(value, list) and cond.op not in ("equals", "not_equals"):
        hits = [operator.test(v, cond.operand) for v in value if v is not None]
        return any(hits), actual
    if isinstance(value, list):  # equals on a list: any element equals
        found = any(v == cond.operand for v in value)
        return (found if cond.op == "equals" else not found), actual
    return operator.test(value, cond.operand), actual


TEXT_OPS = frozenset({"equals", "not_equals", "contains", "starts_with", "ends_with",
                      "matches", "in"})


_SCALARS = frozenset({bool, int, float, dt.date, dt.datetime, dt.time})


Log = list[tuple["Condition", Any, bool]]  # (condition, actual value, result) as tested
LeafTest = Callable[[FactSource, Log], bool]


def compile_check(cond: Condition) -> LeafTest:
    """``check`` as one function of the facts that logs ``(cond, actual, result)``.

    A text fact (nearly every one) and a value no rule compares as text go straight to the
    operator's test; lists, and numbers compared with text, take ``check`` itself, so the
    answer is always the same.
    """
    key, operand, op = cond.key, cond.operand, cond.op
    if op == "exists":
        def exists(facts: FactSource, log: Log) -> bool:
            actual = facts.get(key)
            result = (actual not in (None, "", [])) == operand
            log.append((cond, actual, result))
            return result
        return exists
    operator = OPERATORS[op]
    test, fold = operator.test, operator.casefold and not cond.sensitive
    missing = op == "not_equals"
    # numbers compared with text are compared as text (``_as_text``): not plain then
    plain = _SCALARS - {int, float} if op in TEXT_OPS and _texty(operand) else _SCALARS

    def leaf(facts: FactSource, log: Log) -> bool:
        actual = facts.get(key)
        kind = type(actual)
        if actual is None:
            result = missing
        elif kind is str:
            result = test(facts.folded(key) if fold else actual, operand)
        elif kind in plain:  # folding and _as_text leave these alone
            result = test(actual, operand)
        else:
            result = check(cond, facts)[0]
        log.append((cond, actual, result))
        return result
    return leaf


def _texty(operand: Any) -> bool:
    if isinstance(operand, list):
        return bool(operand) and isinstance(operand[0], str)
    return isinstance(operand, str) or hasattr(operand, "search")


def _as_text(value: Any) -> Any:
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def coerce_operand(kind: str, op: str, value: Any) -> Any:
    """Turn a YAML operand into the fact's type; raises ValueError with a readable reason."""
    if op == "exists":
        if not isinstance(value, bool):
            raise ValueError("exists takes true or false")
        return value
    if op == "in":
        if not isinstance(value, list) or not value:
            raise ValueError("in takes a non-empty list")
        return [_coerce_one(kind, v) for v in value]
    return _coerce_one(kind, value)


def _coerce_one(kind: str, value: Any) -> Any:
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        return value
    if kind == "date":
        return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))
    if kind == "time":
        return dt.time.fromisoformat(str(value)).strftime("%H:%M")
    if kind == "weekday":
        day = str(value).lower()[:3]
        if day not in WEEKDAYS:
            raise ValueError(f"expected one of {', '.join(WEEKDAYS)}, got {value!r}")
        return day
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if isinstance(value, list | dict):
        raise ValueError(f"expected a single value, got {value!r}")
    return str(value)
