"""The outbox worker: claims due rows, composes each once, sends it to the relay, records.

Started by ``postdesk serve`` (one per instance) and alone by ``postdesk outbox``. Database
work runs in a thread (sync SQLAlchemy); the SMTP conversation with the relay is aiosmtplib
on the event loop. See ``engine.outbox`` for the row states and the resend policy.

Transient failures (4xx, refused or dropped connection, timeout) retry with exponential
backoff and jitter until ``outbox.give_up_after_hours``; a 5xx fails the row at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import ssl
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiosmtplib
from sqlalchemy import Engine, select, update

from engine import compose
from engine.autoresponse import loop_headers
from engine.bounces import verp_address
from engine.bouncing import SUPPRESS_STATUSES
from engine.config import AccountSettings, Settings, tag_keys
from engine.decisions import RulesContext, decision_columns, redecide
from engine.deliveries import message_columns
from engine.leases import process_id
from engine.mergefields import AckInfo, InboundFields, TemplateError, merge_context
from engine.mime import parse_message
from engine.outbox import (
    PAUSE,
    automatic_rate,
    automatic_sent_since,
    backoff,
    claim_due,
    finish,
    interrupted,
    paused,
    record,
    set_paused,
    suppress,
    suppressed,
)
from engine.procedures import ProcedureRunner
from engine.processes import die_with_parent, name_process
from engine.sqlfields import SqlMergeField, check_query, run_sql_field, sql_engine
from engine.store.database import UNAVAILABLE, make_engine, writer
from engine.store.models import (
    Account,
    Message,
    MessageAccount,
    Outbox,
    OutboxState,
    TagValue,
    TemplateSource,
)
from engine.tags import TagKeys, find_markers, seal, verify
from engine.templates import Templates
from rules.schema import RuleErrors, load_rules

log = logging.getLogger(__name__)
_STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")  # RFC 3463 enhanced status code
DOWN_BACKOFF_MAX = 10.0  # seconds between attempts while the database is down
RECOVER_EVERY = 30.0  # seconds between looks for rows other workers left mid-send
HOLD_AFTER_SEND = "POSTDESK_TEST_HOLD_AFTER_SEND"  # tests: crash between 250 and bookkeeping


class Transient(Exception):
    """Try again later (4xx, connection trouble)."""


class Permanent(Exception):
    """Do not try again (5xx, a template that cannot render)."""


@dataclass
class Job:
    """One claimed row, with what sending it needs."""

    pk: int
    kind: str
    automatic: bool
    account: AccountSettings
    account_id: int
    rcpt: str
    created_at: datetime
    attempts: int
    raw: bytes | None
    mail_from: str
    rcpt_to: list[str]
    message_id: str | None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class OutboxStats:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    skipped: int = 0
    last_error: str | None = None
    paused: str | None = None


class OutboxWorker:
    """Sends the outbox; ``run`` until ``stopping`` is set."""

    def __init__(self, settings: Settings, engine: Engine):
        self.settings = settings
        self.engine = engine
        self.config = settings.outbox
        self._sources: dict[str, tuple[float, str | None]] = {}
        self.templates = Templates(self.template_source)
        self.sql_fields = [SqlMergeField(name, sql, self.config.sql_timeout)
                           for name, sql in self.config.sql_fields.items()]
        self._sql_engine: Engine | None = None
        self.keys: TagKeys | None = tag_keys(settings)
        self.stats = OutboxStats()
        self.holder = process_id()  # names the rows this worker is sending
        with engine.connect() as conn:
            self.accounts = {row.id: row.name for row in conn.execute(
                select(Account.id, Account.name))}

    def health(self) -> dict[str, Any]:
        return {"sent": self.stats.sent, "retried": self.stats.retried,
                "failed": self.stats.failed, "skipped": self.stats.skipped,
                "last_error": self.stats.last_error, "paused": self.stats.paused}

    async def run(self, stopping: asyncio.Event) -> None:
        """Claim and send until ``stopping``; a database outage is waited out (backing off
        up to ``DOWN_BACKOFF_MAX``), and rows other workers left mid-send are taken back
        every ``RECOVER_EVERY`` seconds."""
        down, recovered = 0.0, -RECOVER_EVERY
        while not stopping.is_set():
            try:
                if time.monotonic() - recovered >= RECOVER_EVERY:
                    await asyncio.to_thread(self._recover)
                    recovered = time.monotonic()
                busy = await self.step()
                down = 0.0
            except UNAVAILABLE as exc:  # the database is down or restarting: wait it out
                down = min(max(down * 2, self.config.poll_seconds), DOWN_BACKOFF_MAX)
                log.warning("outbox: database unavailable (%s); retrying in %.1f s",
                            str(exc.orig).strip().splitlines()[0], down)
                busy = 0
            except Exception:  # a bug must not end the worker
                log.exception("outbox round failed; retrying")
                busy = 0
            if not busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), down or self.config.poll_seconds)

    def _recover(self) -> None:
        with writer(self.engine).begin() as conn:
            # between rounds none of our own rows is in hand: one still ``sending`` was
            # cut off by a database outage
            ids = interrupted(conn, mine=self.holder)
        if ids:
            log.warning("outbox rows %s were interrupted mid-send: sending again with the "
                        "same Message-ID", ids)

    async def step(self) -> int:
        """One round: claim due rows and handle each; returns how many were handled."""
        jobs = await asyncio.to_thread(self._claim)
        fresh = [j for j in jobs if j.raw is None and j.kind != "redirect-account"]
        ready = set(map(id, await asyncio.to_thread(self._prepare, fresh))) if fresh else set()
        for job in jobs:
            if job.raw is None and job.kind != "redirect-account" and id(job) not in ready:
                continue  # skipped or failed while preparing
            try:
                await self._handle(job)
            except Exception as exc:  # a bug or a database hiccup: the row is retried
                log.exception("outbox %d: unexpected error", job.pk)
                await asyncio.to_thread(self._retry, job, f"{type(exc).__name__}: {exc}")
        return len(jobs)

    def _claim(self) -> list[Job]:
        now = datetime.now(UTC)
        with writer(self.engine).begin() as conn:
            self.stats.paused = paused(conn)
            budget = self.config.batch
            if self.stats.paused is None:  # the breaker: at most the ceiling a minute
                rate = automatic_rate(conn, now - timedelta(minutes=1))
                budget = min(budget, self.config.breaker_per_minute - rate)
                if budget <= 0:
                    reason = (f"breaker: {rate} automatic mails in the last minute "
                              f"(ceiling {self.config.breaker_per_minute})")
                    set_paused(conn, True, reason)
                    log.error("automatic sending paused: %s; `postdesk outbox resume` "
                              "restarts it", reason)
                    self.stats.paused = reason
            ids = claim_due(conn, now, budget if self.stats.paused is None
                            else self.config.batch, self.stats.paused is None,
                            claimed_by=self.holder, claim_seconds=self.config.claim_seconds)
            table = Outbox.__table__
            rows = conn.execute(select(table).where(table.c.id.in_(ids))
                                .order_by(table.c.id)).all() if ids else []
            return [self._job(row) for row in rows]

    def _job(self, row: Any) -> Job:
        account = self.settings.account(self.accounts.get(row.account_id, ""))
        if account is None:  # removed from the configuration since
            account = AccountSettings(name=f"account-{row.account_id}",
                                      addresses=["postmaster@localhost"])
        return Job(row.id, row.kind, row.automatic, account, row.account_id, row.rcpt,
                   row.created_at, row.attempts, row.raw, row.mail_from, list(row.rcpt_to),
                   row.message_id_header, {"cause": row.cause_message_id,
                                           "thread": row.thread_id, "rule": row.rule,
                                           "template": row.template})

    async def _handle(self, job: Job) -> None:
        if job.kind == "redirect-account":
            await asyncio.to_thread(self._redirect_internal, job)
            return
        try:
            await self._send(job)
        except Transient as exc:
            await asyncio.to_thread(self._retry, job, str(exc))
            return
        except Permanent as exc:
            await asyncio.to_thread(self._fail, job, str(exc))
            return
        if hold := os.environ.get(HOLD_AFTER_SEND):
            await asyncio.sleep(float(hold))
        await asyncio.to_thread(self._sent, job)

    # --- policy and composition (threads) -----------------------------------------------

    def _policy(self, job: Job) -> str | None:
        """Why an automatic row must not be sent (rate limit, suppression list), or None."""
        if not job.automatic or job.kind == "redirect-account":
            return None
        with self.engine.connect() as conn:
            mark = suppressed(conn, job.rcpt)
            if mark is not None:
                return f"suppressed: {mark.reason}"
            if job.kind in ("auto-acknowledge", "auto-reply"):
                allowed, hours = self._limit(job)
                recent = automatic_sent_since(conn, job.account_id, job.rcpt,
                                              datetime.now(UTC) - timedelta(hours=hours), job.pk)
                if recent >= allowed:
                    return (f"rate-limit: {recent} automatic mail(s) to {job.rcpt} in "
                            f"{hours:g} h (at most {allowed})")
        return None

    def _limit(self, job: Job) -> tuple[int, float]:
        """Automatic mails allowed to ``job.rcpt`` and in how many hours: the address's
        (or its @domain's) limit, else the rule's own, else the outbox default."""
        rule = self._action(job).get("limit") or {}
        hours = float(rule.get("window_hours", self.config.auto_window_hours))
        limits = {k.lower(): v for k, v in self.config.auto_limits.items()}
        domain = "@" + job.rcpt.rpartition("@")[2]
        for key in (job.rcpt, domain):
            if key in limits:
                return limits[key], hours
        return int(rule.get("per_sender", self.config.auto_per_sender)), hours

    def _compose(self, job: Job) -> None:
        """Build the message once and store it: every attempt sends these bytes."""
        now = datetime.now(UTC)
        with self.engine.connect() as conn:
            cause = conn.execute(select(Message.raw, Message.received_at, Message.subject)
                                 .where(Message.id == job.extra["cause"])).one()
        headers = loop_headers(job.kind, self.settings.gateway.hostname, job.account.addresses[0])
        if job.kind in ("auto-acknowledge", "auto-reply"):
            inbound = parse_message(cause.raw, cause.received_at)
            marker, tag = self._tag(job)
            context = merge_context(
                account=job.account, inbound=InboundFields.from_parsed(inbound, cause.received_at),
                ack=AckInfo(reference=str(job.extra["cause"]), tag=marker or ""), now=now,
                defaults=self.config.merge_defaults)
            try:
                rendered = self._render(self._template_name(job), context)
            except TemplateError as exc:
                raise Permanent(f"template {job.extra['template']!r}: {exc}") from None
            made = compose.answer(account=job.account, inbound=inbound, rcpt=job.rcpt,
                                  text=rendered.text, html=rendered.html, marker=marker,
                                  hostname=self.settings.gateway.hostname, now=now,
                                  headers=headers)
        elif job.extra.get("mode") == "attach" or self._mode(job) == "attach":
            made = compose.forward_attached(original=cause.raw, subject=cause.subject,
                                            account=job.account, rcpt=job.rcpt,
                                            hostname=self.settings.gateway.hostname, now=now,
                                            headers=headers)
            tag = None
        else:
            made = compose.resend(original=cause.raw, account=job.account, rcpt=job.rcpt,
                                  hostname=self.settings.gateway.hostname, now=now)
            tag = None
        job.raw, job.message_id, job.rcpt_to = made.raw, made.message_id, [job.rcpt]
        job.mail_from = self._return_path(job)
        job.extra["sealed"] = tag  # stored with the row by ``_prepare``

    def _prepare(self, jobs: list[Job]) -> list[Job]:
        """Policy and composition for the round's new rows, stored in ONE transaction (one
        fsync for the round); returns the rows ready to send."""
        ready, skipped, failed = [], [], []
        for job in jobs:
            try:
                reason = self._policy(job)
                if reason is not None:
                    skipped.append((job, reason))
                    continue
                self._compose(job)
                ready.append(job)
            except Permanent as exc:
                failed.append((job, str(exc)))
            except Exception as exc:  # a bug or a database hiccup: this row is retried
                log.exception("outbox %d: unexpected error while composing", job.pk)
                self._retry(job, f"{type(exc).__name__}: {exc}")
        now = datetime.now(UTC)
        with writer(self.engine).begin() as conn:
            for job in ready:
                tag = job.extra.pop("sealed", None)
                if tag is not None:
                    conn.execute(TagValue.__table__.insert().values(
                        reference=tag.reference, blob=tag.blob, created_at=now))
                job.extra["tag"] = tag.reference if tag is not None else None
                conn.execute(update(Outbox).where(Outbox.id == job.pk).values(
                    raw=job.raw, message_id_header=job.message_id, mail_from=job.mail_from,
                    rcpt_to=job.rcpt_to))
            for job, reason in skipped:
                finish(conn, job.pk, OutboxState.SKIPPED.value, error=reason)
                record(conn, job.pk, "auto-skipped", {"reason": reason})
            for job, error in failed:
                finish(conn, job.pk, OutboxState.FAILED.value, error=error)
                record(conn, job.pk, "send-failed", {"error": error})
        self.stats.skipped += len(skipped)
        self.stats.failed += len(failed)
        for job, error in failed:
            log.error("outbox %d failed: %s", job.pk, error)
        return ready

    def _action(self, job: Job) -> dict[str, Any]:
        """The rule action that made the row, from the cause message's decision."""
        with self.engine.connect() as conn:
            decision = conn.execute(select(Message.decision).where(
                Message.id == job.extra["cause"])).scalar_one_or_none() or {}
        return next((a for a in decision.get("actions", [])
                     if a.get("rule") == job.extra["rule"]), {})

    def _mode(self, job: Job) -> str:
        return str(self._action(job).get("mode", "resend"))

    def _redirect_internal(self, job: Job) -> None:
        """Move the message to another account and decide it again with that account's
        rules (its classification and route; a second redirect is not followed)."""
        target = str(self._action(job).get("account", ""))
        ids = {name: pk for pk, name in self.accounts.items()}
        with writer(self.engine).begin() as conn:
            if target not in ids:
                finish(conn, job.pk, OutboxState.FAILED.value, error=f"no account {target!r}")
                record(conn, job.pk, "send-failed", {"error": f"no account {target!r}"})
                return
            cause = job.extra["cause"]
            conn.execute(update(Message).where(Message.id == cause).values(
                account_id=ids[target], state="queued"))
            if conn.execute(select(MessageAccount).where(
                    MessageAccount.message_id == cause,
                    MessageAccount.account_id == ids[target])).first() is None:
                conn.execute(MessageAccount.__table__.insert().values(
                    message_id=cause, account_id=ids[target]))
            decision = self._decide_again(conn, cause)
            if decision is not None:
                columns = decision_columns(decision, datetime.now(UTC))
                if columns["state"] == "redirected":  # redirected again: an agent decides
                    columns["state"] = "queued"
                conn.execute(update(Message).where(Message.id == cause).values(**columns))
            finish(conn, job.pk, OutboxState.SENT.value)
            record(conn, job.pk, "redirected", {"from": job.account.name, "to": target})
        self.stats.sent += 1

    def _decide_again(self, conn: Any, message_pk: int) -> Any:
        if not self.settings.rules:
            return None
        try:
            ruleset = load_rules(list(self.settings.rules), set(self.accounts.values()))
        except RuleErrors as exc:
            log.error("redirect: rules do not load, message kept unclassified: %s", exc)
            return None
        context = RulesContext(ruleset, self.accounts, ProcedureRunner(
            ruleset.procedure_timeout_ms), self.keys)
        return redecide(context, conn, message_pk)

    def template_source(self, name: str) -> str | None:
        """A template by name: the database first, then the templates directory (looked up
        at most once a second: a round of mails asks for the same few many times)."""
        now = time.monotonic()
        cached = self._sources.get(name)
        if cached is not None and cached[0] > now:
            return cached[1]
        source = self._load_source(name)
        self._sources[name] = (now + 1.0, source)
        return source

    def _load_source(self, name: str) -> str | None:
        with self.engine.connect() as conn:
            stored = conn.execute(select(TemplateSource.source).where(
                TemplateSource.name == name)).scalar_one_or_none()
        if stored is not None:
            return str(stored)
        path = self.config.templates / name
        inside = path.resolve().is_relative_to(self.config.templates.resolve())
        return path.read_text(encoding="utf-8") if inside and path.is_file() else None

    def _template_name(self, job: Job) -> str:
        name = str(job.extra["template"])
        for candidate in (name, f"{name}.txt", f"{name}.html"):
            if self.template_source(candidate) is not None:
                return candidate
        raise Permanent(f"no template {name!r} (database or {self.config.templates})")

    def _render(self, name: str, context: dict[str, str]) -> Any:
        """Render with the SQL merge fields the template uses (run read-only, time-limited)."""
        wanted = self.templates.fields(name)
        used = wanted.required | wanted.optional | wanted.unknown
        extra: dict[str, str] = {}
        for field_ in self.sql_fields:
            if used & set(check_query(field_.sql).aliases.values()):
                if self._sql_engine is None:
                    self._sql_engine = sql_engine(self.settings.database_url)
                extra |= run_sql_field(self._sql_engine, field_, context)
        return self.templates.render(name, context, custom=extra,
                                     provided=frozenset(extra))

    def _tag(self, job: Job) -> tuple[str | None, Any]:
        if self.keys is None:
            return None, None
        values: dict[str, str | int] = {"interaction": job.pk, "account": job.account.name}
        if job.extra["thread"] is not None:
            values["thread"] = job.extra["thread"]
        tag = seal(values, self.keys)
        return tag.marker, tag

    def _return_path(self, job: Job) -> str:
        """VERP: a bounce names the exact row that failed (authenticated like tags)."""
        domain = job.account.addresses[0].rpartition("@")[2]
        if self.keys is None:
            return job.account.addresses[0]
        return verp_address(job.pk, domain, self.keys.keys[self.keys.current],
                            local=self.config.bounce_local)

    # --- sending (event loop) -------------------------------------------------------------

    async def _send(self, job: Job) -> None:
        relay = self.settings.relay_for(job.account)
        if relay is None:
            raise Transient(f"account {job.account.name} has no outbound relay configured")
        tls_context = None
        if relay.tls != "none":
            tls_context = ssl.create_default_context(
                cafile=str(relay.ca_file) if relay.ca_file else None)
        password = relay.password.resolve() if relay.password else None
        assert job.raw is not None
        try:
            await aiosmtplib.send(
                job.raw, sender=job.mail_from, recipients=job.rcpt_to, hostname=relay.host,
                port=relay.port, use_tls=relay.tls == "implicit",
                start_tls=relay.tls == "starttls", tls_context=tls_context,
                username=relay.user, password=password, timeout=relay.timeout,
                local_hostname=self.settings.gateway.hostname)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            text = "; ".join(f"{r.code} {r.message}" for r in exc.recipients)
            raise (Permanent if all(c >= 500 for c in codes) else Transient)(text) from None
        except aiosmtplib.SMTPResponseException as exc:
            text = f"{exc.code} {exc.message}"
            raise (Permanent if exc.code >= 500 else Transient)(text) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise Transient(f"{type(exc).__name__}: {exc}") from None

    # --- bookkeeping (threads) ------------------------------------------------------------

    def _sent(self, job: Job) -> None:
        now = datetime.now(UTC)
        assert job.raw is not None
        parsed = parse_message(job.raw, now)
        archived = message_columns(parsed) | {
            "dedupe_key": f"outbox:{job.pk}", "direction": "outbound",
            "account_id": job.account_id, "thread_id": job.extra["thread"],
            "state": "sent", "raw": job.raw, "size": len(job.raw), "received_at": now,
            "envelope_from": job.mail_from, "envelope_to": job.rcpt_to,
            "tag_reference": job.extra.get("tag") or self._marker(parsed.subject)}
        with writer(self.engine).begin() as conn:
            known = conn.execute(select(Message.id).where(
                Message.dedupe_key == archived["dedupe_key"])).scalar_one_or_none()
            pk = known or conn.execute(Message.__table__.insert().values(
                **_columns(archived))).inserted_primary_key[0]
            finish(conn, job.pk, OutboxState.SENT.value, now=now)
            conn.execute(update(Outbox).where(Outbox.id == job.pk)
                         .values(archived_message_id=pk))
            record(conn, job.pk, "sent", {"to": job.rcpt, "message_id": job.message_id,
                                          "attempts": job.attempts})
        self.stats.sent += 1

    def _marker(self, subject: str) -> str | None:
        """The reference of the genuine tag in a subject composed before it reached the
        worker (an agent's reply): kept with the archived copy, like the worker's own."""
        if self.keys is None:
            return None
        return next((ref for m in find_markers(subject) if (ref := verify(m, self.keys))), None)

    def _retry(self, job: Job, error: str) -> None:
        now = datetime.now(UTC)
        give_up = job.created_at + timedelta(hours=self.config.give_up_after_hours)
        with writer(self.engine).begin() as conn:
            if now >= give_up:
                finish(conn, job.pk, OutboxState.FAILED.value, error=f"gave up: {error}")
                record(conn, job.pk, "send-failed", {"error": error, "gave_up": True})
                self.stats.failed += 1
            else:
                delay = backoff(job.attempts, self.config.retry_base_seconds,
                                self.config.retry_max_seconds)
                finish(conn, job.pk, OutboxState.PENDING.value, error=error,
                       retry_at=min(now + timedelta(seconds=delay), give_up))
                self.stats.retried += 1
        self.stats.last_error = error
        log.warning("outbox %d: %s (attempt %d)", job.pk, error, job.attempts)

    def _fail(self, job: Job, error: str) -> None:
        found = _STATUS.search(error)
        status = found.group(1) if found else error[:3]
        with writer(self.engine).begin() as conn:
            finish(conn, job.pk, OutboxState.FAILED.value, error=error, status=status)
            record(conn, job.pk, "send-failed", {"error": error, "status": status})
            if status.startswith(SUPPRESS_STATUSES) and job.rcpt:  # the address is dead
                suppress(conn, job.rcpt, f"refused ({status}) for outbox {job.pk}", status)
        self.stats.failed += 1
        self.stats.last_error = error
        log.error("outbox %d failed: %s", job.pk, error)


def run_worker(settings: Settings, parent: int | None = None) -> None:
    """Run a worker until SIGTERM: ``postdesk outbox``, and the process ``postdesk serve``
    starts beside the gateway (its own process, so composing mail never takes the GIL from
    the SMTP loop). ``parent``: exit with that process."""
    if parent is not None:
        die_with_parent(parent)
        name_process("postdesk-outbox")
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    engine = make_engine(settings.database_url, **settings.database.engine_options())

    async def main() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stopping.set)
        if parent is None:
            loop.add_signal_handler(signal.SIGINT, stopping.set)
        await OutboxWorker(settings, engine).run(stopping)

    try:
        asyncio.run(main())
    finally:
        engine.dispose()


def _columns(values: dict[str, Any]) -> dict[str, Any]:
    names = set(Message.__table__.c.keys())
    return {k: v for k, v in values.items() if k in names}


__all__ = ["PAUSE", "OutboxWorker", "Permanent", "Transient", "run_worker"]
