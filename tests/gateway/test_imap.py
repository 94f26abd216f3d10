"""The IMAP poller against a real Dovecot: exactly once, Processed/Retry, IDLE, TLS, failures.

Each test logs in as a fresh Dovecot user (an empty mailbox) and runs ``MailboxPoller`` in
this process over the real intake (writer thread), on SQLite and PostgreSQL. Process-level
behaviour (kill -9, ``postdesk serve``/``poll``/``status``) is in ``test_imap_cli.py``.
"""

from __future__ import annotations

import asyncio
import imaplib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from databases import Backend
from dovecot import PASSWORD, Dovecot
from helpers import accounts_added, deliver, make_mail
from sqlalchemy import Engine, func, select

from engine.decisions import RuleFiles
from engine.intake import Intake
from engine.store.database import make_engine
from engine.store.models import Message
from gateway.imap import MailboxPoller, MailboxSpec, PollerSet
from gateway.imapconn import ServerSettings

REJECT_RULES = """\
version: 1
rules:
  - name: no-spam
    type: reject
    when: {header.X-Spam-Flag: {equals: "YES"}}
    message: spam is not accepted
"""


def spec(dovecot: Dovecot, user: str, **changes: object) -> MailboxSpec:
    server = ServerSettings("127.0.0.1", dovecot.port, "none", user, PASSWORD, 10.0)
    base = MailboxSpec("support", 1, "support@example.test", "mailbox", server, 60,
                       "Processed", "Retry", 1_000_000, "postdesk.test")
    server_changes = {k: changes.pop(k) for k in list(changes) if hasattr(server, k)}
    return replace(base, server=replace(server, **server_changes), **changes)


@pytest.fixture
async def store(database: Backend, tmp_path: Path) -> AsyncIterator[tuple[Intake, Engine]]:
    url = database.fresh(tmp_path, accounts_added)
    engine = make_engine(url)
    intake = Intake(url)
    await intake.start()
    yield intake, engine
    await intake.stop()
    engine.dispose()
    database.drop(url)


