"""``postdesk poll``, ``postdesk status`` and ``postdesk import``: mailboxes and archives.

``poll`` runs the IMAP pollers alone (``serve`` runs them beside the SMTP listeners);
``status`` shows each polled mailbox's health from the status files the pollers write;
``import`` feeds an mbox, a Maildir or a folder of .eml files through the intake.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from sqlalchemy import text

from engine.accounts import AccountDirectory, sync_accounts
from engine.config import ConfigError, Settings, load_settings, tag_keys
from engine.decisions import RuleFiles
from engine.intake import Intake
from engine.leases import holders
from engine.store import database
from gateway.imap import PollerSet, mailboxes
from gateway.imapstatus import read_status
from gateway.importer import Importer, ImportState, StoreFailed, checkpoint_path
from gateway.rules_cli import load_or_exit
from gateway.sources import KINDS, open_source


def _settings(ctx: click.Context) -> Settings:
    """The configuration, or exit 2 with every located problem (as ``serve`` does)."""
    try:
        return load_settings(ctx.find_root().obj["config"])
    except ConfigError as exc:
        click.echo("postdesk: configuration error", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)


def _prepare(settings: Settings) -> AccountDirectory:
    """Migrate the database and mirror the accounts into it, as ``serve`` does at start."""
    database.upgrade(settings.database_url, wait=settings.database.startup_wait)
    engine = database.make_engine(settings.database_url)
    try:
        return sync_accounts(engine, settings)
    finally:
        engine.dispose()


def _intake(settings: Settings, directory: AccountDirectory, rules: bool) -> Intake:
    if rules and settings.rules:  # as serve: refuse to start on rules that don't validate
        load_or_exit(list(settings.rules), settings, exit_code=2)
    files = RuleFiles([str(p) for p in settings.rules], directory.names, tag_keys(settings)) \
        if rules and settings.rules else None
    return Intake(settings.database_url, max_batch=settings.gateway.max_batch,
                  busy_timeout_ms=settings.database.busy_timeout_ms, isolate=True, rules=files)


@click.command()
@click.option("--account", "accounts", multiple=True, help="Only this account (repeatable).")
@click.option("--once", is_flag=True, help="Drain each mailbox once, then exit.")
@click.pass_context
def poll(ctx: click.Context, accounts: tuple[str, ...], once: bool) -> None:
    """Poll the imap-poll accounts' mailboxes (without the SMTP/LMTP listeners)."""
    settings = _settings(ctx)
    directory = _prepare(settings)
    if not mailboxes(settings, directory, accounts):
        raise click.ClickException("no account uses an imap-poll driver")
    sys.exit(asyncio.run(_poll(settings, directory, accounts, once)))


