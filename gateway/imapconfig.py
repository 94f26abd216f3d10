"""Which mailboxes to poll: ``imap-poll`` drivers of ``postdesk.yaml`` with overrides applied.

Each account that names an ``imap-poll`` driver in ``inbound`` gets one ``MailboxSpec``:
the driver's parameters, the account's overrides on top (``{driver: NAME, KEY: VALUE}``),
the password resolved from its reference, ``ca_file`` relative to the configuration file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.accounts import AccountDirectory
from engine.config import ImapPollDriver, Settings
from gateway.imapconn import ServerSettings


@dataclass(frozen=True)
class MailboxSpec:
    """One polled mailbox: the account it delivers to and the effective driver settings."""

    account: str
    account_id: int
    address: str
    driver: str
    server: ServerSettings
    interval: float
    processed_folder: str
    retry_folder: str
    max_size: int
    hostname: str
    problem: str | None = None  # a configuration problem: report it, never connect
    lease_seconds: float = 60.0  # see engine.leases

    @property
    def key(self) -> str:
        return f"{self.account}/{self.driver}"


def mailboxes(settings: Settings, directory: AccountDirectory,
              only: Sequence[str] = ()) -> list[MailboxSpec]:
    """Every (account, imap-poll driver) pair in the configuration, overrides applied."""
    ids = {name: pk for pk, name in directory.names.items()}
    specs = []
    for acc in settings.accounts:
        if only and acc.name not in only:
            continue
        for use in acc.inbound:
            name = use if isinstance(use, str) else use.driver
            if getattr(settings.drivers.get(name), "type", None) == "imap-poll":
                driver = settings.effective_driver(use)
                specs.append(_spec(settings, acc.name, ids[acc.name], acc.addresses[0], name,
                                   driver))
    return specs


def _spec(settings: Settings, account: str, account_id: int, address: str, name: str,
          driver: ImapPollDriver) -> MailboxSpec:
    password = driver.password.resolve() if driver.password else None
    problem = None
    if not driver.user:
        problem = f"driver {name!r}: no user configured"
    elif password is None:
        problem = f"driver {name!r}: no password (set password: {{env: VARIABLE}})"
    ca_file = driver.ca_file
    if ca_file is not None and not ca_file.is_absolute():  # relative to postdesk.yaml
        ca_file = (Path(settings.source).parent / ca_file).resolve()
    server = ServerSettings(driver.host, driver.port, driver.tls, driver.user or "",
                            password or "", driver.timeout, ca_file)
    return MailboxSpec(account, account_id, address, name, server, driver.polling_interval,
                       driver.processed_folder, driver.retry_folder,
                       settings.gateway.max_message_size, settings.gateway.hostname, problem,
                       driver.lease_seconds)
