"""Evaluation: facts in, a ``Decision`` out (pure; custom procedures come in as a callable).

Rule types run in a fixed order, a table rather than an if/elif chain (Mailman's chains):

| type               | matching    | effect                                   | stops? |
|--------------------|-------------|------------------------------------------|--------|
| reject             | first match | refuse in the SMTP transaction (550)     | yes    |
| classification     | first match | sets ``classification`` (queue)          | no     |
| auto-delete        | first match | stored as deleted, never queued          | yes    |
| auto-acknowledge   | first match | acknowledgement recorded                 | no     |
| auto-process       | every match | service request / custom procedure       | on "stop" |
| auto-redirect      | first match | redirected to an account or address      | yes    |
| auto-reply         | first match | auto-reply recorded, message settled     | yes    |
| document-retrieval | every match | suggested documents                      | no     |
| routing            | first match | group / agent / original agent           | no     |

Within a type, an account's rules run by ``priority`` (lower first), then file order. Every
rule considered and every condition tested is recorded in the trace (``rules explain``).

A rule set is compiled once, on first use (``rules.index``): a scan for keywords then tells
which rules can match, so the cost per message grows with the rules that might match, not
with all of them; the trace of a large set is built when first read (``Decision.trace``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from rules.conditions import Log, check
from rules.index import RulePlan, StagePlan, plan_for
from rules.scan import FactsView, Scan
from rules.schema import Combinator, Condition, Node, Rule, RuleSet

# A custom procedure runner: (module:function, facts) -> True to continue, False to stop.
ProcedureRunner = Callable[[str, Mapping[str, Any]], bool]

FIRST, EVERY = "first", "every"
STAGES: tuple[tuple[str, str, bool], ...] = (  # (type, matching, stops when it acts)
    ("reject", FIRST, True),
    ("classification", FIRST, False),
    ("auto-delete", FIRST, True),
    ("auto-acknowledge", FIRST, False),
    ("auto-process", EVERY, False),
    ("auto-redirect", FIRST, True),
    ("auto-reply", FIRST, True),
    ("document-retrieval", EVERY, False),
    ("routing", FIRST, False),
)
# Up to this many rules (for the account), testing each in turn beats scanning for needles,
# with or without the stored summary (measured with bench/rules.py rule sets: in turn wins at
# 10 rules, the scan from 20 on).
SMALL_PLAN = 16
STATE_AFTER = {"auto-delete": "deleted", "auto-redirect": "redirected",
               "auto-reply": "auto_replied"}


@dataclass
class ConditionTrace:
    key: str
    op: str
    expected: str
    actual: Any
    result: bool


@dataclass
class RuleTrace:
    rule: str
    type: str
    matched: bool
    conditions: list[ConditionTrace] = field(default_factory=list)
    note: str = ""


@dataclass
class Decision:
    """What the rules decided; carried out by the store, the outbox and later stages."""

    version: str
    reject: str | None = None
    classification: str | None = None
    state: str = "queued"
    actions: list[dict[str, Any]] = field(default_factory=list)
    route: dict[str, Any] | None = None
    documents: list[str] = field(default_factory=list)
    stopped_by: str | None = None
    trace: list[RuleTrace] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)  # what parser definitions found
    considered: dict[str, int] = field(default_factory=dict)  # rules considered per type

    def __getattr__(self, name: str) -> Any:
        # ``evaluate`` defers the trace of a large rule set: it is built here on first read,
        # so a caller that needs only the outcome (or the matched rules, ``matched_traces``)
        # does not pay for a trace of every rule considered.
        build = self.__dict__.get("_build_trace") if name == "trace" else None
        if build is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        self.trace = build()
        self.__dict__.pop("_build_trace", None)
        self.__dict__.pop("_build_matched", None)
        self.__dict__.pop("_build_matched_done", None)
        return self.trace

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles carry the built trace, not its builders."""
        trace = self.trace
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_build")}
        return {**state, "trace": trace}

    def _defer_trace(self, build: Callable[[], list[RuleTrace]],
                     matched: Callable[[], list[RuleTrace]]) -> None:
        del self.__dict__["trace"]
        self.__dict__["_build_trace"] = build
        self.__dict__["_build_matched"] = matched

    def matched_traces(self) -> list[RuleTrace]:
        """The rules that matched, in evaluation order, each with its conditions; cheap
        even when the full trace is deferred, and built once (the intake asks twice: the
        stored summary, then the rules' hit counts)."""
        if "trace" in self.__dict__:
            return [t for t in self.trace if t.matched]
        built = self.__dict__.get("_build_matched_done")
        if built is None:
            built = self.__dict__["_build_matched_done"] = self.__dict__["_build_matched"]()
        return built

    def matched_rules(self) -> list[str]:
        return [t.rule for t in self.matched_traces()]

    def to_json(self, full: bool = False) -> dict[str, Any]:
        """A JSON-safe summary kept with the message (the console reads it).

        Stored, the trace holds the rules that matched, each condition with its actual
        value, and ``considered`` counts per type the rules looked at: the cost of a
        thousand-rule set's full trace is not paid on every message. ``full`` (``rules
        explain --json``) holds every rule considered and every condition tested.
        """
        traces = self.trace if full else self.matched_traces()
        return {
            "version": self.version, "reject": self.reject,
            "classification": self.classification, "state": self.state,
            "actions": self.actions, "route": self.route, "documents": self.documents,
            "stopped_by": self.stopped_by, "fields": self.fields,
            "considered": self.considered,
            "trace": [{"rule": t.rule, "type": t.type, "matched": t.matched, "note": t.note,
                       "conditions": [[c.key, c.op, c.expected, _short(c.actual), c.result]
                                      for c in t.conditions]} for t in traces],
        }


