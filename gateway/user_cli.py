"""``postdesk user``: console users, their roles, accounts and queues."""

from __future__ import annotations

import json
from typing import Any

import click
from sqlalchemy import select

from engine.accounts import sync_accounts
from engine.store import database
from engine.store.models import Account, QueueAccess, Role, User, UserAccount
from engine.users import (
    assign_accounts,
    create_user,
    generate_password,
    set_password,
    set_queues,
    set_role,
)

ROLES = click.Choice([r.value for r in Role])


def _session(ctx: click.Context, *, sync: bool = False) -> Any:
    from gateway.cli import settings_from

    settings = settings_from(ctx.find_root())
    database.upgrade(settings.database_url)
    engine = database.writer(database.make_engine(settings.database_url))
    if sync:  # account names come from the config; make sure they are in the store
        sync_accounts(engine, settings)
    return database.session_factory(engine)()


def _run(ctx: click.Context, action: Any, *, sync: bool = False) -> Any:
    with _session(ctx, sync=sync) as session, session.begin():
        try:
            return action(session)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None


@click.group()
def user() -> None:
    """Manage console users."""


@user.command("add")
@click.argument("username")
@click.option("--role", type=ROLES, default=None, help="agent (default), supervisor or admin.")
@click.option("--admin", is_flag=True, help="Same as --role admin.")
@click.option("--password", help="Default: generate one and print it.")
@click.pass_context
def user_add(ctx: click.Context, username: str, role: str | None, admin: bool,
             password: str | None) -> None:
    """Create a user with a hashed password."""
    password = password or generate_password()
    _run(ctx, lambda s: create_user(s, username, password, is_admin=admin, role=role))
    click.echo(f"postdesk: user {username!r} created, password: {password}")


@user.command("passwd")
@click.argument("username")
@click.option("--password", help="Default: generate one and print it.")
@click.pass_context
def user_passwd(ctx: click.Context, username: str, password: str | None) -> None:
    """Set a new password (ends the user's console sessions)."""
    password = password or generate_password()
    _run(ctx, lambda s: set_password(s, username, password))
    click.echo(f"postdesk: new password for {username!r}: {password}")


@user.command("role")
@click.argument("username")
@click.argument("role", type=ROLES)
@click.pass_context
def user_role(ctx: click.Context, username: str, role: str) -> None:
    """Make the user an agent, supervisor or admin."""
    _run(ctx, lambda s: set_role(s, username, role))
    click.echo(f"postdesk: {username!r} is now {role}")


@user.command("assign")
@click.argument("username")
@click.argument("accounts", nargs=-1, required=True)
@click.option("--replace", is_flag=True, help="Only these accounts (drop the others).")
@click.pass_context
def user_assign(ctx: click.Context, username: str, accounts: tuple[str, ...],
                replace: bool) -> None:
    """Let an agent work ACCOUNTS (by name); it sees no others."""
    names = _run(ctx, lambda s: assign_accounts(s, username, list(accounts), replace=replace),
                 sync=True)
    click.echo(f"postdesk: {username!r} works {', '.join(names)}")


@user.command("queues")
@click.argument("username")
@click.argument("account")
@click.argument("classifications", nargs=-1)
@click.pass_context
def user_queues(ctx: click.Context, username: str, account: str,
                classifications: tuple[str, ...]) -> None:
    """Limit an agent to these queues of ACCOUNT ("" is unclassified); none: all queues."""
    _run(ctx, lambda s: set_queues(s, username, account, list(classifications)), sync=True)
    which = ", ".join(c or "unclassified" for c in classifications) or "all queues"
    click.echo(f"postdesk: {username!r} pulls from {account}: {which}")


@user.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def user_list(ctx: click.Context, as_json: bool) -> None:
    """List users with role and accounts."""
    with _session(ctx) as session:
        users = [_describe(session, u) for u in session.scalars(select(User)
                                                                 .order_by(User.username))]
    if as_json:
        click.echo(json.dumps(users, indent=2))
        return
    for u in users:
        flags = " (inactive)" if not u["active"] else ""
        click.echo(f"{u['username']:<20} {u['role']:<11} {', '.join(u['accounts']) or '-'}{flags}")


def _describe(session: Any, user: User) -> dict[str, Any]:
    accounts = session.scalars(select(Account.name).join(
        UserAccount, UserAccount.account_id == Account.id)
        .where(UserAccount.user_id == user.id).order_by(Account.name)).all()
    queues: dict[str, list[str]] = {}
    for name, cls in session.execute(select(Account.name, QueueAccess.classification).join(
            QueueAccess, QueueAccess.account_id == Account.id)
            .where(QueueAccess.user_id == user.id)):
        queues.setdefault(name, []).append(cls)
    return {"id": user.id, "username": user.username, "role": user.role,
            "admin": user.role == Role.ADMIN, "active": user.active,
            "on_break": user.on_break, "accounts": list(accounts), "queues": queues}
