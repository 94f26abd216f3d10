"""``postdesk outbox``: run the sending worker alone, or list/retry/cancel/pause/resume."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click
from sqlalchemy import select, update

from engine.outbox import paused, record, set_paused, unsuppress
from engine.store import database
from engine.store.models import Outbox, OutboxState, Suppression


def _settings(ctx: click.Context) -> Any:
    from gateway.cli import settings_from

    return settings_from(ctx.find_root())


def _engine(ctx: click.Context) -> Any:
    return database.make_engine(_settings(ctx).database_url)


@click.group("outbox", invoke_without_command=True)
@click.pass_context
def outbox(ctx: click.Context) -> None:
    """Run the outbox worker alone (no subcommand), or manage the outbox."""
    if ctx.invoked_subcommand is not None:
        return
    from engine.accounts import sync_accounts
    from engine.outboxworker import run_worker

    settings = _settings(ctx)
    database.upgrade(settings.database_url, wait=settings.database.startup_wait)
    engine = database.make_engine(settings.database_url, **settings.database.engine_options(1))
    sync_accounts(engine, settings)
    engine.dispose()
    run_worker(settings)


@outbox.command("list")
@click.option("--state", help="Only rows in this state (pending, sending, sent, failed...).")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_cmd(ctx: click.Context, state: str | None, limit: int, as_json: bool) -> None:
    """The newest outbox rows."""
    table = Outbox.__table__
    query = select(table).order_by(table.c.id.desc()).limit(limit)
    if state:
        query = query.where(table.c.state == state)
    with _engine(ctx).connect() as conn:
        rows = [_row(r) for r in conn.execute(query)]
        why = paused(conn)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if why:
        click.echo(f"automatic sending PAUSED: {why}")
    for r in rows:
        click.echo(f"{r['id']:>6} {r['state']:<9} {r['kind']:<17} {r['rcpt']:<32} "
                   f"attempts={r['attempts']} {r['last_error'] or ''}".rstrip())


def _row(row: Any) -> dict[str, Any]:
    fields = ("id", "cause_message_id", "account_id", "thread_id", "kind", "rule", "template",
              "rcpt", "automatic", "state", "mail_from", "rcpt_to", "message_id_header",
              "attempts", "last_error", "status", "archived_message_id")
    out = {f: getattr(row, f) for f in fields}
    for f in ("created_at", "next_attempt_at", "sent_at"):
        value = getattr(row, f)
        out[f] = value.isoformat() if value else None
    return out


@outbox.command("retry")
@click.argument("ids", nargs=-1, type=int, required=True)
@click.pass_context
def retry(ctx: click.Context, ids: tuple[int, ...]) -> None:
    """Send failed, skipped, held or cancelled rows again now (same Message-ID if composed)."""
    _move(ctx, ids, (OutboxState.FAILED, OutboxState.SKIPPED, OutboxState.HELD,
                     OutboxState.CANCELLED, OutboxState.PENDING), OutboxState.PENDING, "retry")


@outbox.command("cancel")
@click.argument("ids", nargs=-1, type=int, required=True)
@click.pass_context
def cancel(ctx: click.Context, ids: tuple[int, ...]) -> None:
    """Never send these rows (pending, failed or held ones)."""
    _move(ctx, ids, (OutboxState.PENDING, OutboxState.FAILED, OutboxState.HELD),
          OutboxState.CANCELLED, "cancelled")


def _move(ctx: click.Context, ids: tuple[int, ...], allowed: tuple[OutboxState, ...],
          to: OutboxState, action: str) -> None:
    engine = _engine(ctx)
    now = datetime.now(UTC)
    with database.writer(engine).begin() as conn:
        for pk in ids:
            done = conn.execute(update(Outbox).where(
                Outbox.id == pk, Outbox.state.in_([s.value for s in allowed]))
                .values(state=to.value, next_attempt_at=now)).rowcount
            if done:
                record(conn, pk, action, {}, resource="admin")
            click.echo(f"outbox {pk}: {to.value if done else 'unchanged (state does not allow)'}")


@outbox.command("pause")
@click.option("--reason", default="paused by an admin", show_default=True)
@click.pass_context
def pause(ctx: click.Context, reason: str) -> None:
    """Stop all automatic sending (agents' mail still goes out)."""
    with database.writer(_engine(ctx)).begin() as conn:
        set_paused(conn, True, reason)
    click.echo("postdesk: automatic sending paused")


@outbox.command("resume")
@click.pass_context
def resume(ctx: click.Context) -> None:
    """Restart automatic sending (after a pause or the breaker)."""
    with database.writer(_engine(ctx)).begin() as conn:
        set_paused(conn, False, "")
    click.echo("postdesk: automatic sending resumed")


@outbox.command("suppressed")
@click.option("--clear", "clear", help="Remove this address from the suppression list.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def suppressed_cmd(ctx: click.Context, clear: str | None, as_json: bool) -> None:
    """Addresses automatic mail skips (after a permanent failure); --clear one."""
    engine = _engine(ctx)
    if clear:
        with database.writer(engine).begin() as conn:
            found = unsuppress(conn, clear)
        click.echo(f"postdesk: {clear} {'cleared' if found else 'was not suppressed'}")
        return
    with engine.connect() as conn:
        rows = [{"address": r.address, "reason": r.reason, "status": r.status,
                 "created_at": r.created_at.isoformat()}
                for r in conn.execute(select(Suppression.__table__)
                                      .order_by(Suppression.address))]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        for r in rows:
            click.echo(f"{r['address']:<40} {r['status'] or '':<7} {r['reason']}")
