"""Spell checking an agent's reply (pyspellchecker) with the site dictionary.

The site dictionary (``site_words``) holds the company's own words (product names,
jargon) that the language dictionary lacks; admins and agents add to it. Words in the
reply's quoted lines (``> ...``), addresses, URLs, and words with digits or inner capitals
(``PD-1234``, ``iPhone``) are not checked. Pure apart from ``site_words``/``add_word``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from inscriptis import get_text
from spellchecker import SpellChecker
from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.store.models import SiteWord

MAX_WORDS = 100  # misspellings reported at once (a pasted log is not a reply)
MAX_SUGGESTED = 5
_SKIP_TOKENS = re.compile(r"\S+@\S+|\b(?:https?|ftp)://\S+|\bwww\.\S+")
_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")
_WORD_RULE = re.compile(r"[a-zA-Z][a-zA-Z'-]{0,39}\Z")


@dataclass(frozen=True)
class Misspelling:
    word: str
    suggestions: list[str]


@functools.cache
def _checker(language: str) -> SpellChecker:
    return SpellChecker(language=language, distance=2)


def check(text: str, site: Iterable[str] = (), *, html: bool = False,
          language: str = "en") -> list[Misspelling]:
    """Unknown words of ``text`` in order of first appearance, each with suggestions."""
    if html:
        text = get_text(text)
    known = {w.lower() for w in site}
    checker = _checker(language)
    seen: dict[str, None] = {}
    for line in text.splitlines():
        if line.lstrip().startswith(">"):
            continue
        for word in _WORD.findall(_SKIP_TOKENS.sub(" ", line)):
            if len(word) < 2 or word.isupper() or any(c.isupper() for c in word[1:]):
                continue
            lower = word.lower().replace("’", "'")
            if lower not in known and lower not in seen and not checker.known([lower]):
                seen[lower] = None
    out = []
    for word in list(seen)[:MAX_WORDS]:
        guesses = checker.candidates(word) if len(word) <= 20 else None
        ranked = sorted(guesses or (), key=lambda w: (-checker.word_usage_frequency(w), w))
        out.append(Misspelling(word, [w for w in ranked if w != word][:MAX_SUGGESTED]))
    return out


def site_words(session: Session) -> set[str]:
    return set(session.scalars(select(SiteWord.word)))


def add_word(session: Session, word: str, now: datetime) -> str:
    """Add a word to the site dictionary (lower case); ``ValueError`` if it is not a word."""
    word = word.strip().lower()
    if not _WORD_RULE.match(word):
        raise ValueError(f"{word!r} is not a word (letters, ' and - only, up to 40)")
    if session.get(SiteWord, word) is None:
        session.add(SiteWord(word=word, created_at=now))
        session.flush()
    return word
