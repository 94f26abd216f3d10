"""Evaluation: the stage table, first/every match, stops, procedures, priority, accounts,
parsers, the JSON summary and the explain text."""

from __future__ import annotations

import datetime as dt
import json
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from rules.evaluate import STAGES, Decision, evaluate
from rules.explain import explain
from rules.parsers import extract_fields
from rules.schema import RULE_TYPES, RuleSet, load_rules

ROOT = Path(__file__).resolve().parents[2]
STAGE_ORDER = [stage[0] for stage in STAGES]


def load(tmp_path: Path, text: str, name: str = "rules.yaml",
         accounts: set[str] | None = None) -> RuleSet:
    path = tmp_path / name
    path.write_text("version: 1\n" + textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return load_rules([path], accounts)


def trace_of(decision: Decision) -> list[tuple[str, str, bool]]:
    return [(t.type, t.rule, t.matched) for t in decision.trace]


class Procedures:
    """A fake custom-procedure runner: answers from a table and records every call."""

    def __init__(self, answers: dict[str, bool]):
        self.answers = answers
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, ref: str, facts: Mapping[str, Any]) -> bool:
        self.calls.append((ref, dict(facts)))
        return self.answers[ref]


FACTS: dict[str, Any] = {
    "sender.address": "ann@customer.example",
    "sender.domain": "customer.example",
    "subject": "Invoice 42 is wrong",
    "body": "Please refund the shipping costs.",
    "size": 1234,
    "received.date": dt.date(2024, 3, 15),
    "received.time": "14:30",
    "received.weekday": "fri",
    "to": ["support@desk.example"],
    "attachment.present": False,
    "thread.known": False,
    "classification": None,
}

# Written deliberately out of stage order: the stage table, not the file, decides.
EVERY_TYPE = """
rules:
  - name: route-billing
    type: routing
    when: {classification: billing}
    route: {group: billing}
  - name: docs-refund
    type: document-retrieval
    when: {body: {contains: refund}}
    documents: [refund-policy]
  - name: never-reply
    type: auto-reply
    when: {subject: {contains: password}}
    template: pw
  - name: never-redirect
    type: auto-redirect
    when: {subject: {contains: lawsuit}}
    to: {address: legal@example.com}
  - name: open-sr
    type: auto-process
    when: {classification: billing}
    service_request: create
  - name: ack
    type: auto-acknowledge
    template: ack-billing
  - name: never-delete
    type: auto-delete
    when: {subject: {starts_with: "out of office"}}
  - name: billing
    type: classification
    when: {subject: {contains: invoice}}
    classification: billing
  - name: never-reject
    type: reject
    when: {sender.domain: spam.example}
    message: go away
"""


# --- stage order ----------------------------------------------------------------------------

def test_stage_table_is_the_documented_order() -> None:
    assert list(RULE_TYPES) == STAGE_ORDER
    assert STAGE_ORDER == ["reject", "classification", "auto-delete", "auto-acknowledge",
                           "auto-process", "auto-redirect", "auto-reply", "document-retrieval",
                           "routing"]


def test_every_non_stopping_type_applies_in_stage_order(tmp_path: Path) -> None:
    decision = evaluate(load(tmp_path, EVERY_TYPE), FACTS)
    assert trace_of(decision) == [
        ("reject", "never-reject", False),
        ("classification", "billing", True),
        ("auto-delete", "never-delete", False),
        ("auto-acknowledge", "ack", True),
        ("auto-process", "open-sr", True),
        ("auto-redirect", "never-redirect", False),
        ("auto-reply", "never-reply", False),
        ("document-retrieval", "docs-refund", True),
        ("routing", "route-billing", True),
    ]
    assert decision.classification == "billing"
    assert decision.actions == [
        {"type": "auto-acknowledge", "rule": "ack", "template": "ack-billing"},
        {"type": "auto-process", "rule": "open-sr", "service_request": "create"},
    ]
    assert decision.documents == ["refund-policy"]
    assert decision.route == {"group": "billing"}
    assert (decision.state, decision.reject, decision.stopped_by) == ("queued", None, None)


