"""``postdesk rules check|explain|stats``: tooling for rule authors."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import click
from sqlalchemy import select

from engine.config import ConfigError, Settings, load_settings
from engine.facts import message_facts
from engine.mime import parse_message
from engine.procedures import ProcedureRunner
from engine.store import database
from engine.store.models import RuleStat
from rules.evaluate import evaluate
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
    accounts = {a.name for a in settings.accounts} if settings else None
    try:
        return load_rules(paths, accounts)
    except RuleErrors as exc:
        for error in exc.errors:
            click.echo(str(error), err=True)
        click.echo(f"postdesk: {len(exc.errors)} problem(s)", err=True)
        sys.exit(1)


@rules.command("check")
@click.argument("files", nargs=-1)
@click.pass_context
def check(ctx: click.Context, files: tuple[str, ...]) -> None:
    """Validate rule FILES (default: the configured ones); exit 1 listing every problem."""
    ruleset = _load(files, _settings(ctx))
    click.echo(f"postdesk: ok, {len(ruleset.rules)} rules, version {ruleset.version}")


@rules.command("explain")
@click.argument("message", type=click.Path(exists=True, dir_okay=False))
@click.option("--account", help="Account whose rules apply (default: all rules).")
@click.option("--rules-file", "files", multiple=True, help="Rule file(s) to use instead.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def explain_cmd(ctx: click.Context, message: str, account: str | None,
                files: tuple[str, ...], as_json: bool) -> None:
    """Show every rule and condition the MESSAGE (.eml) meets, and the final decision."""
    ruleset = _load(files, _settings(ctx))
    raw = Path(message).read_bytes()
    now = datetime.now(UTC)
    parsed = parse_message(raw, now)
    fields = extract_fields(ruleset, parsed.subject, parsed.text)
    facts = message_facts(parsed, size=len(raw), received_at=now,
                          accounts=[account] if account else [], fields=fields)
    decision = evaluate(ruleset, facts, account, ProcedureRunner(ruleset.procedure_timeout_ms))
    decision.fields = fields
    if as_json:
        click.echo(json.dumps(decision.to_json(), indent=2, default=str))
    else:
        click.echo(explain(decision))


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
