"""Rule file validation: every problem located (file, line, column, key path) with a hint."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from rules.schema import RULE_TYPES, RuleError, RuleErrors, RuleSet, load_rules

ROOT = Path(__file__).resolve().parents[2]
ACCOUNTS = {"support", "sales"}


def write(tmp_path: Path, text: str, name: str = "rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def errors_of(tmp_path: Path, text: str) -> list[RuleError]:
    path = write(tmp_path, text)
    with pytest.raises(RuleErrors) as info:
        load_rules([path], ACCOUNTS)
    assert info.value.errors, "RuleErrors without errors"
    for error in info.value.errors:
        assert error.where.file == str(path)
    return info.value.errors


def only_error(tmp_path: Path, text: str) -> RuleError:
    errors = errors_of(tmp_path, text)
    assert len(errors) == 1, [str(e) for e in errors]
    return errors[0]


def located(error: RuleError) -> tuple[int, int, str]:
    return error.where.line, error.where.column, error.key


RULE = """
version: 1
rules:
  - name: probe
    type: classification
    classification: x
    when:
      {}
"""


def rule_with_when(condition: str) -> str:
    return RULE.format(condition)


# --- file-level problems --------------------------------------------------------------------

def test_invalid_yaml_syntax(tmp_path: Path) -> None:
    error = only_error(tmp_path, """
        version: 1
        rules:
          - name: a
           type: classification
        """)
    assert (error.where.line, error.where.column) == (4, 4)
    assert error.key == ""
    assert error.message.startswith("invalid YAML: ")
    assert "expected <block end>" in error.message


def test_unclosed_flow_sequence(tmp_path: Path) -> None:
    error = only_error(tmp_path, """
        version: 1
        rules:
          - name: a
            type: [classification
        """)
    assert error.message.startswith("invalid YAML: ")
    assert "']'" in error.message
    assert error.where.line >= 4


@pytest.mark.parametrize("text", ["- version: 1\n- rules: []\n", "just text\n", "", "42\n"])
def test_top_level_not_a_mapping(tmp_path: Path, text: str) -> None:
    error = only_error(tmp_path, text)
    assert located(error) == (1, 1, "")
    assert "expected a mapping" in error.message and "'version'" in error.message


def test_missing_version(tmp_path: Path) -> None:
    error = only_error(tmp_path, """
        rules:
          - name: a
            type: classification
            classification: x
        """)
    assert located(error) == (1, 1, "version")
    assert error.message == "required key is missing"
    assert error.hint == "add 'version: 1'"


@pytest.mark.parametrize("version", ["2", "'1'", "0", "[1]"])
def test_unsupported_version(tmp_path: Path, version: str) -> None:
    errors = errors_of(tmp_path, f"version: {version}\nrules: []\n")
    error = errors[-1]
    assert located(error) == (1, 10, "version")
    assert "version" in error.message
    assert "version 1" in error.hint


def test_unknown_top_level_key_with_hint(tmp_path: Path) -> None:
    error = only_error(tmp_path, """
        version: 1
        rule:
          - name: a
        """)
    assert located(error) == (2, 1, "rule")
    assert error.message == "unknown key"
    assert error.hint == "did you mean 'rules'?"


# --- rule-level problems --------------------------------------------------------------------

def test_rule_without_type(tmp_path: Path) -> None:
    error = only_error(tmp_path, """
        version: 1
        rules:
          - name: a
            classification: x
        """)
    assert located(error) == (3, 5, "rules[0].type")
    assert error.message == "required key is missing"
    assert all(t in error.hint for t in RULE_TYPES)


def test_unknown_rule_type_did_you_mean(tmp_path: Path) -> None:
    error = only_error(tmp_path, """
        version: 1
        rules:
          - name: a
            type: clasification
            classification: x
        """)
    assert located(error) == (4, 11, "rules[0].type")
    assert "'clasification'" in error.message
    assert error.hint == "did you mean 'classification'?"


def test_unknown_key_in_a_rule_with_hint(tmp_path: Path) -> None:
    error = only_error(tmp_path, """
        version: 1
        rules:
          - name: a
            type: classification
            classification: x
            priorty: 5
        """)
    assert located(error) == (6, 5, "rules[0].priorty")
    assert "classification rule" in error.message
    assert error.hint == "did you mean 'priority'?"


def test_key_of_another_rule_type_is_unknown(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, """
        version: 1
        rules:
          - name: a
            type: classification
            classification: x
            template: ack
        """)
    assert [located(e) for e in errors] == [(6, 5, "rules[0].template")]
    assert errors[0].message == "unknown key for a classification rule"


def test_unknown_condition_key_with_hint(tmp_path: Path) -> None:
    error = only_error(tmp_path, rule_with_when("subjet: {contains: x}"))
    assert located(error) == (7, 7, "rules[0].when.subjet")
    assert error.message == "unknown condition key 'subjet'"
    assert error.hint == "did you mean 'subject'?"


def test_unknown_condition_key_deep_inside_combinators(tmp_path: Path) -> None:
    error = only_error(tmp_path, rule_with_when(
        "any: [{subject: x}, {not: {all: [{size: 1}, {sender.adress: a}]}}]"))
    assert error.key == "rules[0].when.any[1].not.all[1].sender.adress"
    assert error.hint == "did you mean 'sender.address'?"
    assert (error.where.line, error.where.column) == (7, 52)


def test_unknown_operator_with_hint(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, rule_with_when("subject: {contain: x}"))
    error = errors[0]
    assert located(error) == (7, 17, "rules[0].when.subject.contain")
    assert error.hint == "did you mean 'contains'?"


def test_unknown_operator_is_one_error_that_says_operator(tmp_path: Path) -> None:
    error = only_error(tmp_path, rule_with_when("subject: {contain: x}"))
    assert "operator" in error.message


@pytest.mark.parametrize(("condition", "key", "op", "kind"), [
    ("size: {contains: 5}", "size", "contains", "number"),
    ("subject: {before: '2024-01-01'}", "subject", "before", "text"),
    ("attachment.present: {greater_than: 0}", "attachment.present", "greater_than", "bool"),
    ("received.weekday: {less_than: fri}", "received.weekday", "less_than", "weekday"),
    ("to: {less_than: b}", "to", "less_than", "list"),
    ("received.date: {matches: '2024'}", "received.date", "matches", "date"),
])
def test_operator_not_applicable_to_the_keys_kind(tmp_path: Path, condition: str, key: str,
                                                  op: str, kind: str) -> None:
    error = only_error(tmp_path, rule_with_when(condition))
    assert error.key == f"rules[0].when.{key}.{op}"
    assert error.where.line == 7
    assert error.message == f"{op} does not apply to {key} ({kind})"


@pytest.mark.parametrize(("condition", "column", "path", "message"), [
    ("subject: {in: foo}", 21, "subject.in", "in takes a non-empty list"),
    ("subject: {in: []}", 21, "subject.in", "in takes a non-empty list"),
    ("received.weekday: {equals: funday}", 34, "received.weekday.equals",
     "expected one of mon, tue, wed, thu, fri, sat, sun, got 'funday'"),
    ("received.weekday: {in: [mon, someday]}", 30, "received.weekday.in", "got 'someday'"),
    ("received.date: {before: 'next week'}", 31, "received.date.before", "next week"),
    ("received.date: {after: '2024-13-01'}", 30, "received.date.after", "month"),
    ("received.time: {after: '25:00'}", 30, "received.time.after", "hour"),
    ("size: {less_than: '1000'}", 25, "size.less_than", "expected a number, got '1000'"),
    ("size: {less_than: true}", 25, "size.less_than", "expected a number"),
    ("attachment.present: {equals: maybe}", 36, "attachment.present.equals",
     "expected true or false, got 'maybe'"),
    ("intent: {exists: yes please}", 24, "intent.exists", "exists takes true or false"),
    ("subject: {equals: [a, b]}", 25, "subject.equals", "expected a single value"),
])
def test_bad_operand(tmp_path: Path, condition: str, column: int, path: str,
                     message: str) -> None:
    error = only_error(tmp_path, rule_with_when(condition))
    assert located(error) == (7, column, f"rules[0].when.{path}")
    assert message in error.message


def test_unquoted_impossible_date_is_a_rule_error(tmp_path: Path) -> None:
    error = only_error(tmp_path, rule_with_when("received.date: {after: 2024-13-01}"))
    assert error.key == "rules[0].when.received.date.after"


def test_null_operand_is_an_error(tmp_path: Path) -> None:
    error = only_error(tmp_path, rule_with_when("subject: {equals: }"))
    assert error.key == "rules[0].when.subject.equals"


def test_invalid_regex(tmp_path: Path) -> None:
    error = only_error(tmp_path, rule_with_when("subject: {matches: '(unclosed'}"))
    assert located(error) == (7, 26, "rules[0].when.subject.matches")
    assert error.message.startswith("invalid regular expression: ")
    assert "missing )" in error.message


def test_invalid_regex_in_a_parser(tmp_path: Path) -> None:
    error = only_error(tmp_path, """
        version: 1
        parsers:
          - name: order
            regex: 'order (?P<value>\\d+'
        """)
    assert located(error) == (4, 12, "parsers[0].regex")
    assert error.message.startswith("invalid regular expression: ")


def test_bad_case_value(tmp_path: Path) -> None:
    error = only_error(tmp_path, rule_with_when("subject: {contains: a, case: upper}"))
    assert located(error) == (7, 36, "rules[0].when.subject.case")
    assert "sensitive or insensitive" in error.message


def test_unknown_account_with_hint(tmp_path: Path) -> None:
    error = only_error(tmp_path, """
        version: 1
        rules:
          - name: a
            type: classification
            classification: x
            accounts: [support, sals]
        """)
    assert located(error) == (6, 25, "rules[0].accounts")
    assert error.message == "unknown account 'sals'"
    assert error.hint == "did you mean 'sales'?"


def test_unknown_account_in_redirect_and_custom_tags(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, """
        version: 1
        custom_tags:
          suport:
            - key: tier
              from: {value: gold}
        rules:
          - name: a
            type: auto-redirect
            to: {account: sale}
        """)
    assert [(e.key, e.hint) for e in errors] == [
        ("custom_tags.suport", "did you mean 'support'?"),
        ("rules[0].to.account", "did you mean 'sales'?"),
    ]
    assert [e.where.line for e in errors] == [4, 9]


def test_accounts_are_not_checked_without_a_list(tmp_path: Path) -> None:
    path = write(tmp_path, """
        version: 1
        rules:
          - name: a
            type: classification
            classification: x
            accounts: [anything]
        """)
    assert load_rules([path]).rules[0].accounts == ("anything",)


@pytest.mark.parametrize(("rule_type", "key"), [
    ("classification", "classification"),
    ("reject", "message"),
    ("auto-acknowledge", "template"),
    ("auto-reply", "template"),
    ("document-retrieval", "documents"),
    ("routing", "route"),
])
def test_missing_type_specific_key(tmp_path: Path, rule_type: str, key: str) -> None:
    error = only_error(tmp_path, f"""
        version: 1
        rules:
          - name: a
            type: {rule_type}
        """)
    assert located(error) == (3, 5, f"rules[0].{key}")
    assert error.message == "required key is missing"


def test_two_operators_in_one_condition(tmp_path: Path) -> None:
    error = only_error(tmp_path, rule_with_when("subject: {contains: a, starts_with: b}"))
    assert located(error) == (7, 16, "rules[0].when.subject")
    assert error.message == "give exactly one operator"
    assert "contains" in error.hint and "starts_with" in error.hint


def test_condition_with_only_case_and_no_operator(tmp_path: Path) -> None:
    error = only_error(tmp_path, rule_with_when("subject: {case: sensitive}"))
    assert located(error) == (7, 16, "rules[0].when.subject")
    assert error.message == "give exactly one operator"


@pytest.mark.parametrize("word", ["all", "any"])
def test_all_or_any_given_a_mapping(tmp_path: Path, word: str) -> None:
    error = only_error(tmp_path, rule_with_when(f"{word}: {{subject: x}}"))
    assert located(error) == (7, 7 + len(word) + 2, f"rules[0].when.{word}")
    assert error.message == f"{word} takes a list of conditions"


def test_condition_that_is_not_a_mapping(tmp_path: Path) -> None:
    error = only_error(tmp_path, rule_with_when("just words"))
    assert located(error) == (7, 7, "rules[0].when")
    assert "all/any/not" in error.message


def test_condition_with_two_keys(tmp_path: Path) -> None:
    error = only_error(tmp_path, rule_with_when("{subject: a, size: 1}"))
    assert located(error) == (7, 7, "rules[0].when")


def test_duplicate_rule_names(tmp_path: Path) -> None:
    error = only_error(tmp_path, """
        version: 1
        rules:
          - name: same
            type: classification
            classification: x
          - name: same
            type: routing
            route: {group: g}
        """)
    assert located(error) == (6, 11, "rules[1].name")
    assert error.message == "duplicate rule name 'same'"


def test_duplicate_rule_names_across_files(tmp_path: Path) -> None:
    rule = "version: 1\nrules:\n  - name: same\n    type: classification\n    classification: x\n"
    first, second = write(tmp_path, rule, "a.yaml"), write(tmp_path, rule, "b.yaml")
    with pytest.raises(RuleErrors) as info:
        load_rules([first, second])
    [error] = info.value.errors
    assert (error.where.file, error.where.line, error.key) == (str(second), 3, "rules[0].name")


@pytest.mark.parametrize("ref", ["'not a ref'", "module_only", "':func'", "'pkg.mod:'",
                                 "'pkg..mod:f'", "'pkg.mod:f-g'"])
def test_bad_procedure_reference(tmp_path: Path, ref: str) -> None:
    error = only_error(tmp_path, f"""
        version: 1
        rules:
          - name: a
            type: auto-process
            procedure: {ref}
        """)
    assert located(error) == (5, 16, "rules[0].procedure")
    assert error.message.startswith("expected module:function, got ")


def test_bad_procedure_reference_in_a_custom_tag(tmp_path: Path) -> None:
    error = only_error(tmp_path, """
        version: 1
        custom_tags:
          support:
            - key: vip
              from: {procedure: "engine.examples is_vip"}
        """)
    assert error.key == "custom_tags.support[0].from.procedure"
    assert error.where.line == 5


def test_auto_process_with_service_request_and_procedure(tmp_path: Path) -> None:
    error = only_error(tmp_path, """
        version: 1
        rules:
          - name: a
            type: auto-process
            service_request: create
            procedure: pkg.mod:func
        """)
    assert located(error) == (3, 5, "rules[0]")
    assert error.message == "give exactly one of 'service_request' or 'procedure'"


def test_auto_process_with_neither(tmp_path: Path) -> None:
    error = only_error(tmp_path, """
        version: 1
        rules:
          - name: a
            type: auto-process
        """)
    assert located(error) == (3, 5, "rules[0]")


def test_auto_process_unknown_service_request_action(tmp_path: Path) -> None:
    error = only_error(tmp_path, """
        version: 1
        rules:
          - name: a
            type: auto-process
            service_request: crate
        """)
    assert located(error) == (5, 22, "rules[0].service_request")
    assert error.hint == "expected create or update"


def test_routing_original_agent_without_default(tmp_path: Path) -> None:
    error = only_error(tmp_path, """
        version: 1
        rules:
          - name: a
            type: routing
            route: {original_agent: true}
        """)
    assert located(error) == (5, 12, "rules[0].route.default")
    assert error.message == "original_agent needs a default destination"


@pytest.mark.parametrize(("route", "key"), [
    ("{group: a, agent: b}", "rules[0].route"),
    ("{}", "rules[0].route"),
    ("{team: a}", "rules[0].route.team"),
    ("{original_agent: true, default: {original_agent: true}}",
     "rules[0].route.default.original_agent"),
])
def test_bad_route(tmp_path: Path, route: str, key: str) -> None:
    errors = errors_of(tmp_path, f"""
        version: 1
        rules:
          - name: a
            type: routing
            route: {route}
        """)
    assert errors[0].key == key
    assert errors[0].where.line == 5


@pytest.mark.parametrize(("to", "key", "text"), [
    ("{address: legal.example.com}", "rules[0].to.address", "not an email address"),
    ("{account: sales, address: a@b.example}", "rules[0].to", "exactly one"),
])
def test_bad_redirect_target(tmp_path: Path, to: str, key: str, text: str) -> None:
    error = only_error(tmp_path, f"""
        version: 1
        rules:
          - name: a
            type: auto-redirect
            to: {to}
        """)
    assert error.key == key and text in error.message


def test_bad_priority(tmp_path: Path) -> None:
    error = only_error(tmp_path, """
        version: 1
        rules:
          - name: a
            type: classification
            classification: x
            priority: high
        """)
    assert located(error) == (6, 15, "rules[0].priority")
    assert "whole number" in error.message


def test_enabled_must_be_a_boolean(tmp_path: Path) -> None:
    error = only_error(tmp_path, """
        version: 1
        rules:
          - name: a
            type: classification
            classification: x
            enabled: maybe
        """)
    assert error.key == "rules[0].enabled"


def test_parser_needs_exactly_one_of_regex_or_label(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, """
        version: 1
        parsers:
          - name: a
            from: header
            regex: 'x'
            label: X
        """)
    assert [located(e) for e in errors] == [(4, 11, "parsers[0].from"), (3, 5, "parsers[0]")]
    assert errors[0].hint == "expected subject, body or any"


# --- collecting, files and formatting -------------------------------------------------------

def test_all_errors_of_one_file_are_reported_together(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, """
        version: 1
        procedure_timout_ms: 100
        rules:
          - name: a
            type: clasification
          - name: b
            type: classification
            classification: x
            when: {subjet: hello}
        """)
    assert [located(e) for e in errors] == [
        (2, 1, "procedure_timout_ms"),
        (5, 11, "rules[0].type"),
        (9, 12, "rules[1].when.subjet"),
    ]


def test_errors_across_two_files_name_the_right_file(tmp_path: Path) -> None:
    good_then_bad = write(tmp_path, """
        version: 1
        rules:
          - name: a
            type: classification
            classification: x
            accounts: [suport]
        """, "first.yaml")
    bad = write(tmp_path, """
        version: 3
        rules:
          - name: b
            type: routing
            route: {group: g}
            when: {size: {contains: 1}}
        """, "second.yaml")
    with pytest.raises(RuleErrors) as info:
        load_rules([good_then_bad, bad], ACCOUNTS)
    assert [(e.where.file, e.where.line, e.key) for e in info.value.errors] == [
        (str(good_then_bad), 6, "rules[0].accounts"),
        (str(bad), 1, "version"),
        (str(bad), 6, "rules[0].when.size.contains"),
    ]


def test_unreadable_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(RuleErrors) as info:
        load_rules([missing])
    [error] = info.value.errors
    assert (error.where.file, error.where.line) == (str(missing), 1)
    assert "cannot read" in error.message


def test_str_of_an_error_has_the_documented_shape(tmp_path: Path) -> None:
    error = only_error(tmp_path, rule_with_when("subjet: {contains: x}"))
    path = str(tmp_path / "rules.yaml")
    assert str(error) == (f"{path}:7:7: rules[0].when.subjet: unknown condition key 'subjet' "
                          "(did you mean 'subject'?)")
    shape = re.compile(r"^(?P<file>.+):(?P<line>\d+):(?P<col>\d+): (?P<key>[\w.\[\]-]+): "
                       r"(?P<message>.+) \((?P<hint>.+)\)$")
    assert shape.match(str(error))


def test_str_without_key_or_hint(tmp_path: Path) -> None:
    error = only_error(tmp_path, "- a\n")
    assert str(error) == f"{tmp_path / 'rules.yaml'}:1:1: expected a mapping with 'version' " \
                         "and 'rules'"


def test_rule_errors_message_lists_every_error(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\nrule: []\nparser: []\n")
    with pytest.raises(RuleErrors) as info:
        load_rules([path])
    assert str(info.value).splitlines() == [str(e) for e in info.value.errors]
    assert len(info.value.errors) == 2


def test_the_annotated_example_loads_cleanly() -> None:
    ruleset = load_rules([ROOT / "rules.example.yaml"], ACCOUNTS)
    assert isinstance(ruleset, RuleSet)
    names = [r.name for r in ruleset.rules]
    assert "retired-rule" not in names  # enabled: false
    assert len(names) == len(set(names)) == 17
    assert {r.type for r in ruleset.rules} == set(RULE_TYPES)
    assert [p.name for p in ruleset.parsers] == ["order_number", "product"]
    assert len(ruleset.custom_tags) == 4
    assert ruleset.procedure_timeout_ms == 500
    assert re.fullmatch(r"[0-9a-f]{12}", ruleset.version)


def test_version_is_a_content_hash(tmp_path: Path) -> None:
    one = write(tmp_path, "version: 1\nrules: []\n", "one.yaml")
    same = write(tmp_path, "version: 1\nrules: []\n", "same.yaml")
    other = write(tmp_path, "version: 1\nrules: []  # changed\n", "other.yaml")
    assert load_rules([one]).version == load_rules([same]).version
    assert load_rules([one]).version != load_rules([other]).version
