"""The IMAP polling fallback: mailboxes fetched into the same intake as SMTP mail.

One ``MailboxPoller`` per account that uses an ``imap-poll`` driver. Each round it lists the
INBOX by UID, skips oversized mail, fetches the rest in batches (UID FETCH of a UID range,
BODY.PEEK[]), hands each message to ``Intake.receive`` and, only after the commit, moves it
to the Processed folder (UID MOVE, or COPY + \\Deleted + UID EXPUNGE). A message that cannot
be processed (too big, refused by a rule, or failing to store while others store fine) goes
to the Retry folder with a keyword saying why. Then it waits with IDLE when the server offers
it, else sleeps PollingInterval.

Safety comes from the INBOX itself: it holds exactly the messages not yet moved, and the
intake recognises a message it already stored (Message-ID + body hash), so a crash between
commit and move only means the next round fetches it again, is told it is a duplicate and
moves it. No UID is trusted beyond the session that fetched it (nothing needs to survive a
restart), and a UIDVALIDITY change merely resets the per-message failure counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from engine.accounts import AccountDirectory
from engine.config import Settings
from engine.deliveries import Envelope, Receipt, Rejected
from engine.intake import Intake
from engine.leases import LeaseKeeper, LeaseLost, process_id
from gateway.imapconfig import MailboxSpec, mailboxes
from gateway.imapconn import ConnectionLost, ImapConnection, ImapError, LoginFailed
from gateway.imapstatus import PollerHealth, StatusFile, now_iso

log = logging.getLogger(__name__)
LIST_CHUNK = 500  # UIDs whose sizes are asked at once
BATCH_COUNT = 100  # messages per UID FETCH of bodies
BATCH_BYTES = 8 * 1024 * 1024  # ... and at most this many bytes
MAX_ATTEMPTS = 3  # store failures of one message (while others store) before Retry
BACKOFF_START, BACKOFF_MAX = 0.5, 60.0
LOGIN_BACKOFF = 30.0  # wrong credentials: don't hammer the server (or lock the account)
TOO_BIG, REJECTED, FAILED = "$PostdeskTooBig", "$PostdeskRejected", "$PostdeskFailed"
_RETURN_PATH = re.compile(rb"^Return-Path:[ \t]*<([^>\r\n]*)>", re.IGNORECASE | re.MULTILINE)


class StoreDown(Exception):
    """No message of a batch could be stored: back off, leave them in the INBOX."""


@dataclass
class _Batch:
    """What to do with the UIDs of one drain round, by destination."""

    fetch: list[list[int]] = field(default_factory=list)
    too_big: list[int] = field(default_factory=list)


class MailboxPoller:
    """Polls one mailbox until ``stop()``; one bad mailbox never affects another."""

    def __init__(self, spec: MailboxSpec, intake: Intake, status_dir: Path | None = None,
                 lease: LeaseKeeper | None = None):
        self.spec = spec
        self.intake = intake
        self.lease = lease  # None: this process is the only poller (no database lease)
        self.health = PollerHealth(spec.account, spec.driver,
                                   f"{spec.server.host}:{spec.server.port}", spec.server.user)
        self.status = StatusFile(status_dir, spec.key)
        self.use_move = True  # False: COPY + \Deleted + UID EXPUNGE even if MOVE is offered
        self.use_idle = True  # False: poll every interval even if IDLE is offered
        self._stopping = asyncio.Event()
        self._attempts: dict[int, int] = {}  # uid → store failures, this UIDVALIDITY
        self._uidvalidity: int | None = None
        self._healthy = False

    def stop(self) -> None:
        self._stopping.set()

    async def run(self, once: bool = False) -> bool:
        """Poll until stopped (``once``: drain the INBOX once); False if it ended in error.

        With a lease, poll only while holding it: wait on standby while another process
        does, take over when it gives the lease up or lets it expire."""
        if self.spec.problem:
            self._set("error", self.spec.problem)
            return False
        if self.lease is None:
            return await self._poll(once)
        while not self._stopping.is_set():
            if not await self.lease.try_acquire():
                if once:
                    log.info("imap %s: another process polls it (%s)", self.spec.key,
                             self.lease.current())
                    return True
                self._set("standby")
                await self._sleep(self.lease.retry_every)
                continue
            log.info("imap %s: lease taken by %s", self.spec.key, self.lease.holder)
            try:
                return await self._poll_holding(once)
            except LeaseLost as exc:
                log.warning("imap %s: lease lost (%s); polling stopped", self.spec.key, exc)
                self.health.error(f"lease lost: {exc}", "standby")
            finally:
                await self.lease.release()
        if self.health.state == "standby":  # the status file is the holder's
            self.health.state = "stopped"
        else:
            self._set("stopped")
        return True

    async def _poll_holding(self, once: bool) -> bool:
        """``_poll`` while renewing the lease; a lost lease cancels the polling at once (what
        was committed but not moved is fetched again by the next holder, as a duplicate)."""
        assert self.lease is not None
        polling = asyncio.ensure_future(self._poll(once))
        keeping = asyncio.ensure_future(self.lease.keep())
        try:
            await asyncio.wait({polling, keeping}, return_when=asyncio.FIRST_COMPLETED)
            if keeping.done():
                polling.cancel()
                await asyncio.gather(polling, return_exceptions=True)
                keeping.result()  # raises LeaseLost
            return polling.result()
        finally:
            for task in (polling, keeping):
                task.cancel()
            await asyncio.gather(polling, keeping, return_exceptions=True)

    async def _poll(self, once: bool) -> bool:
        backoff = BACKOFF_START
        while not self._stopping.is_set():
            self._healthy = False
            try:
                await self._session(once)
                if once:
                    return True
            except LeaseLost:
                raise
            except Exception as exc:  # noqa: BLE001 — one mailbox must not stop the others
                delay = self._failed(exc, backoff)
                if once:
                    return False
                backoff = BACKOFF_START if self._healthy else min(backoff * 2, BACKOFF_MAX)
                await self._sleep(max(delay, backoff))
                self.health.reconnects += 1
        self._set("stopped")
        return True

    def _failed(self, exc: Exception, backoff: float) -> float:
        """Record the error; returns the least delay before trying again."""
        if isinstance(exc, LoginFailed):
            self._set("error", str(exc))
            log.error("imap %s: %s", self.spec.key, exc)
            return LOGIN_BACKOFF
        if isinstance(exc, (ImapError, StoreDown, OSError)):
            message = str(exc) or exc.__class__.__name__
        else:
            log.exception("imap %s: unexpected failure", self.spec.key)
            message = f"{exc.__class__.__name__}: {exc}"
        self._set("backoff", message)
        log.warning("imap %s: %s; retrying in %.1f s", self.spec.key, message, backoff)
        return 0.0

    async def _session(self, once: bool) -> None:
        self._set("connecting")
        conn = await ImapConnection.open(self.spec.server)
        try:
            self.health.idle_supported = "IDLE" in conn.capabilities
            for folder in (self.spec.processed_folder, self.spec.retry_folder):
                await conn.ensure_folder(folder)
            self._check_uidvalidity(await conn.select("INBOX"))
            while not self._stopping.is_set():
                self._set("polling")
                fetched = await self._drain(conn)
                self._healthy = True
                self.health.last_poll = self.health.last_success = now_iso()
                self.health.last_error = None
                if once:
                    return
                if not fetched:
                    await self._wait(conn)
        finally:
            self.status.write(self.health, force=True)
            await conn.logout()

    def _check_uidvalidity(self, value: int) -> None:
        """RFC 3501 §2.3.1.1: new UIDVALIDITY → every UID we remember is meaningless."""
        if self._uidvalidity is not None and value != self._uidvalidity:
            log.warning("imap %s: UIDVALIDITY changed %s → %s; rescanning the INBOX",
                        self.spec.key, self._uidvalidity, value)
            self.health.uidvalidity_changes += 1
            self._attempts.clear()
        self._uidvalidity = self.health.uidvalidity = value

    async def _wait(self, conn: ImapConnection) -> None:
        """Until new mail (IDLE), PollingInterval, or stop."""
        idle = self.use_idle and bool(self.health.idle_supported)
        self._set("idle" if idle else "waiting")
        if not idle:
            await self._sleep(self.spec.interval)
            return
        waiting = asyncio.ensure_future(conn.wait_for_news(self.spec.interval))
        stop = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({waiting, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        deadline = asyncio.get_running_loop().time() + self.spec.server.timeout
        while not waiting.done() and asyncio.get_running_loop().time() < deadline:
            conn.interrupt_idle()  # IDLE may still be starting: ask until it ends
            await asyncio.wait({waiting}, timeout=0.1)
        if not waiting.done():
            waiting.cancel()
        if self._stopping.is_set():
            await asyncio.gather(waiting, return_exceptions=True)
        else:
            await waiting

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _drain(self, conn: ImapConnection) -> int:
        """One round over the INBOX; returns how many messages were fetched."""
        uids = await conn.search_uids()
        self.health.pending = len(uids)
        fetched = 0
        for start in range(0, len(uids), LIST_CHUNK):
            if self._stopping.is_set():
                break
            plan = self._plan(await conn.fetch_sizes(uids[start:start + LIST_CHUNK]))
            await self._to_retry(conn, plan.too_big, TOO_BIG)
            fetched += await self._fetch_and_store(conn, plan.fetch)
        return fetched

    def _plan(self, sizes: dict[int, int]) -> _Batch:
        plan, count, volume = _Batch(), BATCH_COUNT, 0
        for uid, size in sorted(sizes.items()):
            if size > self.spec.max_size:
                log.warning("imap %s: UID %d has %d bytes (limit %d): to %s", self.spec.key,
                            uid, size, self.spec.max_size, self.spec.retry_folder)
                plan.too_big.append(uid)
            else:
                if count >= BATCH_COUNT or volume + size > BATCH_BYTES:
                    plan.fetch.append([])
                    count, volume = 0, 0
                plan.fetch[-1].append(uid)
                count, volume = count + 1, volume + size
        return plan

    async def _fetch_and_store(self, conn: ImapConnection, batches: list[list[int]]) -> int:
        """Fetch batch N+1 while batch N is being committed, then move batch N."""
        if not batches:
            return 0
        fetched = 0
        prefetch = asyncio.ensure_future(conn.fetch_bodies(batches[0]))
        try:
            for i in range(len(batches)):
                bodies = await prefetch
                fetched += len(bodies)
                self.health.fetched += len(bodies)
                committing = asyncio.ensure_future(self._commit(bodies))
                if i + 1 < len(batches) and not self._stopping.is_set():
                    prefetch = asyncio.ensure_future(conn.fetch_bodies(batches[i + 1]))
                await self._settle(conn, await committing)
                self.status.write(self.health)
                if self._stopping.is_set():
                    break
        finally:
            if not prefetch.done():
                prefetch.cancel()
        return fetched

    def _check_lease(self) -> None:
        if self.lease is not None and not self.lease.valid():
            raise LeaseLost("expired while polling")

    async def _commit(self, bodies: dict[int, bytes]) -> dict[int, Any]:
        self._check_lease()
        uids = list(bodies)
        outcomes = await asyncio.gather(
            *(self.intake.receive(bodies[uid], self._envelope(uid, bodies[uid])) for uid in uids),
            return_exceptions=True)
        return dict(zip(uids, outcomes, strict=True))

    def _envelope(self, uid: int, raw: bytes) -> Envelope:
        head = raw[:raw.find(b"\r\n\r\n") + 2] if b"\r\n\r\n" in raw else raw[:8192]
        match = _RETURN_PATH.search(head)
        now = datetime.now(UTC)
        server = self.spec.server
        received = (f"Received: from {server.host} (IMAP {server.user} UID {uid})\r\n"
                    f"\tby {self.spec.hostname} (Postdesk) with IMAP id "
                    f"{self._uidvalidity}.{uid};\r\n\t{format_datetime(now)}\r\n")
        return Envelope(mail_from=match.group(1).decode("ascii", "replace") if match else "",
                        recipients=[(self.spec.account_id, self.spec.address)],
                        received_at=now, received_header=received, protocol="IMAP")

    async def _settle(self, conn: ImapConnection, outcomes: dict[int, Any]) -> None:
        """Move what was committed, send refused mail to Retry, count the rest."""
        done = [uid for uid, o in outcomes.items() if isinstance(o, Receipt)]
        refused = [uid for uid, o in outcomes.items() if isinstance(o, Rejected)]
        failed = {uid: o for uid, o in outcomes.items() if isinstance(o, BaseException)}
        for uid in done:
            receipt = outcomes[uid]
            self.health.duplicates += receipt.duplicate
            self.health.stored += not receipt.duplicate
            self.health.needs_attention += receipt.needs_attention and not receipt.duplicate
        for uid in refused:
            log.info("imap %s: UID %d refused by rule %s: to %s", self.spec.key, uid,
                     outcomes[uid].rule, self.spec.retry_folder)
        if done:
            await self._move(conn, done)
        await self._to_retry(conn, refused, REJECTED)
        if failed and not done and not refused:
            raise StoreDown(f"store unavailable: {next(iter(failed.values()))}")
        given_up = []
        for uid, exc in failed.items():
            self._attempts[uid] = self._attempts.get(uid, 0) + 1
            log.warning("imap %s: UID %d not stored (attempt %d): %s", self.spec.key, uid,
                        self._attempts[uid], exc)
            if self._attempts[uid] >= MAX_ATTEMPTS:
                given_up.append(uid)
        await self._to_retry(conn, given_up, FAILED)

    async def _move(self, conn: ImapConnection, uids: list[int]) -> None:
        self._check_lease()
        await conn.move(uids, self.spec.processed_folder, use_move=self.use_move)

    async def _to_retry(self, conn: ImapConnection, uids: list[int], why: str) -> None:
        if uids:
            await conn.add_keyword(uids, why)
            await conn.move(uids, self.spec.retry_folder, use_move=self.use_move)
            self.health.retried += len(uids)
            for uid in uids:
                self._attempts.pop(uid, None)

    def _set(self, state: str, error: str | None = None) -> None:
        changed = state != self.health.state
        if error is not None:
            self.health.error(error, state)
        else:
            self.health.state = state
        # the status file is the holder's to write (a standby on the same instance would
        # overwrite it); ``postdesk status`` reads who holds the lease from the database
        if (changed or error is not None) and self.health.state != "standby":
            self.status.write(self.health, force=True)


class PollerSet:
    """All pollers of a process: started and stopped together, health for /healthz."""

    def __init__(self, specs: list[MailboxSpec], intake: Intake,
                 status_dir: Path | None = None, engine: Engine | None = None):
        """``engine``: take a lease per mailbox in that database (see ``engine.leases``)."""
        holder = process_id()
        self.pollers = [MailboxPoller(spec, intake, status_dir, None if engine is None else
                                      LeaseKeeper(engine, f"imap:{spec.key}",
                                                  spec.lease_seconds, holder))
                        for spec in specs]
        self._tasks: list[asyncio.Task[bool]] = []

    @classmethod
    def from_settings(cls, settings: Settings, directory: AccountDirectory, intake: Intake,
                      only: Sequence[str] = (), engine: Engine | None = None) -> PollerSet:
        return cls(mailboxes(settings, directory, only), intake,
                   settings.instance_dir / "status", engine)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(p.run(), name=f"imap {p.spec.key}")
                       for p in self.pollers]
        for poller in self.pollers:
            log.info("imap %s: polling %s as %s", poller.spec.key, poller.health.server,
                     poller.spec.server.user)

    async def run_once(self) -> bool:
        """Drain every mailbox once, concurrently; True when all succeeded."""
        results = await asyncio.gather(*(p.run(once=True) for p in self.pollers))
        return all(results)

    async def stop(self, grace: float = 10.0) -> None:
        """Let each poller finish its batch and log out; cancel what still hangs (a server
        that stopped answering) after ``grace`` seconds."""
        for poller in self.pollers:
            poller.stop()
        if self._tasks:
            _, hanging = await asyncio.wait(self._tasks, timeout=grace)
            for task in hanging:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def health(self) -> list[dict[str, Any]]:
        return [p.health.as_dict() for p in self.pollers]


__all__ = ["ConnectionLost", "MailboxPoller", "MailboxSpec", "PollerSet", "mailboxes"]