def stored_ids(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(select(Message.message_id_header, func.count())
                            .group_by(Message.message_id_header))
        return dict(rows.all())


def _holds(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except (OSError, RuntimeError, imaplib.IMAP4.error):  # e.g. the server is restarting
        return False


async def wait_until(check: Callable[[], bool], timeout: float = 30.0,
                     state: Callable[[], object] | None = None) -> None:
    """Until ``check()`` holds; the timeout error shows ``state()`` (e.g. the poller's health)."""
    deadline = time.monotonic() + timeout
    while not _holds(check):
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met in {timeout:g} s"
                               + (f": {state()}" if state else ""))
        await asyncio.sleep(0.05)


def mails(prefix: str, count: int) -> list[bytes]:
    return [make_mail(f"{prefix} {i}", message_id=f"<{prefix}-{i}@client.test>",
                      body=f"Message number {i}.\n" * 20) for i in range(count)]


async def test_200_messages_are_stored_exactly_once_and_moved_to_processed(
        dovecot: Dovecot, store: tuple[Intake, Engine]) -> None:
    intake, engine = store
    user = dovecot.new_user()
    malformed = (b"From: broken@client.test\r\nMessage-ID: <malformed@client.test>\r\n"
                 b"Content-Type: multipart/mixed; boundary=\"nope\"\r\n\r\n--nope\r\n"
                 b"Content-Type: text/plain; charset=x-unknown\r\n\r\n\xff\xfe half")
    dovecot.deliver_many(user, [*mails("bulk", 200), malformed])
    poller = MailboxPoller(spec(dovecot, user), intake)
    assert await poller.run(once=True)
    ids = stored_ids(engine)
    assert len(ids) == 201 and set(ids.values()) == {1}
    assert dovecot.count(user, "INBOX") == 0
    assert dovecot.count(user, "Processed") == 201
    assert dovecot.count(user, "Retry") == 0
    health = poller.health
    assert (health.fetched, health.stored, health.duplicates) == (201, 201, 0)
    # malformed MIME is never refused: it is stored (flagged if the pipeline needed it)
    assert "<malformed@client.test>" in ids
    # a second round finds nothing new and stores nothing twice
    assert await MailboxPoller(spec(dovecot, user), intake).run(once=True)
    assert stored_ids(engine) == ids


async def test_stored_but_not_moved_is_moved_without_storing_again(
        dovecot: Dovecot, store: tuple[Intake, Engine]) -> None:
    intake, engine = store
    user = dovecot.new_user()
    raw = make_mail("Crashed before the move", message_id="<half-done@client.test>")
    deliver(engine, raw)  # committed by an earlier run that died before UID MOVE
    dovecot.deliver(user, raw)
    poller = MailboxPoller(spec(dovecot, user), intake)
    assert await poller.run(once=True)
    assert stored_ids(engine) == {"<half-done@client.test>": 1}
    assert (poller.health.stored, poller.health.duplicates) == (0, 1)
    assert dovecot.count(user, "Processed") == 1 and dovecot.count(user, "INBOX") == 0


async def test_unprocessable_mail_goes_to_retry_with_a_keyword(
        dovecot: Dovecot, database: Backend, tmp_path: Path) -> None:
    url = database.fresh(tmp_path, accounts_added)
    engine = make_engine(url)
    (tmp_path / "rules.yaml").write_text(REJECT_RULES)
    intake = Intake(url, rules=RuleFiles([str(tmp_path / "rules.yaml")],
                                         {1: "support", 2: "sales"}))
    await intake.start()
    try:
        user = dovecot.new_user()
        big = make_mail("Huge", message_id="<huge@client.test>", body="x" * 80 + "\n" * 3000)
        spam = make_mail("Buy now", message_id="<spam@client.test>",
                         headers="X-Spam-Flag: YES\n")
        good = make_mail("Fine", message_id="<fine@client.test>")
        dovecot.deliver_many(user, [big, spam, good])
        poller = MailboxPoller(spec(dovecot, user, max_size=len(good) + 1000), intake)
        assert await poller.run(once=True)
        assert stored_ids(engine) == {"<fine@client.test>": 1}
        assert sorted(dovecot.message_ids(user, "Retry")) == ["<huge@client.test>",
                                                              "<spam@client.test>"]
        flags = " ".join(dovecot.flags(user, "Retry"))
        assert "$PostdeskTooBig" in flags and "$PostdeskRejected" in flags
        assert dovecot.count(user, "Processed") == 1 and poller.health.retried == 2
    finally:
        await intake.stop()
        engine.dispose()


async def test_copy_and_expunge_when_move_is_not_used(
        dovecot: Dovecot, store: tuple[Intake, Engine]) -> None:
    intake, engine = store
    user = dovecot.new_user()
    dovecot.deliver_many(user, mails("copy", 30))
    poller = MailboxPoller(spec(dovecot, user, processed_folder="Done/Support"), intake)
    poller.use_move = False
    assert await poller.run(once=True)
    assert len(stored_ids(engine)) == 30
    assert dovecot.count(user, "INBOX") == 0 and dovecot.count(user, "Done/Support") == 30


async def test_idle_delivers_a_new_message_without_waiting_for_the_interval(
        dovecot: Dovecot, store: tuple[Intake, Engine]) -> None:
    intake, engine = store
    user = dovecot.new_user()
    poller = MailboxPoller(spec(dovecot, user, interval=600), intake)
    task = asyncio.ensure_future(poller.run())
    try:
        await wait_until(lambda: poller.health.state == "idle", 10)
        assert poller.health.idle_supported
        await asyncio.sleep(0.3)  # really idling
        started = time.monotonic()
        dovecot.deliver(user, make_mail("Pushed", message_id="<pushed@client.test>"))
        await wait_until(lambda: "<pushed@client.test>" in stored_ids(engine), 10)
        assert time.monotonic() - started < 5
        await wait_until(lambda: dovecot.count(user, "Processed") == 1, 10)
    finally:
        poller.stop()
        await asyncio.wait_for(task, 15)
    assert poller.health.state == "stopped"


async def test_without_idle_new_mail_comes_with_the_next_poll(
        dovecot: Dovecot, store: tuple[Intake, Engine]) -> None:
    intake, engine = store
    user = dovecot.new_user()
    poller = MailboxPoller(spec(dovecot, user, interval=1), intake)
    poller.use_idle = False  # as with a server that does not offer IDLE
    task = asyncio.ensure_future(poller.run())
    try:
        await wait_until(lambda: poller.health.state == "waiting", 10)
        dovecot.deliver(user, make_mail("Polled", message_id="<polled@client.test>"))
        await wait_until(lambda: "<polled@client.test>" in stored_ids(engine), 10)
    finally:
        poller.stop()
        await asyncio.wait_for(task, 15)


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
async def test_tls_with_the_self_signed_ca_given_explicitly(
        dovecot: Dovecot, store: tuple[Intake, Engine], tls: str) -> None:
    intake, engine = store
    user = dovecot.new_user()
    dovecot.deliver(user, make_mail("Over TLS", message_id=f"<tls-{tls}@client.test>"))
    port = dovecot.ssl_port if tls == "implicit" else dovecot.port
    untrusted = MailboxPoller(spec(dovecot, user, tls=tls, port=port), intake)
    assert not await untrusted.run(once=True)  # verified by default: not in the system store
    assert "not trusted" in (untrusted.health.last_error or "")
    assert stored_ids(engine) == {}
    trusted = MailboxPoller(spec(dovecot, user, tls=tls, port=port, ca_file=dovecot.cafile),
                            intake)
    assert await trusted.run(once=True), trusted.health.last_error
    assert stored_ids(engine) == {f"<tls-{tls}@client.test>": 1}


async def test_wrong_password_is_reported_and_other_accounts_go_on(
        dovecot: Dovecot, store: tuple[Intake, Engine]) -> None:
    intake, engine = store
    good_user, bad_user = dovecot.new_user(), dovecot.new_user()
    pollers = PollerSet([spec(dovecot, bad_user, password="wrong", driver="bad"),
                         spec(dovecot, good_user, account="sales", account_id=2)], intake)
    await pollers.start()
    try:
        dovecot.deliver(good_user, make_mail("Still works", message_id="<alive@client.test>"))
        await wait_until(lambda: "<alive@client.test>" in stored_ids(engine))
        bad, good = pollers.health()
        await wait_until(lambda: pollers.health()[0]["state"] == "error")
        bad = pollers.health()[0]
        assert "AUTHENTICATIONFAILED" in bad["last_error"] and bad_user in bad["last_error"]
        assert good["last_error"] is None and good["account"] == "sales"
    finally:
        await pollers.stop()


async def test_a_move_the_server_leaves_unanswered_is_given_up_and_done_later(
        dovecot: Dovecot, store: tuple[Intake, Engine]) -> None:
    """UID MOVE waits while another process holds the Processed folder's lock (aioimaplib puts
    no timeout on it): after ``timeout`` the poller drops the session and tries again, and once
    the lock is gone every message is moved, stored once."""
    intake, engine = store
    user = dovecot.new_user()
    dovecot.deliver_many(user, mails("locked", 5))
    poller = MailboxPoller(spec(dovecot, user, interval=600, timeout=2.0), intake)
    task = None
    try:
        with dovecot.folder_locked(user, "Processed"):
            task = asyncio.ensure_future(poller.run())
            await wait_until(lambda: "no answer" in (poller.health.last_error or ""), 30,
                             lambda: poller.health)
            assert len(stored_ids(engine)) == 5 and dovecot.count(user, "INBOX") == 5
        await wait_until(lambda: dovecot.count(user, "INBOX") == 0, 30, lambda: poller.health)
    finally:
        poller.stop()
        if task is not None:
            await asyncio.wait_for(task, 15)
    ids = stored_ids(engine)
    assert len(ids) == 5 and set(ids.values()) == {1}, poller.health
    assert set(dovecot.message_ids(user, "Processed")) == set(ids), poller.health
    assert poller.health.reconnects >= 1


async def test_server_killed_mid_batch_and_new_uidvalidity_lose_and_duplicate_nothing(
        store: tuple[Intake, Engine]) -> None:
    intake, engine = store
    server = Dovecot()  # its own server: this test stops it
    try:
        user = server.new_user()
        server.deliver_many(user, mails("restart", 600))
        poller = MailboxPoller(spec(server, user, interval=600), intake)
        task = asyncio.ensure_future(poller.run())
        loop = asyncio.get_running_loop()
        await wait_until(lambda: poller.health.stored >= 100, 30)
        server.kill()  # mid-batch: commits in flight, moves not done
        assert poller.health.stored < 600, "drained before the server went away"
        maildir = server.dir / "mail" / user / "Maildir"
        for index in [maildir / "dovecot-uidlist", *maildir.glob("dovecot.index*")]:
            index.unlink(missing_ok=True)  # the mailbox is rebuilt: a new UIDVALIDITY
        # An imap process killed while it rewrote a folder's uidlist (the INBOX's or the
        # Processed folder's, in a MOVE) leaves that dotlock behind, and Dovecot honours it for
        # 2 minutes: the lock file holds the new list, not a PID, so it cannot tell its writer
        # died. The rebuild after the crash removes it too.
        for lock in maildir.glob("**/dovecot-uidlist.lock"):
            lock.unlink(missing_ok=True)
        await asyncio.sleep(0.3)  # down for a moment: the poller backs off and retries
        await loop.run_in_executor(None, server.start)
        await wait_until(lambda: server.count(user, "INBOX") == 0
                         and len(stored_ids(engine)) == 600, 60, lambda: poller.health)
        poller.stop()
        await asyncio.wait_for(task, 15)
        ids = stored_ids(engine)
        assert len(ids) == 600 and set(ids.values()) == {1}, poller.health
        # a server killed inside UID MOVE may have copied a batch without expunging it from
        # the INBOX: that batch is moved again (stored once), so Processed may hold it twice
        assert set(server.message_ids(user, "Processed")) == set(ids), poller.health
        assert poller.health.reconnects >= 1, poller.health
        assert poller.health.uidvalidity_changes == 1, poller.health
    finally:
        server.close()
