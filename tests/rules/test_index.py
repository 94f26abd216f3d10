"""The compiled evaluation (``rules.index``: needle scans, candidates, deferred trace) decides
exactly as the straightforward one (``evaluate_reference``): on the benchmark's rule sets and
corpus, and on seeded random rule sets and messages built to hit the corners (case folding,
'İ'/'ı' and 'ß', regexes with and without literals, not/any/all, missing and odd facts,
classification read by later stages, procedures that stop).
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import pickle
import random
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import regex
import yaml

import rules.evaluate as evaluation
from bench.rules import build_corpus, build_ruleset
from rules.evaluate import Decision, evaluate, evaluate_reference
from rules.index import _PLANS, plan_for
from rules.needles import regex_literals, regex_needles
from rules.schema import RuleSet, load_rules


@pytest.fixture(params=["indexed", "default"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run each test through the index even for small sets, and with the default cut-off."""
    if request.param == "indexed":
        monkeypatch.setattr(evaluation, "SMALL_PLAN", -1)
    return str(request.param)


def outcome(decision: Decision) -> dict[str, Any]:
    """Everything a decision says, the trace with full actual values."""
    return {
        "fields": {f.name: getattr(decision, f.name) for f in dataclasses.fields(decision)
                   if f.name != "trace"},
        "trace": [(t.rule, t.type, t.matched, t.note,
                   [(c.key, c.op, c.expected, c.actual, c.result) for c in t.conditions])
                  for t in decision.trace],
    }


def run(evaluator: Any, ruleset: RuleSet, facts: Mapping[str, Any], account: str | None,
        procedures: Any = None) -> dict[str, Any]:
    try:
        decision = evaluator(ruleset, facts, account, procedures)
        stored = decision.to_json()  # before the full trace is read: the matched rules' own
        return {**outcome(decision), "stored": stored}
    except Exception as exc:  # the reference raises on some odd facts: so must the index
        return {"raised": type(exc).__name__}


def assert_same(ruleset: RuleSet, facts: Mapping[str, Any], account: str | None,
                procedures: Any = None) -> None:
    fast = run(evaluate, ruleset, facts, account, procedures)
    slow = run(evaluate_reference, ruleset, facts, account, procedures)
    assert fast == slow, (account, facts)


# --- the benchmark's rule sets and corpus ---------------------------------------------------

CORPUS = build_corpus(80)


@pytest.mark.parametrize("size", [10, 100, 1000])
def test_bench_rule_sets_decide_as_the_reference(size: int, path: str) -> None:
    ruleset = build_ruleset(size)
    for facts in CORPUS:
        assert_same(ruleset, facts, "support")
    assert_same(ruleset, CORPUS[0], None)
    assert_same(ruleset, CORPUS[1], "sales")


# --- random rule sets and messages ----------------------------------------------------------

WORDS = ["order", "refund", "invoice 42", "İstanbul", "istanbul", "ıstanbul", "straße",
         "strasse", "STRASSE", "fix", "FİX", "kelvin", "\u212aelvin", "ab", "x", "", "Grüße",
         "re:", "[newsletter]", "password reset", "charge back", "12345", "ß", "spam.example"]
TEXT_KEYS = ["subject", "body", "sender.domain", "sender.name", "header.X-Flag",
             "tag.agent", "field.order", "classification", "language"]
LIST_KEYS = ["to", "cc", "attachment.name", "attachment.type"]
REGEX_PARTS = [r"\b", r"(?:order|refund)", r"fix(?:ed|ing)?", r"\d{3,}", r"\s*", r".*", r"x?",
               r"[a-z]+", r"(invoice)+", r"^", r"$", r"(?i:fix)", r"strasse", r"İstanbul",
               r"(?:ab|abc)", r"(charge ?back)", r"(?=order)", r"\w+", r"(?:fix){e<=1}",
               r"[[:alpha:]]+", r"FIX", r"\bistanbul", r"re:\s*", r"kelvin|k"]


def random_text(rng: random.Random, length: int) -> str:
    parts = []
    while sum(map(len, parts)) < length:
        roll = rng.random()
        if roll < 0.4:
            parts.append(rng.choice(WORDS))
        elif roll < 0.5:
            parts.append(rng.choice(WORDS).upper())
        else:
            parts.append("".join(rng.choices(string.ascii_letters + "  .,:#\n", k=8)))
    return " ".join(parts)