def test_empty_ruleset_queues_the_message(tmp_path: Path) -> None:
    ruleset = load(tmp_path, "rules: []\n")
    decision = evaluate(ruleset, FACTS)
    assert (decision.state, decision.trace, decision.actions) == ("queued", [], [])
    assert decision.version == ruleset.version


# --- first match and every match ------------------------------------------------------------

@pytest.mark.parametrize(("rule_type", "body"), [
    ("classification", "classification: {name}"),
    ("auto-acknowledge", "template: {name}"),
    ("routing", "route: {{group: {name}}}"),
])
def test_first_match_types_stop_at_their_first_match(tmp_path: Path, rule_type: str,
                                                     body: str) -> None:
    rules = "rules:\n" + "".join(
        f"  - name: {name}\n    type: {rule_type}\n    when: {when}\n"
        f"    {body.format(name=name)}\n"
        for name, when in [("miss", "{size: 1}"), ("first", "{size: 1234}"),
                           ("second", "{size: 1234}")])
    decision = evaluate(load(tmp_path, rules), FACTS)
    assert trace_of(decision) == [(rule_type, "miss", False), (rule_type, "first", True)]
    applied = {"classification": decision.classification,
               "auto-acknowledge": [a.get("template") for a in decision.actions],
               "routing": decision.route}[rule_type]
    assert applied == {"classification": "first", "auto-acknowledge": ["first"],
                       "routing": {"group": "first"}}[rule_type]
    assert decision.stopped_by is None


def test_every_match_types_apply_every_matching_rule(tmp_path: Path) -> None:
    decision = evaluate(load(tmp_path, """
        rules:
          - name: sr-create
            type: auto-process
            service_request: create
          - name: sr-miss
            type: auto-process
            when: {size: 1}
            service_request: update
          - name: sr-update
            type: auto-process
            service_request: update
          - name: docs-a
            type: document-retrieval
            documents: [a, b]
          - name: docs-miss
            type: document-retrieval
            when: {size: 1}
            documents: [z]
          - name: docs-b
            type: document-retrieval
            documents: [b, c]
        """), FACTS)
    assert [(t, r, m) for t, r, m in trace_of(decision)] == [
        ("auto-process", "sr-create", True), ("auto-process", "sr-miss", False),
        ("auto-process", "sr-update", True), ("document-retrieval", "docs-a", True),
        ("document-retrieval", "docs-miss", False), ("document-retrieval", "docs-b", True),
    ]
    assert [a["rule"] for a in decision.actions] == ["sr-create", "sr-update"]
    assert decision.documents == ["a", "b", "c"]  # every match, de-duplicated, in order


# --- stopping types -------------------------------------------------------------------------

STOPPERS = {
    "reject": "message: no thanks",
    "auto-delete": "",
    "auto-redirect": "to: {account: sales}",
    "auto-reply": "template: closed-for-holidays",
}


@pytest.mark.parametrize(("rule_type", "state"), [
    ("reject", "queued"), ("auto-delete", "deleted"), ("auto-redirect", "redirected"),
    ("auto-reply", "auto_replied"),
])
def test_stopping_types_end_evaluation(tmp_path: Path, rule_type: str, state: str) -> None:
    stopper = (f"  - name: stopper\n    type: {rule_type}\n    when: {{size: 1234}}\n"
               f"    {STOPPERS[rule_type]}\n"
               f"  - name: stopper-two\n    type: {rule_type}\n    when: {{size: 1234}}\n"
               f"    {STOPPERS[rule_type]}\n")
    ruleset = load(tmp_path, EVERY_TYPE + stopper)
    decision = evaluate(ruleset, FACTS)
    stage = STAGE_ORDER.index(rule_type)
    assert decision.trace[-1].rule == "stopper" and decision.trace[-1].matched
    assert all(STAGE_ORDER.index(t.type) <= stage for t in decision.trace)
    assert "stopper-two" not in [t.rule for t in decision.trace]
    assert decision.stopped_by == "stopper"
    assert decision.state == state
    applied_later = [t for t in decision.trace if STAGE_ORDER.index(t.type) > stage]
    assert applied_later == []
    if rule_type == "reject":
        assert decision.reject == "no thanks"
        assert decision.classification is None  # reject runs before classification
        assert decision.actions == []
    else:
        assert decision.reject is None
        assert decision.classification == "billing"
        assert decision.actions[-1]["type"] == rule_type
        assert decision.actions[-1]["rule"] == "stopper"
        assert decision.route is None and decision.documents == []


