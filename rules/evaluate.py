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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rules.conditions import OPERATORS
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

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe summary kept with the message (the console and explain read it)."""
        return {
            "version": self.version, "reject": self.reject,
            "classification": self.classification, "state": self.state,
            "actions": self.actions, "route": self.route, "documents": self.documents,
            "stopped_by": self.stopped_by, "fields": self.fields,
            "trace": [{"rule": t.rule, "type": t.type, "matched": t.matched, "note": t.note,
                       "conditions": [[c.key, c.op, c.expected, _short(c.actual), c.result]
                                      for c in t.conditions]} for t in self.trace],
        }


def _short(value: Any) -> Any:
    if isinstance(value, str) and len(value) > 80:
        return value[:77] + "..."
    return value if isinstance(value, str | int | float | bool | type(None) | list) else str(value)


def evaluate(ruleset: RuleSet, facts: Mapping[str, Any], account: str | None = None,
             procedures: ProcedureRunner | None = None) -> Decision:
    """Run every stage for ``account`` over ``facts``; never raises on odd facts."""
    decision = Decision(version=ruleset.version)
    view = _Facts(facts)
    for rule_type, matching, stops in STAGES:
        for rule in ruleset.for_type(rule_type, account):
            trace = RuleTrace(rule.name, rule.type, False)
            decision.trace.append(trace)
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


def _apply(rule: Rule, decision: Decision, facts: _Facts, trace: RuleTrace,
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
        decision.documents += [d for d in params.get("documents", [])
                               if d not in decision.documents]
    else:
        decision.state = STATE_AFTER.get(rule.type, decision.state)
        decision.actions.append({"type": rule.type, "rule": rule.name, **params})
    if "procedure" in params and procedures is not None:
        keep_going = procedures(params["procedure"], facts.mapping())
        trace.note = "procedure said continue" if keep_going else "procedure said stop"
        return not keep_going
    return False


def _route(params: dict[str, Any], facts: _Facts, trace: RuleTrace) -> dict[str, Any]:
    """A fixed destination, or the agent named in the reply's tag (else the default)."""
    if not params.get("original_agent"):
        return dict(params)
    agent = facts.get("tag.agent")
    trace.note = f"original agent {agent}" if agent else "no agent in tag: default"
    return {"agent": str(agent)} if agent else dict(params["default"])


def _test(node: Node, facts: _Facts, trace: RuleTrace) -> bool:
    if isinstance(node, Combinator):
        if node.kind == "all":
            return all(_test(n, facts, trace) for n in node.items)
        if node.kind == "any":
            return any(_test(n, facts, trace) for n in node.items)
        return not _test(node.items[0], facts, trace)
    result, actual = _leaf(node, facts)
    trace.conditions.append(ConditionTrace(node.key, node.op, node.source, actual, result))
    return result


def _leaf(cond: Condition, facts: _Facts) -> tuple[bool, Any]:
    actual = facts.get(cond.key)
    operator = OPERATORS[cond.op]
    if cond.op == "exists":
        present = actual not in (None, "", [])
        return present == cond.operand, actual
    if actual is None:
        return cond.op == "not_equals", actual
    value = facts.folded(cond.key) if operator.casefold and not cond.sensitive else actual
    if isinstance(value, list) and cond.op not in ("equals", "not_equals"):
        hits = [operator.test(v, cond.operand) for v in value if v is not None]
        return any(hits), actual
    if isinstance(value, list):  # equals on a list: any element equals
        found = any(v == cond.operand for v in value)
        return (found if cond.op == "equals" else not found), actual
    return operator.test(value, cond.operand), actual


class _Facts:
    """Read-through view over the caller's facts, with case-folded copies made once."""

    def __init__(self, facts: Mapping[str, Any]):
        self._facts = facts
        self._overrides: dict[str, Any] = {}
        self._folded: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        if key in self._overrides:
            return self._overrides[key]
        return self._facts.get(key)

    def set(self, key: str, value: Any) -> None:
        self._overrides[key] = value
        self._folded.pop(key, None)

    def folded(self, key: str) -> Any:
        if key not in self._folded:
            value = self.get(key)
            if isinstance(value, str):
                value = value.casefold()
            elif isinstance(value, list):
                value = [v.casefold() if isinstance(v, str) else v for v in value]
            self._folded[key] = value
        return self._folded[key]

    def mapping(self) -> dict[str, Any]:
        return {**dict(self._facts), **self._overrides}
