"""The ``postdesk`` command line: init, serve, console, db, message and user subcommands.

It lives in ``gateway`` because it is the process edge that starts the network services;
everything it does besides starting them is a call into ``engine``.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from sqlalchemy import select

from engine.config import ConfigError, Settings, console_secret, load_settings
from engine.store import database
from engine.store.models import Account, Attachment, Message, MessageAccount
from engine.tags import generate_secret
from engine.users import create_user, generate_password
from gateway.imap_cli import import_, poll, status
from gateway.outbox_cli import outbox as outbox_cmd
from gateway.rules_cli import load_or_exit
from gateway.rules_cli import rules as rules_cmd
from gateway.template_cli import template as template_cmd
from gateway.user_cli import user as user_cmd

if TYPE_CHECKING:
    from gateway.server import Services

DEFAULTS = Path(__file__).resolve().parent.parent / "engine" / "defaults"
RULES_EXAMPLE = Path(__file__).resolve().parent.parent / "rules.example.yaml"


def _default_config() -> str:
    return "var/postdesk.yaml" if Path("var/postdesk.yaml").exists() else "postdesk.yaml"


class _Main(click.Group):
    """Every command: a store that stays unavailable through a start-up ends the command
    with one line and exit status 75 (EX_TEMPFAIL: a supervisor restarts it later)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except database.GaveUpWaiting as exc:
            click.echo(f"postdesk: gave up starting: {exc}", err=True)
            sys.exit(75)


@click.group(cls=_Main)
@click.option("--config", "-c", envvar="POSTDESK_CONFIG", default=None,
              help="Path to postdesk.yaml (default: var/postdesk.yaml or ./postdesk.yaml).")
@click.option("--log-level", default="INFO", show_default=True)
@click.pass_context
def main(ctx: click.Context, config: str | None, log_level: str) -> None:
    """Postdesk: self-hosted email response management."""
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # per-connection chatter of aiosmtpd ("mail.log") and Alembic's plugin list: debug only
    for noisy in ("mail.log", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    ctx.obj = {"config": config or _default_config()}


def settings_from(ctx: click.Context) -> Settings:
    """Load the configuration or exit 2 with every located problem on stderr."""
    try:
        return load_settings(ctx.obj["config"])
    except ConfigError as exc:
        click.echo("postdesk: configuration error", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)


@main.command()
@click.option("--instance", "instance", default="var", show_default=True,
              help="Directory for the new instance (config, database, rules).")
def init(instance: str) -> None:
    """Create an embedded instance (config, SQLite database, rules, admin user) if none."""
    target = Path(instance)
    config = target / "postdesk.yaml"
    if config.exists():
        click.echo(f"postdesk: instance already initialised at {target}/")
        return
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DEFAULTS / "postdesk.yaml", config)
    if RULES_EXAMPLE.exists():
        shutil.copyfile(RULES_EXAMPLE, target / "rules.yaml")
    shutil.copytree(DEFAULTS / "templates", target / "templates", dirs_exist_ok=True)
    key_file = target / "tag-key-k1.secret"
    key_file.touch(mode=0o600)
    key_file.write_text(generate_secret() + "\n")
    settings = load_settings(config)
    console_secret(settings)  # console-secret.key, 0600, signs the console's sessions
    database.upgrade(settings.database_url, wait=settings.database.startup_wait)
    password = generate_password()
    engine = database.make_engine(settings.database_url)
    with database.session_factory(database.writer(engine)).begin() as session:
        create_user(session, "admin", password, is_admin=True)
    engine.dispose()
    click.echo(f"postdesk: new instance in {target}/ (database {settings.database_url})")
    click.echo(f"postdesk: admin user 'admin', password: {password}")


@main.command()
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Run everything until SIGTERM: SMTP/LMTP, the console, IMAP polling, the outbox."""
    from gateway.server import SERVE

    _run_services(ctx, SERVE)


@main.command("gateway")
@click.pass_context
def gateway_cmd(ctx: click.Context) -> None:
    """Run only the SMTP/LMTP intake (and /healthz on http_listen) until SIGTERM."""
    from gateway.server import GATEWAY

    _run_services(ctx, GATEWAY)


def _run_services(ctx: click.Context, services: Services) -> None:
    """Check the rules, migrate, then run ``services`` until SIGTERM."""
    from engine.processes import start_child_server
    from gateway.server import serve as run

    settings = settings_from(ctx)
    if settings.gateway.workers == 1:  # its imports overlap ours; pre-forked workers
        start_child_server()          # each start their own
    _check_rules(settings)
    database.upgrade(settings.database_url, wait=settings.database.startup_wait)
    sys.exit(run(settings, services))


def _check_rules(settings: Settings) -> None:
    """Refuse to start on rule files that don't validate (a reload would keep the old set;
    at start there is none)."""
    load_or_exit(list(settings.rules), settings, exit_code=2)


@main.group()
def db() -> None:
    """Database schema management."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.pass_context
def db_upgrade(ctx: click.Context, revision: str) -> None:
    """Apply Alembic migrations up to REVISION."""
    settings = settings_from(ctx.find_root())
    database.upgrade(settings.database_url, revision)
    click.echo(f"postdesk: database at {revision}")


@main.group()
def config() -> None:
    """Configuration helpers."""


@config.command("check")
@click.pass_context
def config_check(ctx: click.Context) -> None:
    """Validate postdesk.yaml; exits 2 with located errors."""
    settings = settings_from(ctx.find_root())
    click.echo(f"postdesk: {settings.source} is valid ({len(settings.accounts)} accounts)")


def _session(ctx: click.Context) -> Any:
    settings = settings_from(ctx.find_root())
    engine = database.writer(database.make_engine(settings.database_url))
    return database.session_factory(engine)()


