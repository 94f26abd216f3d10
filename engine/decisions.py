"""Running the rules inside the intake (pipeline step between threading and storing).

``RulesContext`` holds the loaded rule set, account names and the procedure runner; it
turns one parsed delivery into a ``Decision`` and the decision into message columns and
history rows. The rule evaluation itself is pure (``rules.evaluate``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, bindparam, select

from engine.facts import message_facts
from engine.mime import ParsedMessage, parse_message
from engine.procedures import ProcedureRunner
from engine.store.models import Message, TagValue
from engine.store.prepared import select_rows
from engine.tags import TagKeys, find_markers, unseal, verify
from engine.threads import cited_ids
from rules.evaluate import Decision, evaluate
from rules.parsers import extract_fields
from rules.schema import EMPTY, RuleSet

log = logging.getLogger(__name__)
_M = Message.__table__
_TAG_BLOB = select(TagValue.blob).where(TagValue.reference == bindparam("ref"))
_TAGGED = select(_M.c.message_id_header, _M.c.tag_reference).where(
    _M.c.message_id_header.in_(bindparam("ids", expanding=True)),
    _M.c.tag_reference.isnot(None))
_THREAD_STATE = (select(_M.c.state).where(_M.c.thread_id == bindparam("tid"))
                 .order_by(_M.c.id.desc()).limit(1))
_STORED = select(_M.c.raw, _M.c.size, _M.c.received_at, _M.c.account_id, _M.c.thread_id).where(
    _M.c.id == bindparam("pk"))
_EARLIER = (select(_M.c.state).where(_M.c.thread_id == bindparam("tid"),
                                     _M.c.id < bindparam("pk"))
            .order_by(_M.c.id.desc()).limit(1))


@dataclass
class RulesContext:
    """What the writer needs to decide: the rule set (swapped on reload) and helpers."""

    ruleset: RuleSet = EMPTY
    account_names: dict[int, str] = field(default_factory=dict)
    procedures: ProcedureRunner | None = None
    tag_keys: TagKeys | None = None
    counters: dict[str, int] = field(default_factory=lambda: {"forged_tags": 0})
    own_addresses: frozenset[str] = frozenset()  # never auto-answered (loops)
    bounce_local: str = "bounces"  # local part of our return paths (engine.bouncing)

    def read_tag(self, conn: Connection, parsed: ParsedMessage) -> dict[str, str]:
        """Values of the newest genuine reference tag in the subject, else of the tag our
        message it replies to carried (In-Reply-To, then References). Forged markers are
        counted and ignored, never trusted."""
        if self.tag_keys is None:
            return {}
        for marker in find_markers(parsed.subject):
            reference = verify(marker, self.tag_keys)
            values = self._open(conn, reference) if reference else None
            if values is not None:
                return values
            self.counters["forged_tags"] += 1
            log.warning("ignored a reference tag that does not verify: %s", marker)
        cited = cited_ids(parsed)
        rows = select_rows(conn, _TAGGED, {"ids": cited}, ["ids"]) if cited else []
        by_id = dict(rows)
        for message_id in cited:  # the one it answers directly first
            if message_id in by_id:
                return self._open(conn, by_id[message_id]) or {}
        return {}

    def _open(self, conn: Connection, reference: str) -> dict[str, str] | None:
        assert self.tag_keys is not None
        rows = select_rows(conn, _TAG_BLOB, {"ref": reference})
        return unseal(rows[0][0], reference, self.tag_keys) if rows else None

    def decide(self, conn: Connection, parsed: ParsedMessage, *, size: int, received_at: Any,
               accounts: list[int], thread: int | None, tags: dict[str, str]) -> Decision:
        """Evaluate the rules of the message's first account over its facts."""
        names = [self.account_names.get(a, str(a)) for a in accounts]
        fields = extract_fields(self.ruleset, parsed.subject, parsed.text)
        lazy: dict[str, Callable[[], Any]] = {"thread.state": lambda: _thread_state(conn, thread)}
        facts = message_facts(parsed, size=size, received_at=received_at, accounts=names,
                              thread_known=thread is not None, fields=fields, tags=tags,
                              lazy=lazy)
        decision = evaluate(self.ruleset, facts, names[0] if names else None, self.procedures)
        decision.fields = fields
        return decision


