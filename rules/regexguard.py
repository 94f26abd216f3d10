"""Regex searches guarded against catastrophic backtracking, the guard paid only where needed.

Every rule and parser regex runs in the ``regex`` module with a timeout, so a pattern such as
``(a+)+b`` fails closed instead of hanging the gateway. The timeout is not free: ``regex``
reads the process CPU clock (a system call) when a timed search starts and when it first
checks, ~3 us per search here, as much as the search itself on a short subject.

Most rule patterns cannot backtrack much: keywords, alternatives, optional letters, word
boundaries. ``paths`` proves that for a pattern in a small, plain subset of the syntax (no
unbounded repetition, no backreferences, lookarounds or inline verbose mode): the number of
ways it can match at one position is finite and computed exactly as a backtracking matcher
would try them. A search then costs at most ``len(text) * paths * len(pattern)`` steps; within
``STEP_BUDGET`` it runs without the timeout, and gives the same answer the timed search
would (the bound keeps it well under the timeout). Anything else keeps the timeout.
"""

from __future__ import annotations

import functools
from typing import Any

import regex

REGEX_TIMEOUT = 0.05  # seconds per search: a catastrophic pattern fails closed, never hangs
STEP_BUDGET = 1_000_000  # matcher steps a search may take untimed (~10 ms here)
UNBOUNDED = STEP_BUDGET + 1  # a pattern outside the subset, or too many paths to count

# Flags that leave the counting valid; any other (verbose, fuzzy, POSIX leftmost-longest,
# full case-folding, version 1 sets) keeps the timeout.
_PLAIN_FLAGS = regex.I | regex.M | regex.S | regex.U | regex.A | regex.V0
_CLASS_ESCAPES = frozenset("bBdDwWsSAZ")  # classes and anchors: one step, one path
_CONTROL_ESCAPES = frozenset("ntrfv")
_SPECIAL = frozenset("()[]{}|?*+.^$\\")


def search(pattern: Any, text: str) -> Any:
    """``pattern.search(text)`` (a compiled ``regex``), timed unless provably cheap.

    Raises ``TimeoutError`` as ``regex`` does when a timed search runs out of time.
    """
    if timed(pattern, text):
        return pattern.search(text, timeout=REGEX_TIMEOUT)
    return pattern.search(text)


def timed(pattern: Any, text: str) -> bool:
    """Whether searching ``text`` needs the timeout: no proof it stays within budget."""
    return len(text) * _cost(pattern) > STEP_BUDGET


@functools.lru_cache(maxsize=4096)
def _cost(pattern: Any) -> int:
    """Steps per character of text: paths times the pattern's length."""
    if pattern.flags & ~_PLAIN_FLAGS:
        return UNBOUNDED
    return min(paths(pattern.pattern) * max(len(pattern.pattern), 1), UNBOUNDED)


@functools.lru_cache(maxsize=4096)
def paths(source: str) -> int:
    """How many ways ``source`` can match at one position (``UNBOUNDED`` past the budget, or
    when the pattern uses anything outside the plain subset this counts)."""
    try:
        parser = _Parser(source)
        count = parser.alternation()
        if parser.at < len(source):  # an unbalanced ')'
            return UNBOUNDED
        return min(count, UNBOUNDED)
    except _Outside:
        return UNBOUNDED


class _Outside(Exception):
    """The pattern uses syntax the counter does not vouch for."""


class _Parser:
    """A recursive-descent reader of the plain subset, counting paths as it goes."""

    def __init__(self, source: str):
        self.source = source
        self.at = 0

    def peek(self) -> str:
        return self.source[self.at] if self.at < len(self.source) else ""

    def take(self) -> str:
        char = self.peek()
        if not char:
            raise _Outside
        self.at += 1
        return char

    def alternation(self) -> int:
        count = self.sequence()
        while self.peek() == "|":
            self.at += 1
            count = min(count + self.sequence(), UNBOUNDED)
        return count

    def sequence(self) -> int:
        count = 1
        while self.peek() not in ("", "|", ")"):
            count = min(count * self.quantified(self.atom()), UNBOUNDED)
        return count

    def atom(self) -> int:
        char = self.take()
        if char == "(":
            return self.group()
        if char == "[":
            self.char_class()
            return 1
        if char == "\\":
            self.escape()
            return 1
        if char in ".^$":
            return 1
        if char in _SPECIAL:  # a quantifier with nothing to repeat, '{', ']': not ours
            raise _Outside
        return 1

    def group(self) -> int:
        if self.peek() == "?":
            self.at += 1
            flags = ""
            while self.peek() in tuple("ims"):
                flags += self.take()
            closer = self.take()
            if closer == ")" and flags:  # (?i): flags for the whole pattern, zero width
                return 1
            if closer != ":":  # lookarounds, named groups, atomic groups, (?x)...
                raise _Outside
        count = self.alternation()
        if self.take() != ")":
            raise _Outside
        return count

    def char_class(self) -> None:
        if self.peek() == "^":
            self.at += 1
        if self.peek() == "]":  # a leading ']' is a literal
            self.at += 1
        while (char := self.take()) != "]":
            if char == "[":  # POSIX classes and set operations
                raise _Outside
            if char == "\\":
                self.escape()

    def escape(self) -> None:
        char = self.take()
        if char.isalnum() and char not in _CLASS_ESCAPES and char not in _CONTROL_ESCAPES:
            raise _Outside  # backreferences, \p{..}, \N{..}, \L<..>, \x.., \g<..>, ...

    def quantified(self, count: int) -> int:
        char = self.peek()
        if char == "?":
            self.at += 1
            low, high = 0, 1
        elif char == "{":
            self.at += 1
            low, high = self.bounds()
        elif char in ("*", "+"):
            raise _Outside  # unbounded repetition
        else:
            return count
        if self.peek() == "?":  # lazy: the same paths, in the other order
            self.at += 1
        if self.peek() in ("?", "*", "+", "{"):  # possessive or a repeated quantifier
            raise _Outside
        return _repeats(count, low, high)

    def bounds(self) -> tuple[int, int]:
        end = self.source.find("}", self.at)
        if end < 0:
            raise _Outside
        text, self.at = self.source[self.at:end], end + 1
        low, comma, high = text.partition(",")
        if not low.isdigit() or (comma and not high.isdigit()) or (high and not comma):
            raise _Outside  # {m,} is unbounded; {,n} and fuzzy {e<=1} are not counted
        low_n = int(low)
        high_n = int(high) if comma else low_n
        if high_n < low_n:
            raise _Outside
        return low_n, high_n


def _repeats(count: int, low: int, high: int) -> int:
    """Paths of an item with ``count`` paths repeated ``low`` to ``high`` times."""
    if count == 1:
        return min(high - low + 1, UNBOUNDED)
    total = 0
    for times in range(low, high + 1):
        total += count ** min(times, 64)  # past 2**64 the budget is long gone
        if total > STEP_BUDGET:
            return UNBOUNDED
    return total