def test_redirect_action_carries_its_target(tmp_path: Path) -> None:
    decision = evaluate(load(tmp_path, """
        rules:
          - name: legal
            type: auto-redirect
            to: {address: legal@example.com}
            mode: attach
        """), FACTS)
    assert decision.actions == [{"type": "auto-redirect", "rule": "legal",
                                 "address": "legal@example.com", "mode": "attach"}]


def test_a_non_matching_stopper_does_not_stop(tmp_path: Path) -> None:
    decision = evaluate(load(tmp_path, EVERY_TYPE), {**FACTS, "sender.domain": "x.example"})
    assert decision.stopped_by is None and decision.route == {"group": "billing"}


# --- custom procedures ----------------------------------------------------------------------

PROCEDURE_RULES = """
rules:
  - name: classify
    type: classification
    classification: orders
  - name: first-check
    type: auto-process
    procedure: checks.fraud:first
  - name: second-check
    type: auto-process
    procedure: checks.fraud:second
  - name: sr
    type: auto-process
    service_request: create
  - name: docs
    type: document-retrieval
    documents: [faq]
  - name: route
    type: routing
    route: {group: tier1}
"""


def test_procedure_returning_false_stops(tmp_path: Path) -> None:
    runner = Procedures({"checks.fraud:first": True, "checks.fraud:second": False})
    decision = evaluate(load(tmp_path, PROCEDURE_RULES), FACTS, procedures=runner)
    assert [ref for ref, _ in runner.calls] == ["checks.fraud:first", "checks.fraud:second"]
    assert runner.calls[0][1]["classification"] == "orders"  # sees earlier stages
    assert runner.calls[0][1]["subject"] == FACTS["subject"]
    assert [t.rule for t in decision.trace] == ["classify", "first-check", "second-check"]
    assert [t.note for t in decision.trace[1:]] == ["procedure said continue",
                                                    "procedure said stop"]
    assert decision.stopped_by == "second-check"
    assert [a["rule"] for a in decision.actions] == ["first-check", "second-check"]
    assert decision.route is None and decision.documents == []
    assert decision.state == "queued"


def test_procedure_returning_true_continues(tmp_path: Path) -> None:
    runner = Procedures({"checks.fraud:first": True, "checks.fraud:second": True})
    decision = evaluate(load(tmp_path, PROCEDURE_RULES), FACTS, procedures=runner)
    assert len(runner.calls) == 2
    assert [t.rule for t in decision.trace] == ["classify", "first-check", "second-check", "sr",
                                                "docs", "route"]
    assert decision.stopped_by is None
    assert [a["rule"] for a in decision.actions] == ["first-check", "second-check", "sr"]
    assert decision.actions[0]["procedure"] == "checks.fraud:first"
    assert decision.route == {"group": "tier1"} and decision.documents == ["faq"]


def test_procedure_is_not_called_when_its_rule_does_not_match(tmp_path: Path) -> None:
    runner = Procedures({})
    evaluate(load(tmp_path, """
        rules:
          - name: check
            type: auto-process
            when: {size: 1}
            procedure: checks.fraud:first
        """), FACTS, procedures=runner)
    assert runner.calls == []


