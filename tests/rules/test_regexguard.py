"""The regex guard: the timeout is skipped only where a search provably cannot backtrack."""

from __future__ import annotations

import random

import pytest
import regex

from rules.regexguard import (
    CAPTURE_STEPS,
    REGEX_TIMEOUT,
    STEP_BUDGET,
    UNBOUNDED,
    cost,
    search,
    shape,
    timed,
    untimed_up_to,
)

BODY = ("Hello team, I need help with the invoice copy, it does not work as expected. "
        "Regarding order number 123456, nothing happened. Kind regards. ") * 20  # ~2.6 KB


@pytest.mark.parametrize(("pattern", "paths", "steps"), [
    ("refund", 1, 6),
    (r"\b(refund|charge ?back)\b", 3, 13 + CAPTURE_STEPS),  # a capture costs its spans
    ("(a){20}", 1, 20 * (1 + CAPTURE_STEPS)),
    (r"\brefunds?\b", 2, 9),
    (r"\b(?:sample|feedback)\b", 2, 10),
    (r"^(?:re|fwd?):\s?invoice", 6, 13),
    (r"[A-Z]{2}-\d{4,6}", 3, 9),
    (r"(?:ab|cd){3}", 8, 6),
    (r"(?i)invoice\.pdf$", 1, 13),
    (r"(?ims:x.y)", 1, 3),
    (r"[]a\]-]x", 1, 2),
    (r"a{1000}b", 1, 1001),
    (r"a|", 2, 1),
    ("", 1, 0),
])
def test_plain_patterns_count_their_paths_and_longest_path(pattern: str, paths: int,
                                                           steps: int) -> None:
    assert shape(pattern) == (paths, steps)
    assert cost(pattern) == paths * steps


@pytest.mark.parametrize("pattern", [
    "(a+)+$", "(a|aa)+$", "(a|a)+b", "(?:ab)*", r"\b*", "(?:a?)*",  # unbounded groups
    "(?:a?){40}a{40}", "(a|a){40}", "(?:a|b|c|d){20}",  # finite, but past the budget
    "(?:a{1000}){1001}", "a{0,1000}a{0,1000}",  # one path or few, but long ones
    r"(a)\1", r"(?P<x>a)(?P=x)", r"\g<1>",  # backreferences
    "(?=a)", "(?!a)", "(?<=a)b", "(?>a+)", "a++", "a?+",  # lookarounds, atomic, possessive
    "(?x) a b", "(?V1)[[a-z]--[aeiou]]", "[[:alpha:]]", r"\p{L}", r"\L<words>",
    "a{e<=1}", "(?:foo){i<=1}", "a{,3}", "a{3,2}",  # fuzzy, open and reversed bounds
    "(a", "a)", "[ab", "*a", "a{2", r"\x41",  # malformed or not counted
])
def test_anything_else_keeps_the_timeout(pattern: str) -> None:
    assert cost(pattern) == UNBOUNDED
    compiled = _compile(pattern)
    if compiled is not None:
        assert timed(compiled, "a")


@pytest.mark.parametrize(("pattern", "longest"), [
    (r"\b\d{5,}\b", 100), (r"^\s*$", 99), (".*", 99), (r"\w+", 100), ("a*a*a*b", 12),
    (r"^(?:re|fwd?):\s*invoice", 65), (r"\binvoice\b.*\border\b", 94),
])
def test_one_character_repeats_are_counted_over_the_texts_length(pattern: str,
                                                                 longest: int) -> None:
    """``\\s*`` repeats at most once per character of the text: a subject is searched
    untimed, a body is not. Without a length the repeat stays uncounted."""
    compiled = regex.compile(pattern)
    assert cost(pattern) == UNBOUNDED
    assert untimed_up_to(compiled) == longest
    assert not timed(compiled, "x" * longest) and timed(compiled, "x" * (longest + 1))
    assert timed(compiled, BODY)


def test_keyword_patterns_search_a_body_untimed_and_long_texts_timed() -> None:
    keyword = regex.compile(r"\b(?:invoice|refund)s?\b", regex.IGNORECASE)
    assert not timed(keyword, BODY)
    assert timed(keyword, "x" * STEP_BUDGET)  # too long to vouch for
    assert timed(regex.compile(r"\binvoice\b.*\border\b"), BODY)  # unbounded: always timed
    assert timed(regex.compile("invoice", regex.VERBOSE), BODY)  # flags it does not count


def test_the_guarded_search_answers_as_the_timed_one() -> None:
    rng = random.Random(7)
    words = ["invoice", "refund", "order", "number", "help", "team", "copy", "x"]
    atoms = [*words, r"\b", r"\s", r"\d{4}", "[a-z]{2,3}", r"\W", ".", "s?", "(?:ed|ing)?"]
    for _ in range(400):
        parts = [rng.choice(atoms) for _ in range(rng.randint(1, 4))]
        if rng.random() < 0.3:
            parts = [f"(?:{'|'.join(parts)})"]
        pattern = regex.compile("".join(parts), rng.choice((0, regex.IGNORECASE)))
        text = BODY[rng.randrange(len(BODY)):][:rng.randint(0, 600)]
        assert cost(pattern.pattern) < UNBOUNDED, pattern.pattern  # all in the plain subset
        found = search(pattern, text)
        expected = pattern.search(text, timeout=REGEX_TIMEOUT)
        assert (found and found.span()) == (expected and expected.span()), pattern.pattern


@pytest.mark.parametrize("pattern", ["(?:a?){9}b", "(?:a|a)(?:a|a)(?:a|a)(?:a|a)(?:a|a)b",
                                     "a{0,40}a{0,40}b", "(?:a{1,3}){3}b", "(?:a{100}){50}b",
                                     "a{0,999}b", "a*a*a*b", "a*?a*?a*?a*?b", ".*.*.*b",
                                     "a+a{2,}[a-z]*b", r"\w*\w*(?:a|\w)\w*b",
                                     "(?:a|a)a*a*b",
                                     # capturing groups: the matcher records each span
                                     "(a){20}b", r"(\w)(\w)(\w)(\w)(\w)(\w)(\w)(\w)\B\b",
                                     "(" * 64 + r"\w" + ")" * 64 + r"\B\b",
                                     "(?:" + "(" * 32 + "a" + ")" * 32 + "){20}b"])
def test_a_hostile_text_at_the_untimed_limit_finishes_within_the_timeout(pattern: str) -> None:
    """The worst plain patterns, on the longest text they search untimed, made of what
    makes them backtrack: the same search under the timeout finishes (no TimeoutError),
    so skipping the timeout cannot change an answer."""
    compiled = regex.compile(pattern)
    longest = untimed_up_to(compiled)
    assert longest > 0
    text = "a" * longest
    assert not timed(compiled, text) and timed(compiled, text + "a")
    assert compiled.search(text, timeout=REGEX_TIMEOUT) is None


def test_a_catastrophic_pattern_still_fails_closed() -> None:
    with pytest.raises(TimeoutError):
        search(regex.compile("(a|aa)+$"), "a" * 40 + "!")


def _compile(pattern: str) -> regex.Pattern[str] | None:
    try:
        return regex.compile(pattern)
    except regex.error:
        return None