def random_leaf(rng: random.Random) -> dict[str, Any]:
    kind = rng.random()
    if kind < 0.1:
        return rng.choice([{"size": {"less_than": rng.randrange(0, 5000)}},
                           {"received.weekday": {"in": ["sat", "sun"]}},
                           {"attachment.present": rng.random() < 0.5},
                           {"thread.known": {"equals": True}}])
    key = rng.choice(TEXT_KEYS + LIST_KEYS)
    op = rng.choice(["contains"] * 4 + ["starts_with", "ends_with", "equals", "not_equals",
                                        "in", "matches", "matches", "exists"])
    if op == "exists":
        return {key: {"exists": rng.random() < 0.7}}
    if op == "matches":
        operand: Any = "".join(rng.choices(REGEX_PARTS, k=rng.randint(1, 3)))
    elif op == "in":
        operand = rng.sample(WORDS, rng.randint(1, 3))
    else:
        operand = rng.choice(WORDS) or "z"
    spec = {op: operand}
    if rng.random() < 0.2:
        spec["case"] = "sensitive"
    return {key: spec}


def random_tree(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth >= 3 or roll < 0.35:
        return random_leaf(rng)
    if roll < 0.45:
        return {"not": random_tree(rng, depth + 1)}
    items = [random_tree(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {"any" if roll < 0.75 else "all": items}


PARAMS = {
    "reject": lambda rng: {"message": "no"},
    "classification": lambda rng: {"classification": rng.choice(["billing", "orders"])},
    "auto-delete": lambda rng: {},
    "auto-acknowledge": lambda rng: {"template": "ack"},
    "auto-process": lambda rng: rng.choice([{"service_request": "create"},
                                            {"procedure": "mod:check"}]),
    "auto-redirect": lambda rng: {"to": {"address": "legal@example.com"}},
    "auto-reply": lambda rng: {"template": "reply"},
    "document-retrieval": lambda rng: {"documents": [f"doc-{rng.randrange(5)}"]},
    "routing": lambda rng: rng.choice([{"route": {"group": "g"}}, {"route": {
        "original_agent": True, "default": {"group": "first-line"}}}]),
}


# Rules that stop the evaluation are rarer, so that later stages are reached too.
TYPE_WEIGHTS = {"reject": 2, "classification": 20, "auto-delete": 2, "auto-acknowledge": 10,
                "auto-process": 10, "auto-redirect": 2, "auto-reply": 2,
                "document-retrieval": 25, "routing": 15}
STOPPERS = ("reject", "auto-delete", "auto-redirect", "auto-reply")


def random_ruleset(rng: random.Random, count: int, directory: Path) -> RuleSet:
    rules = []
    for i in range(count):
        rule_type = rng.choices(list(TYPE_WEIGHTS), weights=list(TYPE_WEIGHTS.values()))[0]
        rule: dict[str, Any] = {"name": f"r{i}", "type": rule_type,
                                "priority": rng.randrange(0, 50, 10), **PARAMS[rule_type](rng)}
        if rule_type in STOPPERS:  # harder to satisfy, so that most messages go on
            rule["when"] = {"all": [random_tree(rng), random_tree(rng), random_leaf(rng)]}
        elif rng.random() < 0.9:
            rule["when"] = random_tree(rng)
        if rng.random() < 0.2:
            rule["accounts"] = [rng.choice(["a", "b"])]
        rules.append(rule)
    path = directory / f"random-{rng.random()}.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "rules": rules}, allow_unicode=True),
                    encoding="utf-8")
    return load_rules([path])


def random_facts(rng: random.Random) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    for key in TEXT_KEYS:
        roll = rng.random()
        if roll < 0.8:
            facts[key] = random_text(rng, rng.choice([5, 40, 400]))
        elif roll < 0.9:
            facts[key] = None
    for key in LIST_KEYS:
        if rng.random() < 0.85:
            facts[key] = [rng.choice([random_text(rng, 10), None, ""])
                          for _ in range(rng.randint(0, 3))]
    facts |= {"size": rng.randrange(0, 5000), "received.weekday": rng.choice(["mon", "sat"]),
              "attachment.present": rng.random() < 0.5, "thread.known": rng.random() < 0.5}
    return facts


def procedures(ref: str, facts: Mapping[str, Any]) -> bool:
    """Deterministic: stops when the subject has an even length."""
    return len(str(facts.get("subject"))) % 2 == 1


@pytest.mark.parametrize("seed", range(12))
def test_random_rule_sets_decide_as_the_reference(seed: int, path: str,
                                                  tmp_path: Path) -> None:
    rng = random.Random(seed)
    for count in (3, 30, 90):
        ruleset = random_ruleset(rng, count, tmp_path)
        for _ in range(25):
            facts = random_facts(rng)
            account = rng.choice([None, "a", "b"])
            assert_same(ruleset, facts, account, procedures if rng.random() < 0.5 else None)


@pytest.mark.parametrize("odd", [4711, 3.5, ["refund", 7], ("refund", "b"), {"k": "v"}])
def test_odd_facts_give_the_same_outcome(odd: Any, path: str, tmp_path: Path) -> None:
    """Non-text values where text is expected: raising or not, both evaluators agree."""
    rng = random.Random(99)
    ruleset = random_ruleset(rng, 60, tmp_path)
    for key in TEXT_KEYS + LIST_KEYS:
        for _ in range(3):
            assert_same(ruleset, {**random_facts(rng), key: odd}, "a")


def test_odd_values_still_match_equals_and_in(path: str, tmp_path: Path) -> None:
    """A list holding a number: ``equals`` and ``in`` do not raise on it, and can match."""
    rule_file = tmp_path / "odd.yaml"
    rule_file.write_text(yaml.safe_dump({"version": 1, "rules": [
        {"name": "to", "type": "classification", "when": {"to": {"equals": "refund"}},
         "classification": "c"},
        {"name": "tag", "type": "routing", "when": {"tag.agent": {"in": ["refund", "xyz"]}},
         "route": {"group": "g"}}]}), encoding="utf-8")
    ruleset = load_rules([rule_file])
    for odd in (["refund", 7], ("refund",), 4711, ["refund"]):
        assert_same(ruleset, {"to": odd, "tag.agent": odd}, None)
    assert evaluate(ruleset, {"to": ["refund", 7]}).classification == "c"


# --- regex needles ----------------------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "needles"), [
    (r"\b(refund|charge ?back)\b", {"refund", "charge"}),
    (r"order\s*(?:no\.?|number|#)?\s*(?P<value>\d{5,})", {"order"}),
    (r"(?:invoice)+ due", {"invoice"}),
    (r"^(out of office|automatic reply)", {"out of office", "automatic reply"}),
    (r"(?:abc)*x", None),  # nothing required three characters long
    (r"\d{5,}", None),
    (r"(?i:abc)def", None),  # scoped flags: not read
    (r"(?:fix){e<=1}", None),  # fuzzy matching (regex only)
    (r"[[:alpha:]]+ing", None),  # POSIX class (regex only)
])
def test_regex_needles(pattern: str, needles: set[str] | None) -> None:
    found = regex_needles(regex.compile(pattern, regex.IGNORECASE))
    assert (None if found is None else set(found)) == needles