def test_without_a_runner_procedure_rules_are_recorded_and_evaluation_continues(
        tmp_path: Path) -> None:
    decision = evaluate(load(tmp_path, PROCEDURE_RULES), FACTS)
    assert decision.stopped_by is None
    assert decision.route == {"group": "tier1"}


def test_evaluation_does_not_mutate_the_callers_facts(tmp_path: Path) -> None:
    facts = dict(FACTS)
    runner = Procedures({"checks.fraud:first": True, "checks.fraud:second": True})
    evaluate(load(tmp_path, PROCEDURE_RULES), facts, procedures=runner)
    assert facts == FACTS  # the classification fact was set on a view, not on our dict


# --- priority and file order ----------------------------------------------------------------

PRIORITY_RULES = """
rules:
  - name: b-default
    type: routing
    when: {subject: {contains: b}}
    route: {group: b}
  - name: a-fifty
    type: routing
    priority: 50
    when: {subject: {contains: a}}
    route: {group: a}
  - name: c-fifty
    type: routing
    priority: 50
    when: {subject: {contains: c}}
    route: {group: c}
  - name: d-first
    type: routing
    priority: -5
    when: {subject: {contains: d}}
    route: {group: d}
"""


@pytest.mark.parametrize(("subject", "winner", "considered"), [
    ("abcd", "d", ["d-first"]),
    ("abc", "a", ["d-first", "a-fifty"]),
    ("bc", "c", ["d-first", "a-fifty", "c-fifty"]),
    ("b", "b", ["d-first", "a-fifty", "c-fifty", "b-default"]),
    ("x", None, ["d-first", "a-fifty", "c-fifty", "b-default"]),
])
def test_priority_then_file_order(tmp_path: Path, subject: str, winner: str | None,
                                  considered: list[str]) -> None:
    decision = evaluate(load(tmp_path, PRIORITY_RULES), {"subject": subject})
    assert [t.rule for t in decision.trace] == considered
    assert decision.route == ({"group": winner} if winner else None)


def test_file_order_continues_across_files(tmp_path: Path) -> None:
    one = tmp_path / "one.yaml"
    two = tmp_path / "two.yaml"
    one.write_text("version: 1\nrules:\n"
                   "  - {name: one-a, type: document-retrieval, documents: [a]}\n"
                   "  - {name: one-b, type: document-retrieval, documents: [b]}\n")
    two.write_text("version: 1\nrules:\n"
                   "  - {name: two-c, type: document-retrieval, documents: [c]}\n"
                   "  - {name: two-z, type: document-retrieval, documents: [z], priority: 1}\n")
    decision = evaluate(load_rules([two, one]), {})
    assert decision.documents == ["z", "c", "a", "b"]
    decision = evaluate(load_rules([one, two]), {})
    assert decision.documents == ["z", "a", "b", "c"]


# --- accounts -------------------------------------------------------------------------------

ACCOUNT_RULES = """
rules:
  - name: sales-only
    type: classification
    accounts: [sales]
    classification: leads
  - name: support-or-sales
    type: classification
    accounts: [support, sales]
    classification: general
  - name: everyone
    type: routing
    route: {group: all}
"""


@pytest.mark.parametrize(("account", "classification", "considered"), [
    ("sales", "leads", ["sales-only", "everyone"]),
    ("support", "general", ["support-or-sales", "everyone"]),
    ("billing", None, ["everyone"]),
    (None, "leads", ["sales-only", "everyone"]),  # no account given: every rule is in play
])
def test_accounts_restriction(tmp_path: Path, account: str | None, classification: str | None,
                              considered: list[str]) -> None:
    ruleset = load(tmp_path, ACCOUNT_RULES, accounts={"support", "sales", "billing"})
    decision = evaluate(ruleset, FACTS, account=account)
    assert decision.classification == classification
    assert [t.rule for t in decision.trace] == considered
    assert decision.route == {"group": "all"}