async def _poll(settings: Settings, directory: AccountDirectory, accounts: tuple[str, ...],
                once: bool) -> int:
    intake = _intake(settings, directory, rules=True)
    stopping = asyncio.Event()
    await _start(intake, stopping.set)
    engine = database.make_engine(settings.database_url, **settings.database.engine_options(2))
    pollers = PollerSet.from_settings(settings, directory, intake, accounts, engine)
    try:
        if once:
            return 0 if await pollers.run_once() else 1
        await pollers.start()
        await stopping.wait()
        await pollers.stop()
        return 0
    finally:
        await intake.stop()
        engine.dispose()


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Database and polled mailboxes: state, last poll, messages fetched, last error."""
    settings = _settings(ctx)
    report = _status(settings)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"database: {report['database']}")
    for box in report["imap"]:
        click.echo(f"imap {box['account']}/{box['driver']} ({box['server']}): {box['state']}, "
                   f"last poll {box.get('last_poll') or 'never'}, fetched "
                   f"{box.get('fetched', 0)}, retried {box.get('retried', 0)}"
                   + (f"\n  last error: {box['last_error']}" if box.get("last_error") else ""))
        lease = box.get("lease")
        click.echo(f"  polled by {lease['holder']} since {lease['since']}, lease until "
                   f"{lease['until']}{' (expired)' if lease['expired'] else ''}" if lease
                   else "  polled by: nobody (no lease held)")


def _status(settings: Settings) -> dict[str, Any]:
    engine = database.make_engine(settings.database_url)
    leases: dict[str, dict[str, Any]] = {}
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        db = "ok"
        leases = holders(engine)
    except Exception as exc:  # noqa: BLE001 — reported, not raised
        db = f"error: {exc.__class__.__name__}"
    finally:
        engine.dispose()
    files = read_status(settings.instance_dir / "status")
    boxes = []
    for acc in settings.accounts:
        for use in acc.inbound:
            name = use if isinstance(use, str) else use.driver
            driver = settings.drivers.get(name)
            if getattr(driver, "type", None) != "imap-poll":
                continue
            effective = settings.effective_driver(use)
            box = files.get(f"{acc.name}/{name}") or {
                "account": acc.name, "driver": name, "state": "not running",
                "server": f"{effective.host}:{effective.port}", "user": effective.user}
            box["lease"] = leases.get(f"imap:{acc.name}/{name}")  # which process polls it
            boxes.append(box)
    return {"database": db, "accounts": [a.name for a in settings.accounts], "imap": boxes}


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:,.0f} msg/s" if task.speed else "– msg/s", style="cyan")


@click.command("import")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--account", required=True, help="The account the mail belongs to.")
@click.option("--format", "kind", type=click.Choice(KINDS), default="auto", show_default=True)
@click.option("--no-rules", is_flag=True,
              help="Store only: no rules (no acknowledgements or replies for old mail).")
@click.option("--restart", is_flag=True, help="Forget an earlier run's progress.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def import_(ctx: click.Context, source: Path, account: str, kind: str, no_rules: bool,
            restart: bool, as_json: bool) -> None:
    """Import an mbox file, a Maildir or a folder of .eml files; resumable."""
    settings = _settings(ctx)
    acc = next((a for a in settings.accounts if a.name == account), None)
    if acc is None:
        raise click.ClickException(f"no account named {account!r}")
    directory = _prepare(settings)
    mail = open_source(source, kind)
    checkpoint = checkpoint_path(settings.instance_dir, mail, account)
    if restart:
        checkpoint.unlink(missing_ok=True)
    state = ImportState.load(checkpoint, mail, account)
    account_id = {n: i for i, n in directory.names.items()}[account]
    importer = Importer(_intake(settings, directory, rules=not no_rules), account_id,
                        acc.addresses[0], max_size=settings.gateway.max_message_size,
                        hostname=settings.gateway.hostname, checkpoint=checkpoint)
    started = time.monotonic()
    error = asyncio.run(_import(importer, mail, state))
    _summary(state, time.monotonic() - started, error, as_json)
    sys.exit(1 if error else 130 if state.interrupted else 0)


async def _start(intake: Intake, stop: Callable[[], None]) -> None:
    """Start the intake with SIGINT ignored, so its writer process inherits that: Ctrl-C
    reaches the whole process group, and only we should decide when the writer stops."""
    loop = asyncio.get_running_loop()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        await intake.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)


async def _import(importer: Importer, mail: Any, state: ImportState) -> str | None:
    await _start(importer.intake, importer.stopping.set)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               _Rate(), TextColumn("ETA"), TimeRemainingColumn())
    try:
        with Progress(*columns, console=Console(stderr=True)) as bar:
            task = bar.add_task(f"{mail.kind} {mail.path.name}", total=len(mail),
                                completed=state.done)
            await importer.run(mail, state, lambda s: bar.update(task, completed=s.done))
        return None
    except StoreFailed as exc:
        return str(exc)
    finally:
        await importer.intake.stop()


def _summary(state: ImportState, seconds: float, error: str | None, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({**state.__dict__, "seconds": round(seconds, 2),
                               "error": error}, indent=2))
        return
    if state.resumed_from >= state.total:
        click.echo(f"postdesk: all {state.total} messages were read by an earlier run; "
                   "nothing new (--restart reads them all again)")
    elif state.resumed_from:
        click.echo(f"postdesk: resumed after message {state.resumed_from} of {state.total}")
    click.echo(f"postdesk: imported {state.imported}, duplicate {state.duplicate}, "
               f"failed {state.failed} ({state.done}/{state.total} read, {seconds:.1f} s)")
    for failure in state.failures[:50]:
        click.echo(f"  failed: {failure['where']}: {failure['reason']}")
    if error:
        click.echo(f"postdesk: stopped: {error}; run the same command again to resume",
                   err=True)
    elif state.interrupted:
        click.echo("postdesk: interrupted; run the same command again to resume", err=True)
