"""Compiled rule sets: one keyword scan per fact instead of one test per rule (pure).

``plan_for(ruleset, account, stages)`` compiles once per rule set and account (cached for as
long as the rule set lives) what ``rules.evaluate`` needs to scale with the number of rules:

- each stage's rules in evaluation order (``RuleSet.for_type``);
- one finder per fact key holding every needle of the rules (``rules.needles``), folded:
  ``contains``, ``starts_with``, ``ends_with``, ``equals`` and ``in`` operands and the
  literals every match of a regex contains. Past ``SMALL_FINDER`` needles it is an
  Aho-Corasick automaton (ahocorasick-rs), whose one pass costs the same for 10 needles or
  10,000; below, ``in`` per needle is cheaper. A ``case: sensitive`` needle is looked for in
  the raw fact only when its folded form was found;
- each rule's condition tree reordered to decide quickly (set lookups first, regexes last:
  ``and``/``or`` of pure tests do not depend on order), the written order kept for traces;
- per stage, the rules each needle can make true, and the rules tested on every message
  (no needle: ``not``, ``exists``, numbers, a regex without a literal, no ``when``).

Per message, ``rules.scan.Scan`` uses the plan to find the needles and the candidates.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import ahocorasick_rs
import regex

from rules.conditions import FactSource, LeafTest, Log, compile_check
from rules.needles import Needle, may_match, regex_literals, requirement
from rules.scan import decider
from rules.schema import Combinator, Condition, Node, Rule, RuleSet

TEXT_OPS = frozenset({"contains", "starts_with", "ends_with", "matches"})  # raise on non-text
SMALL_FINDER = 20  # needles; measured on 2 KB bodies, ``in`` is ~1.3 us each, a pass ~32 us
DFA_FINDER = 1000  # needles; up to this many the automaton is a DFA (``_finder``)
ScanKey = tuple[str, bool]  # (fact key, case sensitive)


class Probe(NamedTuple):
    """A condition answered from the scan: ``exact`` for contains, else false when absent."""

    key: str
    sensitive: bool
    texts: frozenset[str]
    exact: str | None  # the contains operand: the answer is whether it was found
    fragile: bool
    hits: tuple[str, Any]  # where ``Scan`` keeps the needles found for it
    also: tuple[frozenset[str], ...]  # a regex's further literal sets, each one needed too


@dataclass(frozen=True)
class StagePlan:
    index: int  # in ``RulePlan.stages``
    rule_type: str
    matching: str
    stops: bool
    rules: tuple[Rule, ...]
    quick: tuple[Any, ...]  # each rule's ``when`` as a ``Decider``, cheap tests first
    sure: frozenset[int]  # positions true whenever one of their needles is found
    keys: tuple[tuple[int, str], ...]  # (first position, key), for the deferred trace
    plain: bool  # every match and nothing can stop it: matches are applied together
    documents: tuple[tuple[str, ...], ...]  # each rule's suggested documents
    tests: tuple[LeafTest | None, ...]  # each rule's ``when`` as written, for small plans


@dataclass(frozen=True)
class RulePlan:
    """Sets of rules are int bit masks over all stages (bit ``offsets[s] + i``: the rule at
    position i of stage s), so a union is one C operation, a stage's rules one shift, and
    the lowest bit first is file order."""

    stages: tuple[StagePlan, ...]
    size: int  # rules in all stages
    offsets: tuple[int, ...]  # per stage, the bit of its first rule
    always: int  # the rules tested on every message
    needles: dict[ScanKey, dict[str, int]]  # needle -> the rules it may make true
    fragile: frozenset[str]  # keys with insensitive regex needles (``Scan.regex_hits``)
    checked: dict[str, int]  # key -> the rules testing it with a text operator
    finders: dict[str, Any]  # key -> automaton, or tuple of needles, over the folded fact
    cased: dict[str, dict[str, tuple[str, ...]]]  # key -> folded form -> sensitive needles
    dotted: dict[str, tuple[Any, int]]  # key -> (finder, longest) of the insensitive regex
    #                                     needles holding an 'i'
    probes: dict[int, Probe]  # id(condition) -> how the scan answers it; the stages' rules
    #                           keep those conditions alive (the plan must not hold the set)


class _Tables(NamedTuple):
    always: int
    needles: dict[ScanKey, dict[str, int]]
    fragile: set[str]
    checked: dict[str, int]


_PLANS: dict[int, tuple[weakref.ref[RuleSet], dict[str | None, RulePlan]]] = {}


def plan_for(ruleset: RuleSet, account: str | None,
             stages: tuple[tuple[str, str, bool], ...]) -> RulePlan:
    """The compiled plan of ``ruleset`` for ``account``; built on first use, then cached."""
    entry = _PLANS.get(id(ruleset))
    if entry is None or entry[0]() is not ruleset:
        entry = (weakref.ref(ruleset, _forget(id(ruleset))), {})
        _PLANS[id(ruleset)] = entry
    plan = entry[1].get(account)
    if plan is None:
        plan = entry[1][account] = compile_plan(ruleset, account, stages)
    return plan


def _forget(ident: int) -> Any:
    def drop(ref: weakref.ref[RuleSet]) -> None:
        if ident in _PLANS and _PLANS[ident][0] is ref:
            del _PLANS[ident]
    return drop


def compile_plan(ruleset: RuleSet, account: str | None,
                 stages: tuple[tuple[str, str, bool], ...]) -> RulePlan:
    chosen = [(rules, *stage) for stage in stages if (rules := ruleset.for_type(stage[0],
                                                                                account))]
    probes = {id(c): p for rules, *_ in chosen for r in rules for c in _leaves(r.when)
              if (p := _probe(c)) is not None}
    built = [_stage_plan(i, *args, probes) for i, args in enumerate(chosen)]
    offsets = [0]
    for stage, _ in built:
        offsets.append(offsets[-1] + len(stage.rules))
    needles: dict[ScanKey, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    checked: dict[str, int] = defaultdict(int)
    always = 0
    for (_, tables), at in zip(built, offsets, strict=False):
        always |= tables.always << at
        for scan_key, table in tables.needles.items():
            for text, rules in table.items():
                needles[scan_key][text] |= rules << at
        for key, rules in tables.checked.items():
            checked[key] |= rules << at
    plans = tuple(stage for stage, _ in built)
    return RulePlan(
        plans, offsets[-1], tuple(offsets[:-1]), always,
        {k: dict(t) for k, t in needles.items()},
        frozenset().union(*(t.fragile for _, t in built)),
        dict(checked), *_finders(probes), probes)


def _finders(probes: dict[int, Probe]) -> tuple[dict[str, Any], dict[str, Any],
                                                 dict[str, Any]]:
    """Per key: the finder of every needle, the case-sensitive needles by folded form, and
    the finder of the insensitive regex needles holding an 'i'."""
    words: dict[str, set[str]] = defaultdict(set)
    cased: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    dotted: dict[str, set[str]] = defaultdict(set)
    for probe in probes.values():  # every needle of a tree is some leaf's needle
        for text in probe.texts.union(*probe.also):  # a raw text holds a needle only if
            #                                          its folded form does
            words[probe.key].add(text.casefold() if probe.sensitive else text)
            if probe.sensitive:
                cased[probe.key][text.casefold()].add(text)
            if probe.fragile and "i" in text:
                dotted[probe.key].add(text)
    return ({k: _finder(w) for k, w in words.items()},
            {k: {f: tuple(n) for f, n in forms.items()} for k, forms in cased.items()},
            {k: (_finder(w), max(map(len, w))) for k, w in dotted.items()})


def _stage_plan(index: int, rules: list[Rule], rule_type: str, matching: str, stops: bool,
                probes: dict[int, Probe]) -> tuple[StagePlan, _Tables]:
    tables = _Tables(0, defaultdict(lambda: defaultdict(int)), set(), defaultdict(int))
    keys: dict[str, int] = {}
    always = 0
    for i, rule in enumerate(rules):
        found = requirement(rule.when)
        if found is None:
            always |= 1 << i
        for needle in found or ():
            tables.needles[needle.key, needle.sensitive][needle.text] |= 1 << i
            if needle.fragile:
                tables.fragile.add(needle.key)
        for cond in _leaves(rule.when):
            keys.setdefault(cond.key, i)
            if cond.op in TEXT_OPS:
                tables.checked[cond.key] |= 1 << i
    stage = StagePlan(
        index, rule_type, matching, stops, tuple(rules),
        tuple(None if r.when is None else decider(_cheap_first(r.when, probes), probes)
              for r in rules),
        frozenset(i for i, r in enumerate(rules) if r.when is not None and _sure(r.when, probes)),
        tuple(sorted((i, k) for k, i in keys.items())),
        matching == "every" and not stops and not any("procedure" in r.params for r in rules),
        tuple(tuple(r.params.get("documents", ())) for r in rules),
        tuple(None if r.when is None else predicate(r.when) for r in rules))
    return stage, tables._replace(always=always)


def predicate(node: Node) -> LeafTest:
    """A condition tree as one function of the facts: true when the tree holds. Items are
    tested in written order and stop as soon as the answer is known, like ``_test``; each
    leaf tested is logged with its actual value (the trace of a rule that matched)."""
    if not isinstance(node, Combinator):
        return _screened(node, compile_check(node))
    items = tuple(predicate(item) for item in node.items)
    if node.kind == "not":
        inner = items[0]
        return lambda facts, log: not inner(facts, log)
    if node.kind == "any":
        def any_of(facts: FactSource, log: Log) -> bool:
            for item in items:  # noqa: SIM110 — a loop, not any(): no generator per call
                if item(facts, log):
                    return True
            return False
        return any_of

    def all_of(facts: FactSource, log: Log) -> bool:
        for item in items:  # noqa: SIM110 — a loop, not all(): no generator per call
            if not item(facts, log):
                return False
        return True
    return all_of


def _screened(cond: Condition, test: LeafTest) -> LeafTest:
    """A regex test that first looks for the literals every match holds (most texts lack
    them, and a literal search costs a fraction of the regex's)."""
    needed = regex_literals(cond.operand) if cond.op == "matches" else None
    if not needed:
        return test
    key, sensitive = cond.key, not cond.operand.flags & regex.IGNORECASE

    def screened(facts: FactSource, log: Log) -> bool:
        value = facts.get(key) if sensitive else facts.folded(key)
        if type(value) is str and not may_match(needed, sensitive, value):
            log.append((cond, facts.get(key), False))
            return False
        return test(facts, log)
    return screened


def _leaves(node: Node | None) -> Iterator[Condition]:
    if isinstance(node, Combinator):
        for item in node.items:
            yield from _leaves(item)
    elif node is not None:
        yield node


def _probe(cond: Condition) -> Probe | None:
    found = requirement(cond)
    if not found:
        return None
    first: Needle = next(iter(found))
    literals = regex_literals(cond.operand) if cond.op == "matches" else None
    return Probe(first.key, first.sensitive, frozenset(n.text for n in found),
                 first.text if cond.op == "contains" else None, first.fragile,
                 (first.key, "regex" if first.fragile else first.sensitive),
                 literals[1:] if literals else ())


def _cheap_first(node: Node, probes: dict[int, Probe]) -> Node:
    """The same tree with set lookups first and regexes last (sorting is stable)."""
    if not isinstance(node, Combinator):
        return node
    items = [_cheap_first(item, probes) for item in node.items]
    return Combinator(node.kind, tuple(sorted(items, key=lambda n: _cost(n, probes))))


def _sure(node: Node, probes: dict[int, Probe]) -> bool:
    """Whether finding one of the tree's needles makes it true: ``contains``, or any of."""
    if isinstance(node, Combinator):
        return node.kind == "any" and all(_sure(item, probes) for item in node.items)
    probe = probes.get(id(node))
    return probe is not None and probe.exact is not None


def _cost(node: Node | None, probes: dict[int, Probe]) -> int:
    if isinstance(node, Combinator):
        return max((_cost(item, probes) for item in node.items), default=0)
    if node is None or node.op == "matches":
        return 2
    probe = probes.get(id(node))
    return 0 if probe is not None and probe.exact is not None else 1


def _finder(words: set[str]) -> Any:
    if len(words) <= SMALL_FINDER:
        return tuple(sorted(words))
    # ahocorasick-rs (Rust): overlapping search returns every needle present in one call,
    # measured twice as fast as pyahocorasick's per-match iterator on 2.5 KB bodies. A DFA
    # scans a third faster than the default NFA (bench/rules.py's 386 body needles: 10 vs
    # 16 us a body) but its table grows with the needles and no longer wins past ~2,000.
    dfa = ahocorasick_rs.Implementation.DFA if len(words) <= DFA_FINDER else None
    return ahocorasick_rs.AhoCorasick(sorted(words), implementation=dfa)


__all__ = ["Probe", "RulePlan", "StagePlan", "compile_plan", "plan_for", "predicate"]
