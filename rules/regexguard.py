"""Regex searches guarded against catastrophic backtracking, the guard paid only where needed.

Every rule and parser regex runs in the ``regex`` module with a timeout, so a pattern such as
``(a+)+b`` fails closed instead of hanging the gateway. The timeout is not free: ``regex``
reads the process CPU clock (a system call) when a timed search starts and when it first
checks, ~3 us per search here, as much as the search itself on a short subject.

Most rule patterns cannot backtrack much: keywords, alternatives, optional letters, word
boundaries. ``cost`` proves that for a pattern in a small, plain subset of the syntax (no
unbounded repetition, no backreferences, lookarounds or inline verbose mode): the ways it
can match at one position are finite, counted as a backtracking matcher tries them, and so
is the longest of them (``Shape``; a capturing group adds ``CAPTURE_STEPS``). A search
then takes at most ``len(text) * paths * longest path`` steps; within ``STEP_BUDGET`` it
runs without the timeout and gives the answer the timed search would (the bound keeps it
well under the timeout: 8-14 ms at the limit for the worst patterns tested). An unbounded
repeat of one character (``\\s*``, ``\\d{5,}``) is counted as repeated up to the text's
length, which bounds it too: ``^\\s*$`` or ``\\b\\d{5,}\\b`` on a subject run untimed
(``untimed_up_to``), on a body they keep the timeout. Anything else keeps the timeout.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import regex

REGEX_TIMEOUT = 0.05  # seconds per search: a catastrophic pattern fails closed, never hangs
STEP_BUDGET = 1_000_000  # matcher steps a search may take untimed (8-14 ms, worst cases here)
# What entering and leaving a capturing group costs the matcher, in steps: it records the
# group's span each time, measured at ~2.5 times a character's step (``(\w)`` 8 times over:
# 558 ns a position, ``(?:\w)`` 166 ns), counted as 4 for a margin. A group that captures
# nothing costs nothing.
CAPTURE_STEPS = 4
UNBOUNDED = STEP_BUDGET + 1  # a pattern outside the subset, or too many paths to count

# Flags that leave the counting valid; any other (verbose, fuzzy, POSIX leftmost-longest,
# full case-folding, version 1 sets) keeps the timeout.
PLAIN_FLAGS = regex.I | regex.M | regex.S | regex.U | regex.A | regex.V0
_CLASS_ESCAPES = frozenset("bBdDwWsSAZ")  # classes and anchors: one step, one path
_ANCHOR_ESCAPES = frozenset("bBAZ")  # zero width: repeating them is not counted
_CONTROL_ESCAPES = frozenset("ntrfv")
_SPECIAL = frozenset("()[]{}|?*+.^$\\")
# Escapes and well-formed {m,n}: a "{" left after removing these is a construct of the
# ``regex`` module alone (fuzzy matching, \p{...}), which pattern readers give up on.
QUANTIFIER = regex.compile(r"\\.|\{(?:\d+(?:,\d*)?|,\d+)\}")  # escapes, well-formed {m,n}


def search(pattern: Any, text: str) -> Any:
    """``pattern.search(text)`` (a compiled ``regex``), timed unless provably cheap.

    Raises ``TimeoutError`` as ``regex`` does when a timed search runs out of time.
    """
    if timed(pattern, text):
        return pattern.search(text, timeout=REGEX_TIMEOUT)
    return pattern.search(text)


def timed(pattern: Any, text: str) -> bool:
    """Whether searching ``text`` needs the timeout: no proof it stays within budget."""
    return len(text) > untimed_up_to(pattern)


@functools.lru_cache(maxsize=4096)
def untimed_up_to(pattern: Any) -> int:
    """The longest text ``pattern`` searches within ``STEP_BUDGET`` (-1: none): ``length *
    cost(source, length)`` in budget. That grows with the length, so the longest is found
    by bisection (a dozen counts, once per pattern)."""
    if pattern.flags & ~PLAIN_FLAGS:
        return -1
    source = pattern.pattern
    fixed = cost(source)
    if fixed < UNBOUNDED:
        return STEP_BUDGET // fixed if fixed else STEP_BUDGET
    low, high = -1, STEP_BUDGET
    while low < high:
        middle = (low + high + 1) // 2
        if max(middle, 1) * cost(source, middle) <= STEP_BUDGET:
            low = middle
        else:
            high = middle - 1
    return low


def cost(source: str, length: int | None = None) -> int:
    """The most steps a backtracking search of ``source`` takes from one position of the
    text: its paths times the longest path. ``UNBOUNDED`` past the budget, or when the
    pattern uses anything outside the plain subset this counts.

    With the text's ``length``, an unbounded repeat of one character (``\\s*``, ``\\d{5,}``,
    ``.+``) counts as repeated up to ``length`` times, as often as it can match there:
    ``^\\s*$`` on a subject is cheap, ``(a+)+`` (a repeated group) is never counted."""
    found = shape(source, length)
    return UNBOUNDED if found is None else _capped(found.paths * found.steps)


class Shape(NamedTuple):
    """What a (sub)pattern costs from one position: the ways it can match, and the most
    items (characters, classes, anchors) one way visits."""

    paths: int
    steps: int


def shape(source: str, length: int | None = None) -> Shape | None:
    """The shape of ``source`` (over a text of ``length``, see ``cost``); None outside the
    plain subset."""
    try:
        parser = _Parser(source, length)
        found = parser.alternation()
        return None if parser.at < len(source) else found  # an unbalanced ')'
    except _Outside:
        return None


class _Outside(Exception):
    """The pattern uses syntax the counter does not vouch for."""


_ONE = Shape(1, 1)


class _Parser:
    """A recursive-descent reader of the plain subset, counting as it goes."""

    def __init__(self, source: str, length: int | None):
        self.source = source
        self.length = length  # of the text: bounds a one-character item's repeats
        self.at = 0

    def peek(self) -> str:
        return self.source[self.at] if self.at < len(self.source) else ""

    def take(self) -> str:
        char = self.peek()
        if not char:
            raise _Outside
        self.at += 1
        return char

    def alternation(self) -> Shape:
        """Branches are tried in turn: their paths add up, the longest path is one's."""
        found = self.sequence()
        while self.peek() == "|":
            self.at += 1
            branch = self.sequence()
            found = Shape(_capped(found.paths + branch.paths), max(found.steps, branch.steps))
        return found

    def sequence(self) -> Shape:
        """Each way of one item meets each way of the next: paths multiply, steps add."""
        found = Shape(1, 0)
        while self.peek() not in ("", "|", ")"):
            item = self.quantified(*self.atom())
            found = Shape(_capped(found.paths * item.paths),
                          _capped(found.steps + item.steps))
        return found

    def atom(self) -> tuple[Shape, bool]:
        """The item's shape, and whether it always matches exactly one character."""
        char = self.take()
        if char == "(":
            return self.group(), False
        if char == "[":
            self.char_class()
            return _ONE, True
        if char == "\\":
            return _ONE, self.escape()
        if char in _SPECIAL and char not in ".^$":
            raise _Outside  # a quantifier with nothing to repeat, '{', ']': not ours
        return _ONE, char not in "^$"

    def group(self) -> Shape:
        captures = self.peek() != "?"
        if not captures:
            self.at += 1
            flags = ""
            while self.peek() in ("i", "m", "s"):  # not a string: "" (the end) is in any
                flags += self.take()
            closer = self.take()
            if closer == ")" and flags:  # (?i): flags for the whole pattern, zero width
                return _ONE
            if closer != ":":  # lookarounds, named groups, atomic groups, (?x)...
                raise _Outside
        found = self.alternation()
        if self.take() != ")":
            raise _Outside
        return found._replace(steps=_capped(found.steps + CAPTURE_STEPS)) if captures else found

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

    def escape(self) -> bool:
        """Read an escape; whether it matches one character (not an anchor)."""
        char = self.take()
        if char.isalnum() and char not in _CLASS_ESCAPES and char not in _CONTROL_ESCAPES:
            raise _Outside  # backreferences, \p{..}, \N{..}, \L<..>, \x.., \g<..>, ...
        return char not in _ANCHOR_ESCAPES

    def quantified(self, item: Shape, single: bool) -> Shape:
        char = self.peek()
        if char == "?":
            self.at += 1
            low, high = 0, 1
        elif char == "{":
            self.at += 1
            low, high = self.bounds(single)
        elif char in ("*", "+"):
            self.at += 1
            low = int(char == "+")
            high = self.unbounded(single, low)
        else:
            return item
        if self.peek() == "?":  # lazy: the same paths, in the other order
            self.at += 1
        if self.peek() in ("?", "*", "+", "{"):  # possessive or a repeated quantifier
            raise _Outside
        return Shape(_repeats(item.paths, low, high), _capped(max(high, 1) * item.steps))

    def unbounded(self, single: bool, low: int) -> int:
        """The most repeats of an unbounded item: as many characters as the text has, for
        an item of exactly one (a group may match none, or several ways: not counted)."""
        if not single or self.length is None:
            raise _Outside
        return max(self.length, low)

    def bounds(self, single: bool) -> tuple[int, int]:
        end = self.source.find("}", self.at)
        if end < 0:
            raise _Outside
        text, self.at = self.source[self.at:end], end + 1
        low, comma, high = text.partition(",")
        if not low.isdigit() or (high and not high.isdigit()) or (high and not comma):
            raise _Outside  # {,n} and fuzzy {e<=1} are not counted
        low_n = int(low)
        if comma and not high:  # {m,}: unbounded
            return low_n, self.unbounded(single, low_n)
        high_n = int(high) if comma else low_n
        if high_n < low_n:
            raise _Outside
        return low_n, high_n


def _repeats(count: int, low: int, high: int) -> int:
    """Paths of an item with ``count`` paths repeated ``low`` to ``high`` times."""
    if count == 1:
        return _capped(high - low + 1)
    total = 0
    for times in range(low, high + 1):
        total += count ** min(times, 64)  # past 2**64 the budget is long gone
        if total > STEP_BUDGET:
            return UNBOUNDED
    return total


def _capped(value: int) -> int:
    return min(value, UNBOUNDED)
