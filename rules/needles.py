"""Needles: literal text a condition cannot be true without (rule compilation, pure).

``requirement(node)`` answers, for a ``when:`` tree, a set of needles at least one of which
must occur in the message's facts for the tree to hold, or None when nothing is required
(``not``, ``exists``, numbers, a regex without a usable literal). ``rules.index`` finds every
needle of a rule set in one Aho-Corasick pass per fact, so a rule none of whose needles occur
is known not to match without testing it. Soundness is all that matters here: a needle set
may be weaker than the condition, never stronger.

Text operators compare case-folded values unless ``case: sensitive`` (``rules.conditions``),
so an insensitive needle is the folded operand, looked for in the folded fact. A ``matches``
regex gives needles from the literal runs every match must contain (``regex_needles``).
"""

from __future__ import annotations

import functools
import re._parser as sre_parse  # the stdlib's own parser: literal runs, branches, repeats
import warnings
from dataclasses import dataclass
from typing import Any

import regex

from rules.conditions import key_for
from rules.regexguard import QUANTIFIER
from rules.schema import Combinator, Condition, Node

MIN_NEEDLE = 3  # shorter needles occur in nearly every body and only slow the scan down
VOLATILE = frozenset({"classification"})  # set during evaluation: never pre-scanned
_NEEDLE_OPS = ("contains", "starts_with", "ends_with", "equals")
# Flags under which a literal matches literally: IGNORECASE (simple folding, V0), and those
# that only change anchors and dots.
_PLAIN_FLAGS = (regex.IGNORECASE | regex.UNICODE | regex.VERSION0 | regex.MULTILINE
                | regex.DOTALL)
_PLAIN_INLINE = sre_parse.SRE_FLAG_UNICODE | sre_parse.SRE_FLAG_MULTILINE \
    | sre_parse.SRE_FLAG_DOTALL


@dataclass(frozen=True)
class Needle:
    key: str
    sensitive: bool
    text: str  # folded unless sensitive
    fragile: bool  # from an insensitive regex: IGNORECASE lets 'i' match 'İ' and 'ı', whose
    #                case folds differ, so a fact holding those may hide this needle


Requirement = frozenset[Needle] | None


def requirement(node: Node | None) -> Requirement:
    """Needles one of which the facts must contain for ``node`` to hold (None: no need)."""
    if node is None:
        return None
    if isinstance(node, Combinator):
        if node.kind == "not":
            return None
        parts = [requirement(item) for item in node.items]
        if node.kind == "any":  # any() of nothing is false: the empty set, never a candidate
            return None if None in parts else frozenset().union(*parts)
        known = [p for p in parts if p is not None]
        return min(known, key=_weakness) if known else None
    return _leaf_requirement(node)


def _weakness(needles: frozenset[Needle]) -> tuple[int, int]:
    """Fewer and longer needles prune more rules."""
    return len(needles), -min((len(n.text) for n in needles), default=0)


def _leaf_requirement(cond: Condition) -> Requirement:
    spec = key_for(cond.key)
    if cond.key in VOLATILE or spec is None or spec.kind not in ("text", "list"):
        return None
    if cond.op == "matches":
        sensitive = not cond.operand.flags & regex.IGNORECASE
        texts = regex_needles(cond.operand)
        return None if texts is None else frozenset(
            Needle(cond.key, sensitive, t, not sensitive) for t in texts)
    if cond.op in _NEEDLE_OPS:
        texts = frozenset([cond.operand])
    elif cond.op == "in":
        texts = frozenset(cond.operand)
    else:
        return None
    if not all(isinstance(t, str) and len(t) >= MIN_NEEDLE for t in texts):
        return None
    return frozenset(Needle(cond.key, cond.sensitive, t, False) for t in texts)


# --- regular expressions -------------------------------------------------------------------

# 'ı', and the dot that folding 'İ' leaves: an IGNORECASE 'i' matches both letters, whose
# case folds are not 'i'.
DOTTED = ("\u0131", "\u0307")


def may_match(needed: tuple[frozenset[str], ...], sensitive: bool, text: str) -> bool:
    """False only when no match of the regex ``needed`` comes from (``regex_literals``) can
    be in ``text`` (case-folded when the regex is insensitive): some set has no needle in
    it. An insensitive 'i' also matches 'İ' and 'ı' (``DOTTED``): a text holding either is
    never screened out."""
    if not sensitive and any(mark in text for mark in DOTTED):
        return True
    return all(any(needle in text for needle in needles) for needles in needed)


def regex_needles(pattern: Any) -> frozenset[str] | None:
    """Literal texts one of which every match of ``pattern`` contains, or None: the best
    set of ``regex_literals`` (fewest and longest needles)."""
    found = regex_literals(pattern)
    return found[0] if found else None


@functools.lru_cache(maxsize=4096)  # asked per condition by the index, screens and probes
def regex_literals(pattern: Any) -> tuple[frozenset[str], ...] | None:
    """Every set of literal texts of which each match of ``pattern`` contains one, best
    first; None when there is none. ``\\bparcel\\W+ship`` gives ({'parcel'}, {'ship'}):
    a text lacking either cannot match, a screen much finer than one set alone.

    Only patterns whose meaning the stdlib parser shares with ``regex`` (V0, no inline
    flags, no fuzzy ``{e<=1}``, POSIX classes or set operations) are read; anything else
    gives None, which is always safe. Insensitive needles are ASCII and lower case.
    """
    if pattern.flags & ~_PLAIN_FLAGS or "{" in QUANTIFIER.sub("", pattern.pattern):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "possible nested set" and friends: bail out
            parsed = sre_parse.parse(pattern.pattern)
    except Exception:  # any pattern the stdlib cannot read gives no needles
        return None
    if parsed.state.flags & ~_PLAIN_INLINE:
        return None
    try:
        found = _sequence(list(parsed), not pattern.flags & regex.IGNORECASE)
    except _Unsupported:
        return None
    return tuple(found) or None


class _Unsupported(Exception):
    """A construct whose literals we do not read (scoped flags)."""


def _sequence(items: list[tuple[Any, Any]], sensitive: bool) -> list[frozenset[str]]:
    """A concatenation's needle sets, every one required (each element must match), best
    first; only sets whose needles are all ``MIN_NEEDLE`` long or longer."""
    options: list[frozenset[str]] = []
    run = ""
    for op, arg in items:
        name = str(op)
        char = chr(arg) if name == "LITERAL" else ""
        if char and (sensitive or char.isascii()):
            run += char if sensitive else char.lower()
            continue
        options.append(frozenset([run]))
        run = ""
        options += _element(name, arg, sensitive)
    options.append(frozenset([run]))
    usable = dict.fromkeys(o for o in options if min(map(len, o), default=0) >= MIN_NEEDLE)
    return sorted(usable, key=lambda o: (len(o), -min(map(len, o))))  # stable: ties in order


def _element(name: str, arg: Any, sensitive: bool) -> list[frozenset[str]]:
    if name == "SUBPATTERN":
        _group, add_flags, del_flags, sub = arg
        if add_flags or del_flags:
            raise _Unsupported(name)
        return _sequence(list(sub), sensitive)
    if name == "ATOMIC_GROUP":
        return _sequence(list(arg), sensitive)
    if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
        low, _high, sub = arg
        return _sequence(list(sub), sensitive) if low >= 1 else []
    if name == "BRANCH":  # one branch matches: one of each branch's best set
        branches = [_sequence(list(b), sensitive) for b in arg[1]]
        return [] if not all(branches) else [frozenset().union(*(b[0] for b in branches))]
    return []  # sets, classes, anchors, lookarounds, backreferences: no literal