@pytest.mark.parametrize(("pattern", "needed"), [
    (r"\bparcel\W+ship", [{"parcel"}, {"ship"}]),
    (r"\bship(?:ed|ing)?\b.*\bcable\b", [{"cable"}, {"ship"}]),
    (r"(?:invoice)+ due", [{"invoice"}, {" due"}]),
    (r"(tracking\s+id|parcel \d+ lost)", [{"tracking", "parcel "}]),  # one of the branches
    (r"(?:ab)?refund\s*\d+x", [{"refund"}]),
    (r"\d+", None),
])
def test_regex_literals_every_set_required(pattern: str, needed: list[set[str]] | None) -> None:
    """A match holds one needle of *each* set, best set first (the index's)."""
    found = regex_literals(regex.compile(pattern, regex.IGNORECASE))
    assert (None if found is None else [set(s) for s in found]) == needed


def _plain_i(text: str) -> str:
    return text.casefold().replace("\u0131", "i").replace("i\u0307", "i")


@pytest.mark.parametrize("sensitive", [False, True])
def test_every_regex_match_contains_a_needle(sensitive: bool) -> None:
    """Soundness, the one property the index relies on, over random patterns and texts."""
    rng = random.Random(7)
    checked = conjunctions = 0
    for _ in range(3000):
        source = "".join(rng.choices(REGEX_PARTS, k=rng.randint(1, 4)))
        pattern = regex.compile(source, 0 if sensitive else regex.IGNORECASE)
        needed = regex_literals(pattern)
        if not needed:
            continue
        assert needed[0] == regex_needles(pattern)
        for _ in range(5):
            text = random_text(rng, 60)
            if pattern.search(text):
                seen = text if sensitive else _plain_i(text)
                for needles in needed:  # every set: a text lacking one is screened out
                    assert any(n in seen for n in needles), (source, text, needed)
                checked += 1
                conjunctions += len(needed) > 1
    assert checked > 200
    assert conjunctions > 30  # the further sets were exercised, not only the first


