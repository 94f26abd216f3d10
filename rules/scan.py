"""Scanning one message against a compiled plan (pure; per message, for ``rules.evaluate``).

``Scan`` runs each finder of the plan (``rules.index``) at most once over its folded fact. A
``contains`` test becomes a set lookup, any other test whose needles are all absent is false
without running, and a stage's candidates are the rules of the needles found plus the
always-tested ones: every other rule is known not to match. A fact whose value is not text
(an odd caller) makes every rule testing it a candidate, tested as written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any

from rules.conditions import Log, check, compile_check
from rules.needles import DOTTED, VOLATILE
from rules.schema import Combinator, Condition, Node

if TYPE_CHECKING:
    from rules.index import Probe, RulePlan, StagePlan

Decider = Callable[["Scan"], bool]


class FactsView:
    """Read-through view over the caller's facts: each fact read once, folded once.

    ``set`` replaces the overrides instead of changing them, so a deferred trace can see
    the facts as a stage saw them (``at``); views of one message share what they read.
    """

    __slots__ = ("_facts", "_values", "overrides", "_folded")

    def __init__(self, facts: Mapping[str, Any], values: dict[str, Any] | None = None,
                 overrides: dict[str, Any] | None = None, folded: dict[str, Any] | None = None):
        self._facts = facts
        self._values: dict[str, Any] = {} if values is None else values
        self.overrides: dict[str, Any] = {} if overrides is None else overrides
        self._folded: dict[str, Any] = {} if folded is None else folded  # of _values only

    def get(self, key: str) -> Any:
        if key in self.overrides:
            return self.overrides[key]
        if key not in self._values:
            self._values[key] = self._facts.get(key)
        return self._values[key]

    def set(self, key: str, value: Any) -> None:
        self.overrides = {**self.overrides, key: value}

    def folded(self, key: str) -> Any:
        if key in self.overrides:
            return _fold(self.overrides[key])
        if key not in self._folded:
            self._folded[key] = _fold(self.get(key))
        return self._folded[key]

    def leaf(self, cond: Condition) -> tuple[bool, Any]:
        return check(cond, self)

    def mapping(self) -> dict[str, Any]:
        return {**dict(self._facts), **self.overrides}

    def at(self, overrides: dict[str, Any]) -> FactsView:
        """The same facts under other overrides (those of an earlier stage)."""
        if overrides is self.overrides:
            return self
        return FactsView(self._facts, self._values, overrides, self._folded)


_UNSCANNED = object()


class Scan:
    """One message against a plan: needles found per fact, candidates per stage, leaves."""

    __slots__ = ("plan", "view", "odd_seen", "log", "_hits", "_odd", "_regex", "_found")

    def __init__(self, plan: RulePlan, facts: Mapping[str, Any]):
        self.plan = plan
        self.view = FactsView(facts)
        self.odd_seen = False  # a text operator meets a non-text fact: test as written
        self.log: Log = []  # what the deciders' compiled tests log; nobody reads it
        self._hits: dict[tuple[str, Any], Any] = {}
        self._odd: dict[str, bool] = {}
        self._regex: dict[tuple[str, str, int], tuple[bool, Any]] = {}
        self._found: int | None = None

    def at(self, overrides: dict[str, Any]) -> Scan:
        """This scan (same needles found) over the facts as an earlier stage saw them."""
        other = Scan.__new__(Scan)
        other.plan, other.view = self.plan, self.view.at(overrides)
        other.odd_seen, other.log = self.odd_seen, self.log
        other._hits, other._odd, other._regex = self._hits, self._odd, self._regex
        other._found = self._found
        return other

    def hits(self, key: str, sensitive: bool) -> AbstractSet[str] | None:
        """Needles of ``key`` present in the fact; None when the fact is not text."""
        found = self._hits.get((key, sensitive), _UNSCANNED)
        if found is _UNSCANNED:
            found = self._cased(key) if sensitive else self._find(key, self.view.folded(key))
            self._hits[key, sensitive] = found
        return found

    def regex_hits(self, key: str) -> AbstractSet[str] | None:
        """Insensitive regex needles present. IGNORECASE matches a needle's 'i' with 'İ' and
        'ı' too, which fold otherwise: around those, the needles holding an 'i' are also
        looked for with them read as 'i' (a superset of what the regex can match)."""
        found = self._hits.get((key, "regex"), _UNSCANNED)
        if found is _UNSCANNED:
            found = self._hits[key, "regex"] = self._regex_hits(key)
        return found

    def _regex_hits(self, key: str) -> AbstractSet[str] | None:
        hits = self.hits(key, False)
        dotted = self.plan.dotted.get(key)
        if hits is None or dotted is None:
            return hits
        finder, longest = dotted
        span = 2 * longest  # each 'İ' folds to two characters
        windows = [_as_plain_i(text[max(at - span, 0):at + span])
                   for text in _texts(self.view.folded(key)) or ()
                   for at in _positions(text, DOTTED)]
        # One pass over the windows joined: a needle found across two of them is a false
        # candidate at worst, and these hits only ever widen the screen.
        return hits | _find(finder, ("\n".join(windows),)) if windows else hits

    def _find(self, key: str, value: Any) -> AbstractSet[str] | None:
        texts = _texts(value)
        finder = self.plan.finders.get(key)
        if texts is None or finder is None:
            return None if texts is None else frozenset()
        return _find(finder, texts)

    def _cased(self, key: str) -> AbstractSet[str] | None:
        """Case-sensitive needles: their folded form found, then checked in the raw fact."""
        folded = self.hits(key, False)
        if folded is None:
            return None
        forms = self.plan.cased.get(key, {})
        texts = _texts(self.view.get(key)) or ()
        found = set()
        for form in forms.keys() & folded:
            for needle in forms[form]:
                for text in texts:  # loops, not any() of a generator: measured cheaper
                    if needle in text:
                        found.add(needle)
                        break
        return found

    def candidates(self, stage: StagePlan) -> int:
        """The rules of ``stage`` that may match, as a bit mask; the others certainly do
        not. One pass over the needles found serves every stage."""
        if self._found is None:
            self._found = self._candidates()
        return (self._found >> self.plan.offsets[stage.index]) & ((1 << len(stage.rules)) - 1)

    def _candidates(self) -> int:
        """The always-tested rules, those of the needles found, and every rule of a needle
        or a text test on a fact that is not text (tested as written)."""
        plan = self.plan
        found = plan.always
        for (key, sensitive), table in plan.needles.items():
            fragile = not sensitive and key in plan.fragile
            hits = self.regex_hits(key) if fragile else self.hits(key, sensitive)
            if hits is None:
                for rules in table.values():
                    found |= rules
                continue
            for word in table.keys() & hits:
                found |= table[word]
        for key, rules in plan.checked.items():
            if self._is_odd(key):
                found |= rules
        return found

    def probe_hits(self, probe: Probe) -> AbstractSet[str] | None:
        """The needles found that answer ``probe``."""
        return self.regex_hits(probe.key) if probe.fragile else self.hits(probe.key,
                                                                           probe.sensitive)

    def leaf(self, cond: Condition) -> tuple[bool, Any]:
        """``rules.conditions.check``, answered from the needles found where it can be."""
        probe = self.plan.probes.get(id(cond))
        if probe is not None:
            hits = self._hits.get(probe.hits, _UNSCANNED)
            if hits is _UNSCANNED:
                hits = self.probe_hits(probe)
            if hits is not None:
                if probe.exact is not None:
                    return probe.exact in hits, self.view.get(cond.key)
                if not _holds(hits, probe.texts, probe.also):
                    return False, self.view.get(cond.key)
        if cond.op == "matches" and cond.key not in VOLATILE:
            memo = (cond.key, cond.operand.pattern, cond.operand.flags)
            if memo not in self._regex:  # once per message, and the same answer twice
                self._regex[memo] = check(cond, self.view)
            return self._regex[memo]
        return check(cond, self.view)

    def prefetch(self, stage: StagePlan, end: int) -> None:
        """Read now every fact the first ``end`` rules test, for the deferred trace."""
        for first, key in stage.keys:
            if first >= end:
                break
            self.view.get(key)

    def _is_odd(self, key: str) -> bool:
        if key not in self._odd:
            self._odd[key] = _texts(self.view.get(key)) is None
            self.odd_seen = self.odd_seen or self._odd[key]
        return self._odd[key]


def decider(node: Node, probes: dict[int, Probe]) -> Decider:
    """``node`` as a function of the scan (whether it holds), with no dispatch left."""
    if isinstance(node, Combinator):
        parts = [decider(item, probes) for item in node.items]
        if node.kind == "not":
            inner = parts[0]
            return lambda scan: not inner(scan)
        if len(parts) == 1:
            return parts[0]
        if len(parts) == 2:
            one, two = parts
            if node.kind == "any":
                return lambda scan: one(scan) or two(scan)
            return lambda scan: one(scan) and two(scan)
        if node.kind == "any":
            def any_of(scan: Scan) -> bool:  # a loop: cheaper than any() of a generator
                for part in parts:  # noqa: SIM110 (measured: cheaper than any())
                    if part(scan):
                        return True
                return False
            return any_of

        def all_of(scan: Scan) -> bool:
            for part in parts:  # noqa: SIM110 (measured: cheaper than all())
                if not part(scan):
                    return False
            return True
        return all_of
    probe = probes.get(id(node))
    if probe is None or probe.exact is None:
        return _tested(node, probe)
    where, needle = probe.hits, probe.exact

    def contains(scan: Scan) -> bool:
        hits = scan._hits.get(where, _UNSCANNED)
        if hits is _UNSCANNED:
            hits = scan.probe_hits(probe)
        return needle in hits if hits is not None else bool(scan.leaf(node)[0])
    return contains


def _tested(cond: Condition, probe: Probe | None) -> Decider:
    """A leaf the needles found cannot answer alone, as ``Scan.leaf`` answers it: false
    when none of its needles was found, else its compiled test (``compile_check``), whose
    answer a regex keeps for the message (the deferred trace must see the same)."""
    test = compile_check(cond)
    key = cond.key
    if cond.op == "matches" and key not in VOLATILE:
        memo = (key, cond.operand.pattern, cond.operand.flags)

        def run(scan: Scan) -> bool:
            found = scan._regex.get(memo)
            if found is None:
                view = scan.view
                found = scan._regex[memo] = (test(view, scan.log), view.get(key))
            return found[0]
    else:
        def run(scan: Scan) -> bool:
            return test(scan.view, scan.log)
    if probe is None:
        return run
    where, texts, also = probe.hits, probe.texts, probe.also

    def screened(scan: Scan) -> bool:
        hits = scan._hits.get(where, _UNSCANNED)
        if hits is _UNSCANNED:
            hits = scan.probe_hits(probe)
        return (hits is None or _holds(hits, texts, also)) and run(scan)
    return screened


def _holds(hits: AbstractSet[str], texts: frozenset[str],
           also: tuple[frozenset[str], ...]) -> bool:
    """Whether the needles found hold one of ``texts`` and one of each set in ``also``."""
    if hits.isdisjoint(texts):
        return False
    for needles in also:  # noqa: SIM110 (hot: usually empty, no generator made)
        if hits.isdisjoint(needles):
            return False
    return True


def _fold(value: Any) -> Any:
    if isinstance(value, str):
        return value.casefold()
    if isinstance(value, list):
        return [v.casefold() if isinstance(v, str) else v for v in value]
    return value


def _find(finder: Any, texts: Iterable[str]) -> set[str]:
    if isinstance(finder, tuple):
        return {word for word in finder for text in texts if word in text}
    found: set[str] = set()
    for text in texts:
        found.update(finder.find_matches_as_strings(text, overlapping=True))
    return found


def _positions(text: str, marks: tuple[str, ...]) -> list[int]:
    found = []
    for mark in marks:
        at = text.find(mark)
        while at >= 0:
            found.append(at)
            at = text.find(mark, at + 1)
    return found


def _as_plain_i(folded: str) -> str:
    """A folded text with 'ı' and 'i̇' (the fold of 'İ') read as 'i'."""
    return folded.replace("\u0131", "i").replace("i\u0307", "i")


def _texts(value: Any) -> tuple[str, ...] | list[str] | None:
    """The strings a text operator looks at; None when it would not see text."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) or v is None for v in value):
        return [v for v in value if v is not None]
    return None