# --- classification as a fact ---------------------------------------------------------------

def test_classification_is_visible_to_later_rules(tmp_path: Path) -> None:
    decision = evaluate(load(tmp_path, """
        rules:
          - name: orders
            type: classification
            when: {subject: {contains: invoice}}
            classification: Orders
          - name: ack
            type: auto-acknowledge
            when: {classification: {equals: orders}}
            template: ack-orders
          - name: docs
            type: document-retrieval
            when: {classification: {equals: Orders, case: sensitive}}
            documents: [order-faq]
          - name: to-orders
            type: routing
            when: {classification: {in: [orders, billing]}}
            route: {group: orders}
        """), {**FACTS, "classification": "billing"})
    assert decision.classification == "Orders"
    assert [t.matched for t in decision.trace] == [True, True, True, True]
    assert decision.trace[1].conditions[0].actual == "Orders"
    assert decision.route == {"group": "orders"} and decision.documents == ["order-faq"]


def test_without_a_classification_rule_the_callers_fact_is_used(tmp_path: Path) -> None:
    ruleset = load(tmp_path, """
        rules:
          - name: to-orders
            type: routing
            when: {classification: orders}
            route: {group: orders}
        """)
    assert evaluate(ruleset, {"classification": "orders"}).route == {"group": "orders"}
    assert evaluate(ruleset, {"classification": None}).route is None


# --- routing to the original agent ----------------------------------------------------------

ORIGINAL_AGENT = """
rules:
  - name: their-agent
    type: routing
    when: {thread.known: true}
    route: {original_agent: true, default: {group: tier1}}
  - name: fallback
    type: routing
    route: {group: fallback}
"""


@pytest.mark.parametrize(("facts", "route", "note"), [
    ({"thread.known": True, "tag.agent": "bob"}, {"agent": "bob"}, "original agent bob"),
    ({"thread.known": True}, {"group": "tier1"}, "no agent in tag: default"),
    ({"thread.known": True, "tag.agent": ""}, {"group": "tier1"}, "no agent in tag: default"),
    ({"thread.known": False, "tag.agent": "bob"}, {"group": "fallback"}, ""),
])
def test_routing_to_the_original_agent(tmp_path: Path, facts: dict[str, Any],
                                       route: dict[str, str], note: str) -> None:
    decision = evaluate(load(tmp_path, ORIGINAL_AGENT), facts)
    assert decision.route == route
    assert decision.trace[0].note == note


def test_original_agent_default_can_be_an_agent(tmp_path: Path) -> None:
    ruleset = load(tmp_path, """
        rules:
          - name: their-agent
            type: routing
            route: {original_agent: true, default: {agent: carol}}
        """)
    assert evaluate(ruleset, {}).route == {"agent": "carol"}


# --- disabled rules -------------------------------------------------------------------------

def test_disabled_rules_are_ignored(tmp_path: Path) -> None:
    ruleset = load(tmp_path, """
        rules:
          - name: old
            type: classification
            enabled: false
            classification: old
          - name: new
            type: classification
            enabled: true
            classification: new
          - name: old-reject
            type: reject
            enabled: false
            message: nope
        """)
    assert [r.name for r in ruleset.rules] == ["new"]
    decision = evaluate(ruleset, FACTS)
    assert decision.classification == "new" and decision.reject is None
    assert [t.rule for t in decision.trace] == ["new"]


# --- odd facts ------------------------------------------------------------------------------

@pytest.mark.parametrize(("when", "facts"), [
    ("{size: {less_than: 10}}", {"size": "big"}),
    ("{received.date: {before: 2024-01-01}}", {"received.date": "2023-01-01"}),
    ("{received.time: {after: '10:00'}}", {"received.time": 1100}),
    ("{attachment.present: true}", {"attachment.present": "yes"}),
])
def test_odd_fact_types_do_not_raise(tmp_path: Path, when: str, facts: dict[str, Any]) -> None:
    ruleset = load(tmp_path, f"rules:\n  - name: r\n    type: routing\n    when: {when}\n"
                             "    route: {group: g}\n")
    assert evaluate(ruleset, facts).route is None