_JSON_SAFE = (int, float, bool, type(None), list)


def _short(value: Any) -> Any:
    if isinstance(value, str):
        return value[:77] + "..." if len(value) > 80 else value
    return value if isinstance(value, _JSON_SAFE) else str(value)


def evaluate(ruleset: RuleSet, facts: Mapping[str, Any], account: str | None = None,
             procedures: ProcedureRunner | None = None) -> Decision:
    """Run every stage for ``account`` over ``facts``; never raises on odd facts.

    Past ``SMALL_PLAN`` rules, only those a scan of the facts leaves as candidates are
    tested (``rules.index``, ``rules.scan``): the others cannot match. The trace, the same
    as ``evaluate_reference``'s, is then built when first read, from the facts as each
    stage saw them.
    """
    plan = plan_for(ruleset, account, STAGES)
    if plan.size <= SMALL_PLAN:  # a few rules: testing each beats scanning
        return _small(plan, ruleset.version, FactsView(facts), procedures)
    scan = Scan(plan, facts)
    decision = Decision(version=ruleset.version)
    segments: list[_Segment] = []
    decision._defer_trace(lambda: _build_trace(scan, segments),
                          lambda: _build_trace(scan, segments, matched_only=True))
    for stage in plan.stages:
        segment = _Segment(stage, scan.view.overrides, len(stage.rules))
        segments.append(segment)
        stopped = _run_stage(stage, segment, scan, decision, procedures)
        scan.prefetch(stage, segment.end)
        decision.considered[stage.rule_type] = segment.end
        if stopped:
            break
    return decision


def evaluate_reference(ruleset: RuleSet, facts: Mapping[str, Any], account: str | None = None,
                       procedures: ProcedureRunner | None = None) -> Decision:
    """The straightforward evaluator: every rule considered is tested in turn, tracing as
    it goes. ``evaluate`` must decide exactly as it does (tests/rules/test_index.py) and
    ``bench/rules.py`` measures against it."""
    stages = ((ruleset.for_type(t, account), m, s) for t, m, s in STAGES)
    return _in_turn(stages, ruleset.version, facts, procedures)