def _summary(message: Message, accounts: dict[int, str], extra: list[int]) -> dict[str, Any]:
    return {
        "id": message.id,
        "account": accounts.get(message.account_id),
        "accounts": [accounts.get(a) for a in extra] or [accounts.get(message.account_id)],
        "from": message.from_addr,
        "from_name": message.from_name,
        "subject": message.subject,
        "date": message.date.isoformat(),
        "received_at": message.received_at.isoformat(),
        "state": message.state,
        "classification": message.classification,
        "thread": message.thread_id,
        "thread_reason": message.thread_reason,
        "size": message.size,
        "message_id": message.message_id_header,
        "needs_attention": message.needs_attention,
    }


@main.group()
def message() -> None:
    """Inspect and reprocess stored messages."""


@message.command("list")
@click.option("--account", help="Account name.")
@click.option("--state", help="Message state, e.g. queued, resolved, deleted.")
@click.option("--attention", is_flag=True, help="Only messages marked for attention.")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def message_list(ctx: click.Context, account: str | None, state: str | None, attention: bool,
                 limit: int, as_json: bool) -> None:
    """List messages, newest first."""
    with _session(ctx) as session:
        accounts = dict(session.execute(select(Account.id, Account.name)).all())
        query = select(Message).order_by(Message.received_at.desc(), Message.id.desc())
        if account:
            query = query.join(MessageAccount, MessageAccount.message_id == Message.id).where(
                MessageAccount.account_id == select(Account.id).where(Account.name == account)
                .scalar_subquery())
        if state:
            query = query.where(Message.state == state)
        if attention:
            query = query.where(Message.needs_attention.is_(True))
        rows = session.scalars(query.limit(limit)).all()
        links = _accounts_of(session, [m.id for m in rows])
        items = [_summary(m, accounts, links.get(m.id, [])) for m in rows]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    for item in items:
        flag = "!" if item["needs_attention"] else " "
        click.echo(f"{item['id']:>7}{flag} {item['state']:<10} {item['account'] or '-':<12} "
                   f"{item['from'][:28]:<28} {item['subject'][:50]}")


def _accounts_of(session: Any, ids: list[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    if ids:
        rows = session.execute(select(MessageAccount.message_id, MessageAccount.account_id)
                               .where(MessageAccount.message_id.in_(ids)))
        for message_id, account_id in rows:
            out.setdefault(message_id, []).append(account_id)
    return out


@message.command("show")
@click.argument("message_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--raw", is_flag=True, help="Print the stored MIME bytes (with our Received line).")
@click.pass_context
def message_show(ctx: click.Context, message_id: int, as_json: bool, raw: bool) -> None:
    """Show one message: summary, text body, attachments; or its raw bytes."""
    with _session(ctx) as session:
        msg = session.get(Message, message_id)
        if msg is None:
            raise click.ClickException(f"no message {message_id}")
        if raw:
            sys.stdout.buffer.write(msg.received_header.encode() + msg.raw)
            return
        accounts = dict(session.execute(select(Account.id, Account.name)).all())
        item = _summary(msg, accounts, _accounts_of(session, [msg.id]).get(msg.id, []))
        item |= {"to": msg.to_addrs, "cc": msg.cc_addrs, "in_reply_to": msg.in_reply_to,
                 "charset": msg.charset, "text": msg.body_text,
                 "has_html": msg.body_html is not None,
                 "error": msg.error, "defects": msg.defects,
                 "route": {"group": msg.route_group, "agent": msg.route_agent},
                 "rule_version": msg.rule_version, "decision": msg.decision,
                 "attachments": [{"filename": a.filename, "content_type": a.content_type,
                                  "size": a.size, "disposition": a.disposition}
                                 for a in session.scalars(select(Attachment)
                                                          .where(Attachment.message_id == msg.id))]}
    if as_json:
        click.echo(json.dumps(item, indent=2))
    else:
        for key in ("id", "account", "from", "subject", "date", "state", "thread", "size"):
            click.echo(f"{key:>8}: {item[key]}")
        click.echo("")
        click.echo(item["text"])


@message.command("reprocess")
@click.argument("message_ids", type=int, nargs=-1, required=True)
@click.pass_context
def message_reprocess(ctx: click.Context, message_ids: tuple[int, ...]) -> None:
    """Run the pipeline again over stored messages (e.g. ones marked for attention)."""
    from engine.deliveries import reprocess

    settings = settings_from(ctx.find_root())
    engine = database.writer(database.make_engine(settings.database_url))
    failed = 0
    for message_id in message_ids:
        try:
            with engine.begin() as conn:
                reprocess(conn, message_id)
            click.echo(f"postdesk: message {message_id} reprocessed")
        except Exception as exc:  # noqa: BLE001 — report and go on with the others
            failed += 1
            click.echo(f"postdesk: message {message_id} failed: {exc}", err=True)
    sys.exit(1 if failed else 0)


@main.command("console")
@click.option("--listen", help="host:port (default: gateway.http_listen).")
@click.pass_context
def console_cmd(ctx: click.Context, listen: str | None) -> None:
    """Run the web console alone (``serve`` runs it too) until SIGTERM."""
    from gateway.http import run_alone

    settings = settings_from(ctx)
    database.upgrade(settings.database_url, wait=settings.database.startup_wait)
    sys.exit(run_alone(settings, listen))


main.add_command(rules_cmd)
main.add_command(user_cmd)
main.add_command(poll)
main.add_command(status)
main.add_command(import_)
main.add_command(outbox_cmd)
main.add_command(template_cmd)

if __name__ == "__main__":
    main()