# --- parsers --------------------------------------------------------------------------------

PARSERS = r"""
parsers:
  - name: order
    from: any
    regex: 'order\s*(?:no\.?|number|#)?\s*:?\s*(?P<value>\d{5,})'
  - name: ticket
    from: subject
    regex: 'SR-(\d+)'
  - name: code
    from: body
    regex: 'ERR\d{3}'
  - name: product
    from: body
    label: Product
  - name: order_no
    label: Order No.
"""


def fields(tmp_path: Path, subject: str, body: str) -> dict[str, str]:
    return extract_fields(load(tmp_path, PARSERS), subject, body)


def test_parser_regex_value_group(tmp_path: Path) -> None:
    assert fields(tmp_path, "", "your order number: 123456 is late")["order"] == "123456"


def test_parser_regex_group_one(tmp_path: Path) -> None:
    assert fields(tmp_path, "about SR-42 again", "")["ticket"] == "42"


def test_parser_regex_without_groups_takes_the_whole_match(tmp_path: Path) -> None:
    assert fields(tmp_path, "", "failed with ERR404 twice")["code"] == "ERR404"


def test_parser_label_lines(tmp_path: Path) -> None:
    body = "Hello,\n  PRODUCT :  Widget 3000  \nProduct: second\nOrder No.: A-7\nOrder Nox: B\n"
    found = fields(tmp_path, "", body)
    assert found["product"] == "Widget 3000"  # first line wins, case-insensitive label
    assert found["order_no"] == "A-7"  # the label is literal text, not a regex


def test_parser_label_needs_the_label_at_line_start(tmp_path: Path) -> None:
    assert "product" not in fields(tmp_path, "", "Our Product: Widget\n")


def test_parser_subject_wins_over_body(tmp_path: Path) -> None:
    assert fields(tmp_path, "order #11111", "order #22222")["order"] == "11111"
    assert fields(tmp_path, "hello", "order #22222")["order"] == "22222"


def test_parser_source_restricts_where_it_looks(tmp_path: Path) -> None:
    found = fields(tmp_path, "ERR500 Product: x", "see SR-7")
    assert "ticket" not in found  # from: subject
    assert "code" not in found and "product" not in found  # from: body


def test_parser_nothing_found(tmp_path: Path) -> None:
    assert fields(tmp_path, "hello", "nothing to see") == {}


def test_parser_with_a_catastrophic_regex_gives_up(tmp_path: Path) -> None:
    ruleset = load(tmp_path, "parsers:\n  - name: slow\n    regex: '(a|a)+b'\n")
    assert extract_fields(ruleset, "a" * 40 + "!", "") == {}


def test_parsed_fields_feed_field_conditions(tmp_path: Path) -> None:
    ruleset = load(tmp_path, PARSERS + """
rules:
  - name: orders
    type: classification
    when: {field.order: {matches: '^\\d{6}$'}}
    classification: orders
""")
    found = extract_fields(ruleset, "Re: order 654321", "")
    facts = {**FACTS, **{f"field.{k}": v for k, v in found.items()}}
    assert evaluate(ruleset, facts).classification == "orders"


def test_parser_optional_group_that_did_not_take_part(tmp_path: Path) -> None:
    ruleset = load(tmp_path, "parsers:\n  - name: ref\n    regex: 'ref(?:\\s*#(\\d+))?'\n")
    assert extract_fields(ruleset, "", "see ref") in ({}, {"ref": "ref"})


# --- JSON and explain -----------------------------------------------------------------------

