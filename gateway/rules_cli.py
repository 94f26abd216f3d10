"""``postdesk rules check|explain|stats``: tooling for rule authors."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import click
from sqlalchemy import select

from engine.config import ConfigError, Settings, load_settings, tag_keys
from engine.decisions import RulesContext, redecide
from engine.facts import message_facts
from engine.mime import parse_message
from engine.procedures import ProcedureRunner
from engine.store import database
from engine.store.models import Account, Message, RuleStat
from rules.evaluate import Decision, evaluate
from rules.explain import explain
from rules.parsers import extract_fields
from rules.schema import RuleErrors, RuleSet, load_rules


@click.group("rules")
def rules() -> None:
    """Check, explain and measure the rules."""


def _settings(ctx: click.Context) -> Settings | None:
    """The instance configuration when there is one (for account names and rule paths)."""
    try:
        return load_settings(ctx.find_root().obj["config"])
    except ConfigError:
        return None


def _load(files: tuple[str, ...], settings: Settings | None) -> RuleSet:
    paths = [Path(f) for f in files] or (settings.rules if settings else [])
    if not paths:
        raise click.ClickException("no rule files given and none configured")
    return load_or_exit(paths, settings, exit_code=1)


def load_or_exit(paths: list[Path], settings: Settings | None, exit_code: int) -> RuleSet:
    """Load rule files or print every located problem and exit with ``exit_code``."""
    accounts = {a.name for a in settings.accounts} if settings else None
    try:
        return load_rules(paths, accounts)
    except RuleErrors as exc:
        for error in exc.errors:
            click.echo(str(error), err=True)
        click.echo(f"postdesk: {len(exc.errors)} problem(s) in the rules", err=True)
        sys.exit(exit_code)


@rules.command("check")
@click.argument("files", nargs=-1)
@click.pass_context
def check(ctx: click.Context, files: tuple[str, ...]) -> None:
    """Validate rule FILES (default: the configured ones); exit 1 listing every problem."""
    ruleset = _load(files, _settings(ctx))
    click.echo(f"postdesk: ok, {len(ruleset.rules)} rules, version {ruleset.version}")


@rules.command("explain")
@click.argument("message", type=click.Path(exists=True, dir_okay=False), required=False)
@click.option("--stored", type=int, help="Explain the stored message with this id instead, "
              "with its tag and thread as when it arrived.")
@click.option("--account", help="Account whose rules apply (default: all rules).")
@click.option("--rules-file", "files", multiple=True, help="Rule file(s) to use instead.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def explain_cmd(ctx: click.Context, message: str | None, stored: int | None,
                account: str | None, files: tuple[str, ...], as_json: bool) -> None:
    """Show every rule and condition the MESSAGE (.eml) meets, and the final decision."""
    settings = _settings(ctx)
    ruleset = _load(files, settings)
    runner = ProcedureRunner(ruleset.procedure_timeout_ms)
    if (message is None) == (stored is None):
        raise click.UsageError("give a MESSAGE file or --stored ID")
    if stored is not None:
        decision = _stored_decisions(settings, ruleset, runner, [stored])[0][1]
        if decision is None:
            raise click.ClickException(f"no stored message {stored}")
    else:
        decision = _eml_decision(ruleset, runner, Path(str(message)).read_bytes(), account,
                                 datetime.now(UTC))
    if as_json:
        click.echo(json.dumps(decision.to_json(full=True), indent=2, default=str))
    else:
        click.echo(explain(decision))


def _stored_decisions(settings: Settings | None, ruleset: RuleSet, runner: ProcedureRunner,
                      pks: list[int]) -> list[tuple[int, Decision | None]]:
    """``ruleset``'s decision for stored messages, facts as when each arrived."""
    if settings is None:
        raise click.ClickException("no valid configuration (needed to read stored messages)")
    engine = database.make_engine(settings.database_url)
    with engine.connect() as conn:
        names = dict(conn.execute(select(Account.id, Account.name)).all())
        context = RulesContext(ruleset, names, runner, tag_keys(settings))
        return [(pk, redecide(context, conn, pk)) for pk in pks]