def _in_turn(stages: Iterable[tuple[Sequence[Rule], str, bool]], version: str,
             facts: Mapping[str, Any], procedures: ProcedureRunner | None) -> Decision:
    """Test every rule of every stage in order until the stage (or a stop) ends it."""
    decision = Decision(version=version)
    view = FactsView(facts)
    for rules, matching, stops in stages:
        for rule in rules:
            trace = RuleTrace(rule.name, rule.type, False)
            decision.trace.append(trace)
            decision.considered[rule.type] = decision.considered.get(rule.type, 0) + 1
            trace.matched = rule.when is None or _test(rule.when, view, trace)
            if not trace.matched:
                continue
            halted = _apply(rule, decision, view, trace, procedures)
            if halted or stops:
                decision.stopped_by = rule.name
                return decision
            if matching == FIRST:
                break
    return decision


def _small(plan: RulePlan, version: str, view: FactsView,
           procedures: ProcedureRunner | None) -> Decision:
    """Test every rule of every stage in order, each ``when`` compiled to one function
    (``rules.index.predicate``). A matching rule's trace comes from the conditions its test
    logged; the trace of every rule considered is built when first read, as for a scan."""
    decision = Decision(version=version)
    segments: list[_Segment] = []
    decision._defer_trace(lambda: _build_trace(view, segments),
                          lambda: [t for s in segments for _, t in sorted(s.matched.items())
                                   if t is not None])
    log: Log = []
    for stage in plan.stages:
        segment = _Segment(stage, view.overrides, len(stage.rules))
        segments.append(segment)
        stopped = False
        for i, test in enumerate(stage.tests):
            log.clear()
            if test is not None and not test(view, log):
                continue
            rule = stage.rules[i]
            trace = segment.matched[i] = RuleTrace(rule.name, rule.type, True, [
                ConditionTrace(c.key, c.op, c.source, actual, result)
                for c, actual, result in log])
            stopped = _apply(rule, decision, view, trace, procedures) or stage.stops
            if stopped or stage.matching == FIRST:
                segment.end = i + 1
                break
        decision.considered[stage.rule_type] = segment.end
        if stopped:
            decision.stopped_by = stage.rules[segment.end - 1].name
            break
    return decision


class _Segment:
    """The rules of one stage the evaluation considered: positions below ``end``. (A plain
    class with slots: one is made per stage and message, and a dataclass's ``__init__``
    with a default factory cost more than the stage's tests in small rule sets.)"""

    __slots__ = ("stage", "overrides", "end", "matched")

    def __init__(self, stage: StagePlan, overrides: dict[str, Any], end: int):
        self.stage = stage
        self.overrides = overrides  # the facts' overrides while the stage ran
        self.end = end
        self.matched: dict[int, RuleTrace | None] = {}  # None: no note


def _run_stage(stage: StagePlan, segment: _Segment, scan: Scan, decision: Decision,
               procedures: ProcedureRunner | None) -> bool:
    """Test the stage's candidates in order; True when a rule stopped the evaluation."""
    found = scan.candidates(stage)
    if not found:
        return False
    rules, sure, quick, odd = stage.rules, stage.sure, stage.quick, scan.odd_seen
    if stage.plain:  # every match, nothing can stop: find them all, then apply together
        hits = []
        while found:
            low = found & -found  # the lowest bit: rules in file order
            found ^= low
            i = low.bit_length() - 1
            if odd:  # a text test meets a non-text fact: test as written, raise alike
                if rules[i].when is None or _holds(rules[i].when, scan):
                    hits.append(i)
            elif i in sure or quick[i] is None or quick[i](scan):
                hits.append(i)
        _apply_all(stage, hits, segment, decision, scan.view)
        return False
    first = stage.matching == FIRST
    while found:
        low = found & -found
        found ^= low
        i = low.bit_length() - 1
        rule = rules[i]
        if odd:
            if rule.when is not None and not _holds(rule.when, scan):
                continue
        elif i not in sure and quick[i] is not None and not quick[i](scan):
            continue
        trace = segment.matched[i] = RuleTrace(rule.name, rule.type, True)
        halted = _apply(rule, decision, scan.view, trace, procedures)
        if halted or stage.stops or first:
            segment.end = i + 1
            if halted or stage.stops:
                decision.stopped_by = rule.name
            return halted or stage.stops
    return False