def redecide(context: RulesContext, conn: Connection, message_pk: int) -> Decision | None:
    """Decide a stored message again, with the facts as they were when it arrived: its
    tag, whether its thread was already known and that thread's state then (``rules
    backtest``, ``rules explain --stored``). None when there is no such message."""
    row = conn.execute(_STORED, {"pk": message_pk}).first()  # typed: dates as datetimes
    if row is None:
        return None
    raw, size, received_at, account_id, thread_id = row
    parsed = parse_message(raw, received_at)
    before = conn.execute(_EARLIER, {"tid": thread_id, "pk": message_pk}).all() \
        if thread_id is not None else []
    names = [context.account_names.get(account_id, str(account_id))]
    fields = extract_fields(context.ruleset, parsed.subject, parsed.text)
    facts = message_facts(parsed, size=size, received_at=received_at, accounts=names,
                          thread_known=bool(before), fields=fields,
                          tags=context.read_tag(conn, parsed),
                          lazy={"thread.state": lambda: before[0][0] if before else None})
    decision = evaluate(context.ruleset, facts, names[0], context.procedures)
    decision.fields = fields
    return decision


def custom_tag_values(ruleset: RuleSet, account: str, facts: Mapping[str, Any],
                      procedures: ProcedureRunner | None = None) -> dict[str, str]:
    """The account's custom tag values for a message we are about to send (Oracle's fixed,
    query and procedure tags); a source that yields nothing is left out."""
    values: dict[str, str] = {}
    for tag in ruleset.custom_tags:
        if tag.account != account:
            continue
        if tag.source == "value":
            value: str | None = tag.argument
        elif tag.source == "header":
            value = facts.get(f"header.{tag.argument}")
        elif tag.source == "field":
            value = facts.get(f"field.{tag.argument}")
        else:
            value = procedures.value(tag.argument, facts) if procedures else None
        if value is not None:
            values[tag.key] = str(value)
    return values


def _thread_state(conn: Connection, thread: int | None) -> str | None:
    if thread is None:
        return None
    rows = select_rows(conn, _THREAD_STATE, {"tid": thread})
    return rows[0][0] if rows else None


def decision_columns(decision: Decision | None, received_at: Any) -> dict[str, Any]:
    """Message columns that record a decision (state, classification, route, trace)."""
    if decision is None:
        return {"rule_version": None, "decision": None, "route_group": None,
                "route_agent": None}
    target = decision.route or {}
    return {
        "state": decision.state,
        "classification": decision.classification,
        "route_group": target.get("group"),
        "route_agent": target.get("agent"),
        "rule_version": decision.version,
        "decision": decision.to_json(),
        "deleted_at": received_at if decision.state == "deleted" else None,
    }


@dataclass
class RuleFiles:
    """The configured rule files, reloaded when they change (checked once per group).

    A change that does not validate keeps the running rule set and records the error
    (log, ``/healthz``); the next good save replaces it atomically between groups, so each
    message is evaluated by exactly one version (recorded on the message).
    """

    paths: list[str]
    account_names: dict[int, str]
    tag_keys: TagKeys | None = None
    own_addresses: frozenset[str] = frozenset()
    bounce_local: str = "bounces"
    error: str | None = None
    _context: RulesContext | None = None
    _stamp: tuple[Any, ...] = ()

    def context(self) -> RulesContext:
        if self._context is None:
            self._first_load()
        stamp = tuple(_mtime(p) for p in self.paths)
        if stamp != self._stamp:
            self._reload(stamp)
        assert self._context is not None
        return self._context

    def _first_load(self, patience: float = 5.0) -> None:
        """At start there is nothing to keep running: wait out a save in progress (the
        files were valid when ``serve`` checked them) before settling for no rules."""
        deadline = time.monotonic() + patience
        while True:
            self._reload(tuple(_mtime(p) for p in self.paths))
            if self._context is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if self._context is None:
            self._context = RulesContext(EMPTY, self.account_names, None, self.tag_keys,
                                         own_addresses=self.own_addresses,
                                         bounce_local=self.bounce_local)

    def _reload(self, stamp: tuple[Any, ...]) -> None:
        from pathlib import Path

        from rules.schema import RuleErrors, load_rules

        try:
            ruleset = load_rules([Path(p) for p in self.paths],
                                 set(self.account_names.values()))
            if tuple(_mtime(p) for p in self.paths) != stamp:
                raise _Changing  # saved while we read it: try again with the next group
            self._stamp = stamp
        except _Changing:
            return
        except RuleErrors as exc:
            self._stamp = stamp
            self.error = str(exc)
            log.error("rules not reloaded, keeping version %s:\n%s",
                      self._context.ruleset.version if self._context else "none", exc)
            return
        self.error = None
        runner = ProcedureRunner(ruleset.procedure_timeout_ms)
        counters = self._context.counters if self._context else {"forged_tags": 0}
        self._context = RulesContext(ruleset, self.account_names, runner, self.tag_keys,
                                     counters, self.own_addresses, self.bounce_local)
        log.info("rules version %s loaded (%d rules)", ruleset.version, len(ruleset.rules))


class _Changing(Exception):
    """A rule file changed while it was being read."""


def _mtime(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size