@rules.command("stats")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def stats(ctx: click.Context, as_json: bool) -> None:
    """How often each rule matched, and when it last did."""
    settings = _settings(ctx)
    if settings is None:
        raise click.ClickException("no valid configuration")
    engine = database.make_engine(settings.database_url)
    with engine.connect() as conn:
        rows = conn.execute(select(RuleStat).order_by(RuleStat.hits.desc())).all()
    items = [{"rule": r.rule, "hits": r.hits,
              "last_matched_at": r.last_matched_at.isoformat() if r.last_matched_at else None}
             for r in rows]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    for item in items:
        click.echo(f"{item['hits']:>8}  {item['last_matched_at'] or '-':<32}  {item['rule']}")


@rules.command("backtest")
@click.argument("files", nargs=-1, required=True)
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d"]), help="Stored messages "
              "received on or after this day (default: all).")
@click.option("--eml-dir", type=click.Path(exists=True, file_okay=False),
              help="Evaluate the .eml files of a folder instead of stored messages.")
@click.option("--account", help="Account whose rules apply to .eml files.")
@click.option("--limit", default=10000, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def backtest(ctx: click.Context, files: tuple[str, ...], since: datetime | None,
             eml_dir: str | None, account: str | None, limit: int, as_json: bool) -> None:
    """Run rule FILES over past mail without acting; print what would change."""
    settings = _settings(ctx)
    ruleset = _load(files, settings)
    runner = ProcedureRunner(ruleset.procedure_timeout_ms)
    if eml_dir:
        now = datetime.now(UTC)
        files_ = sorted(Path(eml_dir).glob("*.eml"))[:limit]
        after = [(p.name, _eml_decision(ruleset, runner, p.read_bytes(), account, now))
                 for p in files_]
        before: dict[str, dict | None] = {}
    else:
        stored = _stored_rows(settings, since, limit)
        before = {str(pk): decision for pk, decision in stored}
        after = [(str(pk), d) for pk, d in _stored_decisions(
            settings, ruleset, runner, [pk for pk, _ in stored])]
    changes = [change for name, decision in after
               if (change := _compare(name, before.get(name), decision)) is not None]
    if as_json:
        click.echo(json.dumps({"evaluated": len(after), "changed": changes}, indent=2))
        return
    for change in changes:
        diffs = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in change["diff"].items())
        click.echo(f"{change['message']}: {diffs}")
    click.echo(f"postdesk: {len(changes)} of {len(after)} messages would change")


def _stored_rows(settings: Settings | None, since: datetime | None,
                 limit: int) -> list[tuple[int, dict | None]]:
    """Ids and stored decisions of inbound messages, oldest first."""
    if settings is None:
        raise click.ClickException("no valid configuration (needed to read stored messages)")
    engine = database.make_engine(settings.database_url)
    query = (select(Message.id, Message.decision).where(Message.direction == "inbound")
             .order_by(Message.id).limit(limit))
    if since is not None:
        query = query.where(Message.received_at >= since.replace(tzinfo=UTC))
    with engine.connect() as conn:
        return [(r.id, r.decision) for r in conn.execute(query).all()]


def _eml_decision(ruleset: RuleSet, runner: ProcedureRunner, raw: bytes, account: str | None,
                  received_at: datetime) -> Decision:
    parsed = parse_message(raw, received_at)
    fields = extract_fields(ruleset, parsed.subject, parsed.text)
    facts = message_facts(parsed, size=len(raw), received_at=received_at,
                          accounts=[account] if account else [], fields=fields)
    decision = evaluate(ruleset, facts, account, runner)
    decision.fields = fields
    return decision


OUTCOME_KEYS = ("classification", "state", "route", "actions", "documents", "reject")
NO_DECISION = {"classification": None, "state": "queued", "route": None, "actions": [],
               "documents": [], "reject": None}


def _compare(name: str, before: dict | None, decision: Decision | None) -> dict | None:
    """What the new rules decide for one message, against what was decided (None: same)."""
    if decision is None:
        return None
    after = decision.to_json()
    old = before or NO_DECISION
    diff = {k: (old.get(k), after.get(k)) for k in OUTCOME_KEYS if old.get(k) != after.get(k)}
    return {"message": name, "diff": diff} if diff else None