def test_decision_to_json_is_json_serialisable(tmp_path: Path) -> None:
    ruleset = load(tmp_path, EVERY_TYPE + """
  - name: dated
    type: routing
    priority: 1
    when:
      all:
        - received.date: {before: 2000-01-01}
        - body: {contains: x}
    route: {group: old}
""")
    facts = {**FACTS, "body": "refund " + "x" * 200}
    decision = evaluate(ruleset, facts)
    summary = decision.to_json(full=True)
    again = json.loads(json.dumps(summary))
    assert again == summary
    assert again["classification"] == "billing"
    assert again["route"] == {"group": "billing"}
    assert again["version"] == ruleset.version
    stored = json.loads(json.dumps(decision.to_json()))  # what the intake keeps
    assert {k: v for k, v in stored.items() if k != "trace"} == {
        k: v for k, v in again.items() if k != "trace"}
    assert stored["trace"] == [t for t in again["trace"] if t["matched"]]
    assert "dated" not in [t["rule"] for t in stored["trace"]]
    assert stored["considered"] == {t: sum(r["type"] == t for r in again["trace"])
                                    for t in {r["type"] for r in again["trace"]}}
    dated = next(t for t in again["trace"] if t["rule"] == "dated")
    assert dated["conditions"] == [["received.date", "before", "datetime.date(2000, 1, 1)",
                                    "2024-03-15", False]]
    docs = next(t for t in again["trace"] if t["rule"] == "docs-refund")
    [[_, _, _, actual, _]] = docs["conditions"]
    assert len(actual) == 80 and actual.endswith("...")


def test_reject_to_json(tmp_path: Path) -> None:
    decision = evaluate(load(tmp_path, EVERY_TYPE), {**FACTS, "sender.domain": "spam.example"})
    summary = json.loads(json.dumps(decision.to_json()))
    assert (summary["reject"], summary["stopped_by"]) == ("go away", "never-reject")


EXPLAIN_RULES = """
rules:
  - name: blocked
    type: reject
    when:
      any:
        - sender.domain: {in: [spam.example, junk.example]}
        - header.X-Spam-Flag: {equals: "YES"}
    message: nope
  - name: billing
    type: classification
    when:
      all:
        - subject: {contains: invoice}
        - size: {less_than: 100000}
    classification: billing
  - name: ack
    type: auto-acknowledge
    when: {classification: billing}
    template: ack-billing
  - name: sr
    type: auto-process
    when: {received.weekday: {in: [thu, fri]}}
    service_request: create
  - name: refund-docs
    type: document-retrieval
    when: {body: {matches: '\\brefund\\b'}}
    documents: [refund-policy, shipping-costs]
  - name: vip
    type: routing
    when: {customer.level: gold}
    route: {agent: alice}
  - name: billing-team
    type: routing
    when: {classification: billing}
    route: {group: billing}
"""


def test_explain_lists_every_rule_condition_and_the_outcome(tmp_path: Path) -> None:
    ruleset = load(tmp_path, EXPLAIN_RULES)
    decision = evaluate(ruleset, FACTS)
    text = explain(decision)
    lines = text.splitlines()
    assert lines[0] == f"rule set {ruleset.version}"
    rule_lines = [line for line in lines if line[:5] in ("MATCH", "no   ")]
    assert [(line.split()[0], line.split()[1], line.split()[-1]) for line in rule_lines] == [
        ("no", "reject", "blocked"),
        ("MATCH", "classification", "billing"),
        ("MATCH", "auto-acknowledge", "ack"),
        ("MATCH", "auto-process", "sr"),
        ("MATCH", "document-retrieval", "refund-docs"),
        ("no", "routing", "vip"),
        ("MATCH", "routing", "billing-team"),
    ]
    assert ("        false sender.domain in ['spam.example', 'junk.example']  "
            "(actual: 'customer.example')") in lines
    assert "        false header.X-Spam-Flag equals 'YES'  (actual: None)" in lines
    assert "        true  subject contains 'invoice'  (actual: 'Invoice 42 is wrong')" in lines
    assert "        true  size less_than 100000  (actual: 1234)" in lines
    assert "        true  classification equals 'billing'  (actual: 'billing')" in lines
    assert "        true  received.weekday in ['thu', 'fri']  (actual: 'fri')" in lines
    assert ("        true  body matches \\brefund\\b  "
            "(actual: 'Please refund the shipping costs.')") in lines
    assert "        false customer.level equals 'gold'  (actual: None)" in lines
    for rule in decision.trace:  # every tested condition shows its actual value
        for cond in rule.conditions:
            assert any(cond.key in line and f"(actual: {cond.actual!r})" in line
                       for line in lines), cond
    assert lines[-6:] == [
        "classification: billing",
        "state:          queued",
        "action:         auto-acknowledge (ack) template=ack-billing",
        "action:         auto-process (sr) service_request=create",
        "route:          {'group': 'billing'}",
        "documents:      refund-policy, shipping-costs",
    ]
    assert lines[-7] == ""