# --- the deferred trace and the plan cache ----------------------------------------------------

def small_ruleset(tmp_path: Path) -> RuleSet:
    text = """
    version: 1
    rules:
      - name: billing
        type: classification
        when: {any: [{subject: {contains: invoice}}, {body: {matches: '\\brefund\\b'}}]}
        classification: billing
      - name: ack-billing
        type: auto-acknowledge
        when: {classification: billing}
        template: ack
      - name: docs
        type: document-retrieval
        when: {all: [{body: {contains: refund}}, {not: {sender.domain: {in: [x.example]}}}]}
        documents: [refund-policy]
      - name: small-and-urgent
        type: document-retrieval
        when: {all: [{size: {less_than: 100}}, {subject: {contains: urgent}}]}
        documents: [urgent]
    """
    path = tmp_path / "small.yaml"
    path.write_text(text.replace("\n    ", "\n"), encoding="utf-8")
    return load_rules([path])


FACTS = {"subject": "Invoice 42", "body": "Please refund me", "sender.domain": "y.example",
         "classification": None, "size": 50}


def test_deferred_trace_equals_copies_and_pickles(path: str, tmp_path: Path) -> None:
    ruleset = small_ruleset(tmp_path)
    assert evaluate(ruleset, FACTS) == evaluate_reference(ruleset, FACTS)
    decision = evaluate(ruleset, FACTS)
    assert copy.deepcopy(decision) == decision
    assert pickle.loads(pickle.dumps(decision)) == decision
    assert dataclasses.asdict(evaluate(ruleset, FACTS))["trace"][0]["rule"] == "billing"
    assert [t.rule for t in evaluate(ruleset, FACTS).trace] == ["billing", "ack-billing", "docs",
                                                                "small-and-urgent"]


def test_the_matched_rules_are_traced_once(path: str, tmp_path: Path) -> None:
    """The intake reads them twice (the stored summary, then the hit counts): at 1,000
    rules tracing them costs as much as deciding, so it is done once."""
    decision = evaluate(small_ruleset(tmp_path), FACTS)
    first = decision.matched_traces()
    assert decision.matched_traces() is first
    assert decision.matched_rules() == ["billing", "ack-billing", "docs"]
    assert [t["rule"] for t in decision.to_json()["trace"]] == decision.matched_rules()
    assert pickle.loads(pickle.dumps(decision)) == decision


def test_trace_shows_the_facts_as_they_were_evaluated(path: str, tmp_path: Path) -> None:
    """Read later, the trace still shows the values tested, not the caller's later edits."""
    ruleset = small_ruleset(tmp_path)
    facts = dict(FACTS)
    decision = evaluate(ruleset, facts)
    facts |= {"subject": "changed", "body": "changed", "size": 5000}
    [billing, ack, _docs, small] = decision.trace
    assert billing.conditions[0].actual == "Invoice 42"
    assert ack.conditions[0].actual == "billing"  # what the classification stage set
    # not a candidate (no 'urgent'), yet the trace shows the size it would have tested first
    assert [(c.key, c.actual, c.result) for c in small.conditions] == [
        ("size", 50, True), ("subject", "Invoice 42", False)]


def test_plans_are_cached_per_rule_set_and_dropped_with_it(tmp_path: Path) -> None:
    ruleset = small_ruleset(tmp_path)
    plan = plan_for(ruleset, None, evaluation.STAGES)
    assert plan_for(ruleset, None, evaluation.STAGES) is plan
    assert plan_for(ruleset, "a", evaluation.STAGES) is not plan
    ident = id(ruleset)
    del ruleset
    gc.collect()
    assert ident not in _PLANS or _PLANS[ident][0]() is not None
