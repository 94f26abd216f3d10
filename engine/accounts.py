"""Accounts: the support mailboxes from ``postdesk.yaml``, mirrored into the store.

The gateway asks ``AccountDirectory.lookup`` at RCPT time; the directory is rebuilt from the
configuration at start-up (``sync_accounts``), so the database always knows every account a
message can reference.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, select

from engine.config import Settings
from engine.store.database import retry_unavailable, writer
from engine.store.models import Account


@dataclass(frozen=True)
class AccountDirectory:
    """Recipient address (lower case) → account id, with plus-addressing understood."""

    by_address: dict[str, int]
    names: dict[int, str]
    bounce_local: str = "bounces"  # ``bounces+<token>@<an account's domain>``: our return paths

    def lookup(self, address: str) -> int | None:
        """The account owning ``address``; ``support+tag@x`` falls back to ``support@x``."""
        addr = address.strip().strip("<>").lower()
        if addr in self.by_address:
            return self.by_address[addr]
        local, at, domain = addr.rpartition("@")
        if at and "+" in local:
            base = local.split("+", 1)[0]
            if base == self.bounce_local:  # a delivery report for a mail we sent
                return next((pk for a, pk in self.by_address.items()
                             if a.rpartition("@")[2] == domain), None)
            return self.by_address.get(f"{base}@{domain}")
        return None


def sync_accounts(engine: Engine, settings: Settings) -> AccountDirectory:
    """Insert or update every configured account; returns the directory for the gateway.

    Every service does this at start; while the store is down or locked by a long
    transaction it retries for ``database.startup_wait`` seconds before giving up."""
    existing = retry_unavailable(lambda: _write_accounts(engine, settings),
                                 settings.database.startup_wait, "writing the accounts")
    by_address = {addr: existing[acc.name] for acc in settings.accounts
                  for addr in acc.all_addresses()}
    return AccountDirectory(by_address, {existing[a.name]: a.name for a in settings.accounts},
                            settings.outbox.bounce_local.lower())


def _write_accounts(engine: Engine, settings: Settings) -> dict[str, int]:
    """One transaction: every configured account inserted or updated; name -> id."""
    with writer(engine).begin() as conn:  # several workers may start at once
        existing = {row.name: row.id for row in conn.execute(select(Account.id, Account.name))}
        for acc in settings.accounts:
            values = {
                "addresses": acc.all_addresses(), "from_name": acc.from_name,
                "reply_to": acc.reply_to, "signature": acc.signature, "active": True,
            }
            if acc.name in existing:
                conn.execute(Account.__table__.update().where(Account.id == existing[acc.name]),
                             values)
            else:
                result = conn.execute(Account.__table__.insert(), {"name": acc.name, **values})
                existing[acc.name] = result.inserted_primary_key[0]
    return existing
