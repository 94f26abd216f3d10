"""Configuration: ``postdesk.yaml`` loaded into typed settings, with located errors.

Every process starts here: the CLI loads the file named by ``--config`` or ``POSTDESK_CONFIG``,
applies the environment overrides and hands the resulting ``Settings`` to the services. A
problem in the file is reported as ``ConfigError`` listing every problem with file, line and
key, before anything listens (pySigma-style: collected, not raised one at a time).

Drivers and accounts follow Siebel's split: a driver holds protocol defaults (smtp-inline,
lmtp, imap-poll, outbound-relay) and an account (profile) names the drivers it uses and may
override any of their parameters.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from engine.yamlnodes import NodeLocator, load_with_locator

DEFAULT_SMTP_LISTEN = "127.0.0.1:2525"
DEFAULT_LMTP_LISTEN = "127.0.0.1:2524"
DEFAULT_HTTP_LISTEN = "127.0.0.1:8025"
ENV_OVERRIDES = {
    "POSTDESK_DATABASE_URL": ("database", "url"),
    "POSTDESK_SMTP_LISTEN": ("gateway", "smtp_listen"),
    "POSTDESK_LMTP_LISTEN": ("gateway", "lmtp_listen"),
    "POSTDESK_HTTP_LISTEN": ("gateway", "http_listen"),
}


@dataclass(frozen=True)
class ConfigProblem:
    """One located problem: ``file:line: key: message``."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` says where and why."""

    def __init__(self, problems: list[ConfigProblem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SecretRef(Strict):
    """A secret read at start-up from the environment (``{env: NAME}``) or from a file
    readable only by Postdesk (``{file: PATH}``, relative to the config file)."""

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env or file")
        return self

    def resolve(self, environ: dict[str, str] | None = None) -> str | None:
        if self.env is not None:
            return (os.environ if environ is None else environ).get(self.env)
        try:
            return Path(self.file).read_text().strip()  # type: ignore[arg-type]
        except OSError:
            return None


class TagSettings(Strict):
    """Reference-tag keys: ``current`` seals new tags; every listed key still opens old ones."""

    current: str
    keys: dict[str, SecretRef] = Field(min_length=1)


def parse_listen(value: str) -> tuple[str, int] | None:
    """``host:port`` (``[::1]:25`` for IPv6) → (host, port); ``off`` or empty → None."""
    value = value.strip()
    if value.lower() in ("", "off", "none", "disabled"):
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host or int(port) > 65535:
        raise ValueError(f"expected host:port or 'off', got {value!r}")
    return host.strip("[]"), int(port)


class DatabaseSettings(Strict):
    """Where the store lives and, on PostgreSQL, each process's connection pool."""

    url: str | None = None  # None: SQLite file under the instance directory
    # connections each process keeps open; None: the console's thread count in the console,
    # 5 elsewhere
    pool_size: int | None = Field(None, ge=1, le=1000)
    max_overflow: int = Field(10, ge=0, le=1000)  # extra connections opened under load
    pool_timeout: float = Field(30, gt=0)  # seconds to wait for a free connection
    pool_recycle: int = Field(1800, ge=-1)  # reopen connections older than this; -1: never
    busy_timeout_ms: int = Field(10_000, ge=0)  # SQLite busy timeout; PostgreSQL lock_timeout
    # seconds a service's start-up (connecting, writing the accounts) retries while the
    # store is down or locked, before the service gives up and exits 75
    startup_wait: float = Field(60, ge=0)

    def engine_options(self, default_pool_size: int = 5) -> dict[str, Any]:
        """Keyword arguments for ``engine.store.database.make_engine`` (SQLite ignores the
        pool settings: it keeps one file and its own pool)."""
        return {"busy_timeout_ms": self.busy_timeout_ms,
                "pool_size": self.pool_size or default_pool_size,
                "max_overflow": self.max_overflow, "pool_timeout": self.pool_timeout,
                "pool_recycle": self.pool_recycle}


class TLSSettings(Strict):
    cert: Path
    key: Path


class GatewaySettings(Strict):
    smtp_listen: str = DEFAULT_SMTP_LISTEN
    lmtp_listen: str = DEFAULT_LMTP_LISTEN
    http_listen: str = DEFAULT_HTTP_LISTEN
    hostname: str = "postdesk.localdomain"
    max_message_size: int = Field(25 * 1024 * 1024, ge=1024)
    allowed_networks: list[str] = ["127.0.0.0/8", "::1/128"]
    starttls: TLSSettings | None = None
    max_batch: int = Field(64, ge=1, le=1000)
    workers: int = Field(1, ge=1, le=64)
    timeout: float = Field(300, gt=0)

    @field_validator("smtp_listen", "lmtp_listen", "http_listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for net in value:
            ipaddress.ip_network(net, strict=False)
        return value

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(n, strict=False) for n in self.allowed_networks]


class SmtpInlineDriver(Strict):
    type: Literal["smtp-inline"]


class LmtpDriver(Strict):
    type: Literal["lmtp"]


class RemoteServer(Strict):
    """Where a driver connects to, and as whom; ``ca_file`` trusts a private CA."""

    host: str = "localhost"
    port: int
    tls: Literal["implicit", "starttls", "none"]
    ca_file: Path | None = None
    user: str | None = None
    password: SecretRef | None = None
    timeout: float = Field(30, gt=0)


class ImapPollDriver(RemoteServer):
    type: Literal["imap-poll"]
    port: int = 993
    tls: Literal["implicit", "starttls", "none"] = "implicit"
    polling_interval: int = Field(60, ge=1, alias="PollingInterval")
    processed_folder: str = "Processed"
    retry_folder: str = "Retry"
    # one process polls a mailbox at a time: it holds a lease in the database, renewed every
    # third of this; if the holder dies, another takes over once it expires
    lease_seconds: float = Field(60, ge=3, le=3600)


class OutboundRelayDriver(RemoteServer):
    type: Literal["outbound-relay"]
    port: int = 25
    tls: Literal["implicit", "starttls", "none"] = "starttls"


Driver = Annotated[
    SmtpInlineDriver | LmtpDriver | ImapPollDriver | OutboundRelayDriver,
    Field(discriminator="type"),
]
INBOUND_TYPES = ("smtp-inline", "lmtp", "imap-poll")


class DriverUse(Strict):
    """An account's reference to a driver, with per-account parameter overrides."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    driver: str


class AccountSettings(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    addresses: list[str] = Field(min_length=1)
    aliases: list[str] = []
    from_name: str | None = None
    reply_to: str | None = None
    signature: str = ""
    inbound: list[str | DriverUse] = ["smtp", "lmtp"]
    outbound: str | DriverUse | None = None

    @field_validator("addresses", "aliases")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for addr in value:
            if addr.count("@") != 1 or addr.startswith("@") or addr.endswith("@"):
                raise ValueError(f"{addr!r} is not an email address (local@domain)")
        return [a.lower() for a in value]

    def all_addresses(self) -> list[str]:
        return [*self.addresses, *self.aliases]


def _default_drivers() -> dict[str, Any]:
    return {"smtp": SmtpInlineDriver(type="smtp-inline"), "lmtp": LmtpDriver(type="lmtp")}


class OutboxSettings(Strict):
    """How the outbox sends (``engine.outbox``) and how much automatic mail it allows."""

    templates: Path = Path("templates")  # directory of auto-acknowledge/reply templates
    retry_base_seconds: float = Field(30, gt=0)  # first retry; doubles, with jitter
    retry_max_seconds: float = Field(3600, gt=0)
    give_up_after_hours: float = Field(48, gt=0)  # a transient failure older than this fails
    poll_seconds: float = Field(1.0, gt=0)
    # a row a worker has been sending for longer than this (the worker is gone, e.g. its
    # machine) is sent again by another; a dead worker on the same machine is seen at once
    claim_seconds: float = Field(600, ge=10)
    batch: int = Field(20, ge=1)
    auto_per_sender: int = Field(1, ge=0)  # automatic mails per sender and account...
    auto_window_hours: float = Field(24, gt=0)  # ...in this window (0 per sender: none)
    auto_limits: dict[str, int] = {}  # per address or @domain: automatic mails per window
    breaker_per_minute: int = Field(300, ge=1)  # automatic mails a minute that trip it
    bounce_local: str = Field("bounces", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    # merge fields: defaults for the standard codes (CP_PARTY_NAME: "Customer"), and SQL
    # merge fields, name -> query whose column aliases name the fields (engine.sqlfields)
    merge_defaults: dict[str, str] = {}
    sql_fields: dict[str, str] = {}
    sql_timeout: float = Field(2.0, gt=0)


class ConsoleSettings(Strict):
    """The web console (``console``): where its session-signing key comes from, and how
    many WSGI threads serve it. Without ``secret_key`` the key is the file
    ``console-secret.key`` in the instance directory, created (0600) when missing."""

    secret_key: SecretRef | None = None
    threads: int = Field(8, ge=1, le=64)
    session_hours: float = Field(12, gt=0)
    secure_cookies: bool = False  # set when the console is served over HTTPS


class Settings(Strict):
    """The whole ``postdesk.yaml``; ``instance_dir`` and ``source`` are filled by the loader."""

    instance_dir: Path = Path("var")
    database: DatabaseSettings = DatabaseSettings()
    gateway: GatewaySettings = GatewaySettings()
    rules: list[Path] = []
    drivers: dict[str, Driver] = Field(default_factory=_default_drivers)
    accounts: list[AccountSettings] = []
    tags: TagSettings | None = None
    outbox: OutboxSettings = OutboxSettings()
    console: ConsoleSettings = ConsoleSettings()
    source: str = "<defaults>"

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite:///{(self.instance_dir / 'postdesk.db').resolve()}"

    def account_for(self, address: str) -> AccountSettings | None:
        return self.address_map().get(address.lower())

    def address_map(self) -> dict[str, AccountSettings]:
        return {addr: acc for acc in self.accounts for addr in acc.all_addresses()}

    def account(self, name: str) -> AccountSettings | None:
        return next((a for a in self.accounts if a.name == name), None)

    def relay_for(self, account: AccountSettings) -> OutboundRelayDriver | None:
        """The outbound relay the account sends through (its own, else the only one)."""
        if account.outbound is not None:
            return self.effective_driver(account.outbound)  # type: ignore[no-any-return]
        relays = [d for d in self.drivers.values() if d.type == "outbound-relay"]
        return relays[0] if len(relays) == 1 else None  # type: ignore[return-value]

    def effective_driver(self, use: str | DriverUse) -> Any:
        """The driver named by an account, with the account's overrides applied."""
        name = use if isinstance(use, str) else use.driver
        base = self.drivers[name]
        overrides = {} if isinstance(use, str) else dict(use.model_extra or {})
        return type(base).model_validate({**base.model_dump(by_alias=True), **overrides})


def load_settings(path: str | Path | None = None,
                  environ: dict[str, str] | None = None) -> Settings:
    """Load ``path`` (or ``$POSTDESK_CONFIG``), apply env overrides, validate everything."""
    environ = dict(os.environ if environ is None else environ)
    path = Path(path or environ.get("POSTDESK_CONFIG") or "postdesk.yaml")
    try:
        data, locator = load_with_locator(path)
    except OSError as exc:
        raise ConfigError([ConfigProblem(str(path), None, "", f"cannot read: {exc}")]) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        raise ConfigError([ConfigProblem(str(path), line, "", f"invalid YAML: {exc}")]) from exc
    if not isinstance(data, dict):
        raise ConfigError([ConfigProblem(str(path), 1, "", "expected a mapping at the top")])
    for var, (section, key) in ENV_OVERRIDES.items():
        if var in environ:
            data.setdefault(section, {})
            if isinstance(data[section], dict):
                data[section][key] = environ[var]
    drivers = data.setdefault("drivers", {})
    if isinstance(drivers, dict):  # the built-in inbound drivers exist unless redefined
        drivers.setdefault("smtp", {"type": "smtp-inline"})
        drivers.setdefault("lmtp", {"type": "lmtp"})
    data.setdefault("instance_dir", str(path.parent.resolve()))
    data["source"] = str(path)
    settings = _validate(data, path, locator)
    _check_references(settings, path, locator)
    _check_secrets(settings, path, locator, environ)
    settings = _resolve_paths(settings, path.parent)
    _check_tags(settings, path, locator, environ)
    return settings


def _validate(data: dict[str, Any], path: Path, locator: NodeLocator) -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = _user_loc(err["loc"])
            problems.append(
                ConfigProblem(str(path), locator.line_of(loc), _dotted(loc), _message(err))
            )
        raise ConfigError(problems) from None


def _user_loc(loc: tuple[Any, ...]) -> list[Any]:
    """Drop pydantic's union tags (``imap-poll``, ``str``, ``DriverUse``) from an error path."""
    parts = list(loc)
    if len(parts) >= 3 and parts[0] == "drivers":
        del parts[2]
    return [p for p in parts if p not in ("str", "DriverUse") and not str(p).startswith("union[")]


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key (check the spelling against README 'Configuration')"
    if err["type"] == "missing":
        return "required key is missing"
    return err["msg"].removeprefix("Value error, ")


def _dotted(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _check_references(settings: Settings, path: Path, locator: NodeLocator) -> None:
    """Cross-field checks pydantic cannot do alone: driver names, duplicate addresses."""
    problems: list[ConfigProblem] = []

    def report(loc: list[Any], message: str) -> None:
        problems.append(ConfigProblem(str(path), locator.line_of(loc), _dotted(loc), message))

    seen: dict[str, str] = {}
    for i, acc in enumerate(settings.accounts):
        for j, use in enumerate(acc.inbound):
            name = use if isinstance(use, str) else use.driver
            if name not in settings.drivers:
                report(["accounts", i, "inbound", j], f"no driver named {name!r}")
            elif settings.drivers[name].type not in INBOUND_TYPES:
                report(["accounts", i, "inbound", j], f"driver {name!r} is not an inbound driver")
            elif not isinstance(use, str):
                _check_override(settings, use, ["accounts", i, "inbound", j], report)
        if acc.outbound is not None:
            name = acc.outbound if isinstance(acc.outbound, str) else acc.outbound.driver
            driver = settings.drivers.get(name)
            if driver is None or driver.type != "outbound-relay":
                report(["accounts", i, "outbound"], f"no outbound-relay driver named {name!r}")
        for addr in acc.all_addresses():
            if addr in seen and seen[addr] != acc.name:
                report(["accounts", i, "addresses"], f"{addr} already belongs to {seen[addr]}")
            seen[addr] = acc.name
    names = [a.name for a in settings.accounts]
    for i, name in enumerate(names):
        if names.index(name) != i:
            report(["accounts", i, "name"], f"duplicate account name {name!r}")
    if problems:
        raise ConfigError(problems)


def _check_secrets(settings: Settings, path: Path, locator: NodeLocator,
                   environ: dict[str, str]) -> None:
    """Every secret a configured account will use must be in the environment now, not
    discovered missing at the first login hours later."""
    problems: dict[str, ConfigProblem] = {}
    for i, acc in enumerate(settings.accounts):
        uses = [(["accounts", i, "inbound", j], u) for j, u in enumerate(acc.inbound)]
        uses += [(["accounts", i, "outbound"], acc.outbound)] if acc.outbound else []
        for loc, use in uses:
            name = use if isinstance(use, str) else use.driver
            extra = {} if isinstance(use, str) else (use.model_extra or {})
            secret = extra.get("password") or getattr(settings.drivers[name], "password", None)
            if isinstance(secret, SecretRef) and secret.file is not None:
                continue  # files are checked when they are read
            where = [*loc, "password"] if "password" in extra else ["drivers", name, "password"]
            env = secret.get("env") if isinstance(secret, dict) else getattr(secret, "env", None)
            if env and env not in environ:
                key = _dotted(where)
                problems[key] = ConfigProblem(str(path), locator.line_of(where), key,
                                              f"environment variable {env} is not set")
    if problems:
        raise ConfigError(list(problems.values()))


def _check_tags(settings: Settings, path: Path, locator: NodeLocator,
                environ: dict[str, str]) -> None:
    """Tag keys must resolve and be usable now (a typo would silently break every reply)."""
    if settings.tags is None:
        return
    from engine.tags import TagKeys  # noqa: PLC0415 — only needed when tags are configured

    secrets: dict[str, str] = {}
    problems = []
    for kid, ref in settings.tags.keys.items():
        value = ref.resolve(environ)
        if value is None:
            source = f"environment variable {ref.env}" if ref.env else f"file {ref.file}"
            loc = ["tags", "keys", kid]
            problems.append(ConfigProblem(str(path), locator.line_of(loc), _dotted(loc),
                                          f"{source} is not available"))
        else:
            secrets[kid] = value
    if not problems:
        try:
            TagKeys.from_config(secrets, settings.tags.current)
        except ValueError as exc:
            problems.append(ConfigProblem(str(path), locator.line_of(["tags"]), "tags", str(exc)))
    if problems:
        raise ConfigError(problems)


def tag_keys(settings: Settings) -> Any:
    """The configured ``engine.tags.TagKeys``, or None when tags are not configured."""
    if settings.tags is None:
        return None
    from engine.tags import TagKeys  # noqa: PLC0415

    secrets = {kid: ref.resolve() or "" for kid, ref in settings.tags.keys.items()}
    return TagKeys.from_config(secrets, settings.tags.current)


CONSOLE_SECRET_FILE = "console-secret.key"


def console_secret(settings: Settings) -> str:
    """The console's session-signing key: ``console.secret_key`` if configured, else the
    instance's ``console-secret.key``, created once (0600, atomically) when missing."""
    ref = settings.console.secret_key
    if ref is not None:
        value = ref.resolve()
        if not value:
            source = f"environment variable {ref.env}" if ref.env else f"file {ref.file}"
            raise ConfigError([ConfigProblem(settings.source, None, "console.secret_key",
                                             f"{source} is not available")])
        return value
    path = settings.instance_dir / CONSOLE_SECRET_FILE
    if not path.exists():
        import secrets  # noqa: PLC0415

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.touch(mode=0o600)
        tmp.write_text(secrets.token_urlsafe(48) + "\n")
        try:
            os.link(tmp, path)  # atomic: a concurrent creator's key wins, ours is dropped
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()


def _check_override(settings: Settings, use: DriverUse, loc: list[Any], report: Any) -> None:
    try:
        settings.effective_driver(use)
    except ValidationError as exc:
        for err in exc.errors():
            report([*loc, *err["loc"]], _message(err))


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    def absolute(p: Path) -> Path:
        return p if p.is_absolute() else (base / p).resolve()

    update: dict[str, Any] = {
        "instance_dir": absolute(settings.instance_dir),
        "rules": [absolute(p) for p in settings.rules],
        "outbox": settings.outbox.model_copy(
            update={"templates": absolute(settings.outbox.templates)}),
    }
    drivers = {name: d.model_copy(update={"ca_file": absolute(d.ca_file)})
               if isinstance(d, RemoteServer) and d.ca_file else d
               for name, d in settings.drivers.items()}
    update["drivers"] = drivers  # a relay's or mailbox's CA file, relative to this file
    if settings.tags:
        keys = {kid: ref.model_copy(update={"file": absolute(ref.file)}) if ref.file else ref
                for kid, ref in settings.tags.keys.items()}
        update["tags"] = settings.tags.model_copy(update={"keys": keys})
    key = settings.console.secret_key
    if key is not None and key.file is not None:
        update["console"] = settings.console.model_copy(
            update={"secret_key": key.model_copy(update={"file": absolute(key.file)})})
    if settings.gateway.starttls:
        tls = settings.gateway.starttls
        tls_abs = TLSSettings(cert=absolute(tls.cert), key=absolute(tls.key))
        update["gateway"] = settings.gateway.model_copy(update={"starttls": tls_abs})
    return settings.model_copy(update=update)
