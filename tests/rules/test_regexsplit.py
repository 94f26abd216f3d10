"""Splitting a leading alternation into separate searches never changes whether a regex
matches (``rules.regexsplit``), and happens where it pays."""

from __future__ import annotations

import random

import pytest
import regex

from rules import regexguard
from rules.regexsplit import SPLIT_FROM, branches, found


def _sources(pattern: str, flags: int = regex.IGNORECASE) -> list[str] | None:
    parts = branches(regex.compile(pattern, flags))
    return None if parts is None else [p.pattern for p in parts]


@pytest.mark.parametrize(("pattern", "expected"), [
    (r"\b(?:refund|chargeback)\b", [r"\b(?:refund)\b", r"\b(?:chargeback)\b"]),
    (r"\b(refund|charge ?back)s?\b", [r"\b(refund)s?\b", r"\b(charge ?back)s?\b"]),
    (r"\b(?P<word>sample|feedback)\b", [r"\b(?P<word>sample)\b", r"\b(?P<word>feedback)\b"]),
    (r"out of office|automatic reply", ["out of office", "automatic reply"]),
    (r"(?:abc|def)(?:ghi|jkl)", ["(?:abc)(?:ghi|jkl)", "(?:def)(?:ghi|jkl)"]),
])
def test_leading_alternations_are_split(pattern: str, expected: list[str]) -> None:
    assert _sources(pattern) == expected


@pytest.mark.parametrize("pattern", [
    r"^(?:re|fwd?):\s*refund",  # anchored: one place to try already
    r"order (?:no|number)",  # a literal first: the module scans for it
    r"(?:refund|chargeback)+",  # repeated
    r"(?:refund|chargeback){2}",
    r"(?>refund|refunded)x",  # atomic: the branch taken is final
    r"(refund|chargeback) \1",  # a backreference sees the branch taken
    r"(a)?(?(1)refund|chargeback)",  # conditional
    r"(?i)(refund|chargeback)",  # inline flags
    r"(?=refund|chargeback)\w+",  # inside a lookaround
    r"(?:refund|\d+)",  # a branch without a literal to scan for
    r"(?:refund|(?:a|b)x)",
    r"[(|]refund|x",  # a set holding the characters
    r"(?:fix){e<=1}|refund",  # fuzzy
    r"refund|",  # an empty branch matches everywhere
    r"(*PRUNE)refund|x",
    r"[[:alpha:]]+|refund",
])
def test_other_patterns_are_not_split(pattern: str) -> None:
    assert _sources(pattern) is None


def test_flags_outside_the_plain_ones_are_not_split() -> None:
    assert _sources(r"\b(?:refund|chargeback)\b", regex.IGNORECASE | regex.VERBOSE) is None
    assert _sources(r"\b(?:refund|chargeback)\b", regex.BESTMATCH) is None


PARTS = [r"\b", r"\B", r"^", r"$", r"(?:order|refund)", r"(order|refund)", r"(?P<n>fix|fixed)",
         r"(?:ab|abc)", r"x?", r"\s*", r".*", r"\d+", r"[a-z]+", r"(?=order)", r"(?!ref)",
         r"(?<=x)", r"|", r"(?>ab|abc)", r"(?:fix|fixing)+", r"s?", r"\w+", r"İstanbul",
         r"kelvin", r"K", r"(?:re|fwd?):", r"\bistanbul", r" ", r"ß", r"(?:strasse|road)",
         r"[|(]", r"\(", r"\|", r"(?:a|b)", r"(?:\w|x)", r"order", r"refund"]
WORDS = ["order", "refund", "orders", "refunded", "fix", "fixed", "fixing", "ab", "abc",
         "x", "re:", "fwd:", "İstanbul", "ISTANBUL", "ıstanbul", "KELVIN", "\u212a", "strasse",
         "STRASSE", "straße", "road", "12345", "|", "(", "-", "_", "\n", "é", "a", "b"]


def random_text(rng: random.Random, length: int) -> str:
    parts: list[str] = []
    while sum(map(len, parts)) < length:
        parts.append(rng.choice(WORDS))
        parts.append(rng.choice(["", " ", " ", "\n", ", ", "x"]))
    return "".join(parts)


@pytest.mark.parametrize("flags", [0, regex.IGNORECASE, regex.IGNORECASE | regex.MULTILINE
                                   | regex.DOTALL])
def test_split_searches_answer_as_the_whole_pattern(flags: int) -> None:
    """Differential: random patterns and texts, long enough to take the split path."""
    rng = random.Random(11 + flags)
    split = agreed = 0
    for _ in range(4000):
        source = "".join(rng.choices(PARTS, k=rng.randint(1, 4)))
        try:
            pattern = regex.compile(source, flags)
        except regex.error:
            continue
        split += branches(pattern) is not None
        for _ in range(4):
            text = random_text(rng, rng.choice((SPLIT_FROM, 2 * SPLIT_FROM, 20)))
            assert found(pattern, text) == (pattern.search(text) is not None), (source, text)
            agreed += 1
    assert split > 300  # the split path was exercised, not only the fallback
    assert agreed > 10_000


def test_a_catastrophic_branch_still_times_out() -> None:
    """A pattern with a hostile branch fails closed as before: that branch needs the
    timeout, so the whole pattern is searched under it."""
    pattern = regex.compile(r"(?:(a+)+b|zzz)")
    assert branches(pattern) is None  # a group inside a branch is fine, a literal start not
    hostile = regex.compile(r"\b(?:aaaa(a+)+b|zzzz)")
    assert branches(hostile) is not None
    with pytest.raises(TimeoutError):
        found(hostile, "a" * 5000 + "!")


def test_branches_that_would_need_the_timeout_are_not_searched_apart() -> None:
    """A branch searched alone could run out of time where the whole pattern finds a match
    first, and each branch would get a time limit of its own: such a pattern is searched
    whole, with the whole pattern's answer (found by an adversarial review)."""
    pattern = regex.compile(r"\b(?:abc|def)(?:x|xx)+!")
    assert branches(pattern) is not None
    text = "defxx! abc" + "x" * 60 + "." + " " * 40  # the abc branch alone backtracks long
    assert found(pattern, text) is True
    many = regex.compile(r"\b(?:aa|ab|ac|ad|ae|af|ag|ah)(?:x|xx)+!")
    hostile = " ".join(k + "x" * 25 + "." for k in ("aa", "ab", "ac", "ad", "ae", "af", "ag", "ah"))
    with pytest.raises(TimeoutError):  # as the whole pattern does, once, not per branch
        regexguard.search(many, hostile)
    with pytest.raises(TimeoutError):
        found(many, hostile)
