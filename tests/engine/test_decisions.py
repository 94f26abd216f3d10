"""Custom tag values and procedures: what replies will carry in their reference tag."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from engine.decisions import custom_tag_values
from engine.facts import message_facts
from engine.mime import parse_message
from engine.procedures import ProcedureRunner
from rules.parsers import extract_fields
from rules.schema import load_rules

RAW = (b"From: Big <ceo@bigcustomer.example>\r\nTo: support@example.test\r\n"
       b"Subject: Order 123456 is late\r\nX-Customer-Tier: gold\r\n\r\nhello\r\n")


def facts_for(ruleset):
    parsed = parse_message(RAW, datetime.now(UTC))
    fields = extract_fields(ruleset, parsed.subject, parsed.text)
    return message_facts(parsed, size=len(RAW), received_at=datetime.now(UTC),
                         accounts=["support"], fields=fields)


def test_example_custom_tags_from_value_header_field_and_procedure() -> None:
    ruleset = load_rules([Path(__file__).resolve().parents[2] / "rules.example.yaml"])
    values = custom_tag_values(ruleset, "support", facts_for(ruleset), ProcedureRunner())
    assert values == {"tier": "gold", "region": "EU", "order": "123456", "vip": "yes"}
    assert custom_tag_values(ruleset, "sales", facts_for(ruleset), ProcedureRunner()) == {}


def slow(facts):  # a procedure that overruns its time limit
    import time

    time.sleep(1)
    return False


def broken(facts):
    raise RuntimeError("admin bug")


def test_failing_or_slow_procedures_continue() -> None:
    runner = ProcedureRunner(timeout_ms=50)
    assert runner(f"{__name__}:slow", {}) is True
    assert runner(f"{__name__}:broken", {}) is True
    assert runner("no.such.module:func", {}) is True
    assert runner.value(f"{__name__}:broken", {}) is None
    assert runner.failures == 4
    assert runner("engine.examples:quarantine_check", {"attachment.name": ["a.exe"]}) is False