def test_explain_a_stopped_message(tmp_path: Path) -> None:
    ruleset = load(tmp_path, EXPLAIN_RULES + """
  - name: holiday
    type: auto-reply
    template: closed
""")
    lines = explain(evaluate(ruleset, FACTS)).splitlines()
    assert "state:          auto_replied" in lines
    assert lines[-1] == "stopped by:     holiday"
    assert lines[-2] == "action:         auto-reply (holiday) template=closed"
    assert not any(line.startswith(("MATCH routing", "no    routing")) for line in lines)


def test_explain_a_reject(tmp_path: Path) -> None:
    text = explain(evaluate(load(tmp_path, EXPLAIN_RULES),
                            {**FACTS, "header.X-Spam-Flag": "yes"}))
    lines = text.splitlines()
    assert lines[1].startswith("MATCH reject") and lines[1].endswith("blocked")
    assert "        true  header.X-Spam-Flag equals 'YES'  (actual: 'yes')" in lines
    assert lines[-1] == "REJECT 550 5.7.1 nope"


def test_explain_the_routing_note(tmp_path: Path) -> None:
    text = explain(evaluate(load(tmp_path, ORIGINAL_AGENT),
                            {"thread.known": True, "tag.agent": "bob"}))
    assert "MATCH routing             their-agent  [original agent bob]" in text.splitlines()
    assert text.splitlines()[-1] == "route:          {'agent': 'bob'}"


# --- the annotated example, end to end ------------------------------------------------------

def example() -> RuleSet:
    return load_rules([ROOT / "rules.example.yaml"], {"support", "sales"})


def test_example_billing_mail_to_support() -> None:
    facts = {**FACTS, "recipient.account": ["support"], "charset": "utf-8"}
    decision = evaluate(example(), facts, account="support")
    assert decision.classification == "billing"
    assert [a["template"] for a in decision.actions] == ["ack-billing"]
    assert decision.documents == ["shipping-times", "tracking-howto"]  # body says shipping
    assert decision.route == {"group": "billing"}
    assert decision.state == "queued"


def test_example_reply_goes_back_to_its_agent() -> None:
    facts = {**FACTS, "subject": "thanks", "thread.known": True, "tag.agent": "dora"}
    decision = evaluate(example(), facts, account="support")
    assert decision.route == {"agent": "dora"}


def test_example_spam_is_rejected() -> None:
    decision = evaluate(example(), {**FACTS, "header.X-Spam-Flag": "YES"}, account="sales")
    assert decision.reject == "Mail from your domain is not accepted here"
    assert [t.rule for t in decision.trace] == ["blocked-senders"]


def test_example_out_of_office_is_deleted() -> None:
    facts = {**FACTS, "subject": "Automatic reply: away", "header.Auto-Submitted": "no"}
    decision = evaluate(example(), facts, account="support")
    assert (decision.state, decision.stopped_by) == ("deleted", "drop-autoresponders")
