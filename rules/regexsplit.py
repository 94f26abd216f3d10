"""Whether a regex matches, its leading alternation asked one branch at a time (pure).

The ``regex`` module finds a pattern that starts with a literal (``\\brefund\\b``) by
scanning for the literal, but tries every position of the text for one that starts with an
alternation (``\\b(?:refund|chargeback)\\b``): on the 3 KB bodies of ``bench/rules.py``
~33 us a search against ~5 us for its two branches searched one after the other. Keyword
alternations with word boundaries are the most common regex of mail rules.

Whether ``A(?:x|y)B`` matches somewhere is whether ``A(?:x)B`` or ``A(?:y)B`` does, as long
as nothing after the group can tell which branch was taken (no backreference, conditional,
or backtracking verb) and no construct around it cuts backtracking into it (the group is not
repeated, nor inside another group: an atomic group or a lookaround). ``branches`` splits a
pattern only then, only at a group at the start of the pattern (after anchors and word
boundaries, where the alternation is what the search must find), or at a top-level ``|``,
and only when every branch starts with a literal the module can scan for. Anything it does
not understand is not split, which is always correct.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import regex

from rules import regexguard
from rules.regexguard import PLAIN_FLAGS, QUANTIFIER

SPLIT_FROM = 100  # characters; below, one search is cheaper than two (measured ~80)
MAX_BRANCHES = 8  # past this many, the searches add up to more than the one they replace
_GROUP = regex.compile(r"\((?:\?:|\?P<\w+>)?")  # groups that may be split
_LOOKAROUND = ("(?=", "(?!", "(?<=", "(?<!")  # read through, never split
_BACKREFS = frozenset("123456789gkLGN")  # \N{name} is harmless, but rare: not worth reading
_ZERO_WIDTH = ("\\b", "\\B", "\\A", "^")
_QUANTIFIERS = frozenset("*+?{")


def warmed(pattern: Any) -> Any:
    """``pattern``, with what searching it needs worked out now (its branches, each one's
    untimed limit: ``regexguard.untimed_up_to``), when the rules load, not on a message."""
    for part in (pattern, *(branches(pattern) or ())):
        regexguard.untimed_up_to(part)
    return pattern


def found(pattern: Any, text: str) -> bool:
    """Whether ``pattern`` matches somewhere in ``text``: ``regexguard.search`` is not None.

    Raises ``TimeoutError`` as that does. The branches are searched instead only when each
    provably needs no timeout on this text (``regexguard.timed``): a branch that did could
    time out where the whole pattern finds a match first, and each would get its own time
    limit. Where the whole search would run out of time, a match a branch finds still counts.
    """
    if len(text) >= SPLIT_FROM:
        parts = branches(pattern)
        if parts is not None and not any(regexguard.timed(part, text) for part in parts):
            for part in parts:  # noqa: SIM110 (a loop: no generator per search)
                if part.search(text) is not None:
                    return True
            return False
    return regexguard.search(pattern, text) is not None


@functools.lru_cache(maxsize=4096)
def branches(pattern: Any) -> tuple[Any, ...] | None:
    """Compiled patterns one of which matches a text exactly when ``pattern`` does; None
    when the pattern is not split (see the module's docstring)."""
    source = pattern.pattern
    if (pattern.flags & ~PLAIN_FLAGS or not isinstance(source, str)
            or "{" in QUANTIFIER.sub("", source)):
        return None
    sources = _split(source)
    if sources is None or not 2 <= len(sources) <= MAX_BRANCHES:
        return None
    if not all(_starts_literal(s) for s in sources):
        return None
    try:
        return tuple(regex.compile(s, pattern.flags) for s in sources)
    except regex.error:
        return None


def _split(source: str) -> list[str] | None:
    """The branch sources: the top-level alternatives, else the leading group's."""
    scanned = _scan(source)
    if scanned is None:
        return None
    top, groups = scanned
    if top:
        return _cut(source, 0, len(source), top)
    if not groups:
        return None
    group = groups[0]  # only the first: before any later one stands a whole group
    prefix = source[:group.opening]
    if _strip_zero_width(prefix):
        return None  # a literal comes first: the module already scans for it
    if "^" in prefix or "\\A" in prefix:
        return None  # anchored: one search tries one place (or each line's start)
    if (not group.bars or not group.splittable
            or source[group.closing + 1:group.closing + 2] in _QUANTIFIERS):
        return None
    head, tail = source[:group.start], source[group.closing:]
    return [head + branch + tail
            for branch in _cut(source, group.start, group.closing, group.bars)]


def _cut(source: str, start: int, end: int, bars: list[int]) -> list[str]:
    edges = [start - 1, *bars, end]
    return [source[a + 1:b] for a, b in zip(edges, edges[1:], strict=False)]


class _Group(NamedTuple):
    opening: int  # where its "(" is
    start: int  # where its content starts
    splittable: bool  # a group, not a lookaround
    bars: list[int]  # the "|" directly inside
    closing: int = -1  # where its ")" is


def _scan(source: str) -> tuple[list[int], list[_Group]] | None:
    """The top-level ``|`` positions and the top-level groups; None for anything not
    split (backreferences, atomic groups, conditionals, inline flags, verbs, odd sets)."""
    top: list[int] = []
    groups: list[_Group] = []
    stack: list[_Group] = []
    i, n = 0, len(source)
    while i < n:
        char = source[i]
        if char == "\\":
            if i + 1 >= n or source[i + 1] in _BACKREFS:
                return None
            i += 2
            continue
        if char == "[":
            i = _class_end(source, i)
            if i < 0:
                return None
            continue
        if char == "(":
            if source.startswith(_LOOKAROUND, i):
                group = _Group(i, i + (4 if source[i + 2] == "<" else 3), False, [])
            else:
                end = _GROUP.match(source, i).end()  # "(" at least
                if end == i + 1 and source.startswith(("(?", "(*"), i):
                    return None
                group = _Group(i, end, True, [])
            stack.append(group)
            i = group.start
            continue
        if char == ")":
            if not stack:
                return None
            group = stack.pop()
            if not stack:
                groups.append(group._replace(closing=i))
        elif char == "|":
            (stack[-1].bars if stack else top).append(i)
        i += 1
    return None if stack else (top, groups)


def _class_end(source: str, at: int) -> int:
    """Where the character class opening at ``at`` ends (past its ``]``); -1 when it holds
    a nested set or a POSIX class, or never ends."""
    i = at + 1
    if source[i:i + 1] == "^":
        i += 1
    if source[i:i + 1] == "]":
        i += 1
    while i < len(source):
        char = source[i]
        if char == "\\":
            i += 2
        elif char == "[":
            return -1
        elif char == "]":
            return i + 1
        else:
            i += 1
    return -1


def _strip_zero_width(text: str) -> str:
    changed = True
    while changed:
        changed = False
        for mark in _ZERO_WIDTH:
            if text.startswith(mark):
                text, changed = text[len(mark):], True
    return text


def _starts_literal(source: str) -> bool:
    """Whether the branch starts (after anchors and group openings) with a letter, digit
    or space that no quantifier makes optional."""
    text = _strip_zero_width(source)
    while (group := _GROUP.match(text)) is not None:
        text = _strip_zero_width(text[group.end():])
    return bool(text) and (text[0].isalnum() or text[0] == " ") and (
        text[1:2] not in _QUANTIFIERS and text[1:2] != "|")