def _apply_all(stage: StagePlan, hits: list[int], segment: _Segment, decision: Decision,
               facts: FactsView) -> None:
    """Apply the matching rules of an every-match stage no rule of which can stop."""
    if stage.rule_type == "document-retrieval":
        segment.matched.update(dict.fromkeys(hits))
        _add_documents(decision, [d for i in hits for d in stage.documents[i]])
        return
    for i in hits:
        rule = stage.rules[i]
        trace = segment.matched[i] = RuleTrace(rule.name, rule.type, True)
        _apply(rule, decision, facts, trace, None)


def _build_trace(scan: Scan | FactsView, segments: list[_Segment],
                 matched_only: bool = False) -> list[RuleTrace]:
    """Every rule considered (or only those that matched), with every condition the
    reference evaluation tests, over the facts as each stage saw them."""
    traces: list[RuleTrace] = []
    for segment in segments:
        source = scan.at(segment.overrides)
        rules = segment.stage.rules
        positions = sorted(segment.matched) if matched_only else range(segment.end)
        for i in positions:
            rule = rules[i]
            seen = segment.matched.get(i)  # a copy: each build tests the conditions anew
            trace = RuleTrace(rule.name, rule.type, i in segment.matched,
                              note=seen.note if seen else "")
            if rule.when is not None:
                _test(rule.when, source, trace)
            traces.append(trace)
    return traces


def _apply(rule: Rule, decision: Decision, facts: FactsView, trace: RuleTrace,
           procedures: ProcedureRunner | None) -> bool:
    """Record what a matching rule does; True when a custom procedure says stop."""
    params = rule.params
    if rule.type == "reject":
        decision.reject = params.get("message") or "Message refused by policy"
    elif rule.type == "classification":
        decision.classification = params["classification"]
        facts.set("classification", decision.classification)
    elif rule.type == "routing":
        decision.route = _route(params, facts, trace)
    elif rule.type == "document-retrieval":
        _add_documents(decision, params.get("documents", []))
    else:
        decision.state = STATE_AFTER.get(rule.type, decision.state)
        decision.actions.append({"type": rule.type, "rule": rule.name, **params})
    if "procedure" in params and procedures is not None:
        keep_going = procedures(params["procedure"], facts.mapping())
        trace.note = "procedure said continue" if keep_going else "procedure said stop"
        return not keep_going
    return False


def _add_documents(decision: Decision, documents: list[str]) -> None:
    """Suggest each document once, in the order the rules first named it."""
    if documents:
        decision.documents = list(dict.fromkeys([*decision.documents, *documents]))


def _route(params: dict[str, Any], facts: FactsView, trace: RuleTrace) -> dict[str, Any]:
    """A fixed destination, or the agent named in the reply's tag (else the default)."""
    if not params.get("original_agent"):
        return dict(params)
    agent = facts.get("tag.agent")
    trace.note = f"original agent {agent}" if agent else "no agent in tag: default"
    return {"agent": str(agent)} if agent else dict(params["default"])


class _Source(Protocol):
    def leaf(self, cond: Condition) -> tuple[bool, Any]: ...


def _holds(node: Node, source: _Source) -> bool:
    """``_test`` without the trace: whether the condition tree is true."""
    if not isinstance(node, Combinator):
        return bool(source.leaf(node)[0])
    if node.kind == "not":
        return not _holds(node.items[0], source)
    settles = node.kind == "any"  # the answer one item settles the whole on
    for item in node.items:
        if _holds(item, source) == settles:
            return settles
    return not settles


def _test(node: Node, facts: _Source, trace: RuleTrace) -> bool:
    if isinstance(node, Combinator):
        if node.kind == "not":
            return not _test(node.items[0], facts, trace)
        settles = node.kind == "any"  # as any() and all() would, without a generator
        for item in node.items:
            if bool(_test(item, facts, trace)) == settles:
                return settles
        return not settles
    result, actual = facts.leaf(node)
    trace.conditions.append(ConditionTrace(node.key, node.op, node.source, actual, result))
    return result


_leaf = check  # (result, actual) of one condition; kept under its old name
_Facts = FactsView  # the reference's view of the facts; kept under its old name
