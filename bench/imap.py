"""IMAP drain benchmark: how fast the poller empties a big INBOX into the store.

Sits at the gateway's IMAP edge: a throwaway Dovecot (``tests/fixtures/start-dovecot.sh``,
needs root and dovecot-imapd) gets the same N messages in two mailboxes. Measured in the same
run, as one JSON document on stdout:

- ``fetch_only``: the baseline, raw IMAP throughput: list sizes and UID FETCH BODY.PEEK[] in
  the poller's batches, storing and moving nothing;
- ``null_store``: the poller draining mailbox A with an intake that stores nothing (fetch,
  then UID MOVE to Processed): the IMAP side of the pipeline alone;
- ``drain``: the real thing on mailbox B, ``MailboxPoller`` into the real intake (writer
  process, SQLite with synchronous=FULL), as ``postdesk poll`` runs it.

Usage: ``python bench/imap.py [--messages 5000] [--size 2048] [--database URL]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from dovecot import PASSWORD, Dovecot  # noqa: E402

from engine.deliveries import Envelope, Receipt  # noqa: E402
from engine.intake import Intake  # noqa: E402
from engine.store.database import upgrade  # noqa: E402
from gateway.imap import BATCH_COUNT, LIST_CHUNK, MailboxPoller, MailboxSpec  # noqa: E402
from gateway.imapconn import ImapConnection, ServerSettings  # noqa: E402

WORDS = ["parcel", "order", "refund", "invoice", "tracking", "delivery", "address", "account",
         "password", "charger", "warranty", "replacement", "broken", "screen", "battery",
         "support", "thanks"]


def message(i: int, size: int) -> bytes:
    words = " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(size // 7))
    lines = "\r\n".join(words[k:k + 72] for k in range(0, len(words), 72))
    return (f"From: Customer {i} <c{i}@client.test>\r\nTo: support@example.test\r\n"
            f"Subject: Order {i} question\r\nMessage-ID: <bench-{i}@client.test>\r\n"
            f"Date: Sun, 22 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n{lines}\r\n").encode()


class NullIntake:
    """Accepts every message at once without storing it (the IMAP side alone)."""

    async def receive(self, raw: bytes, envelope: Envelope) -> Receipt:
        return Receipt(0, duplicate=False, needs_attention=False)


def server(dovecot: Dovecot, user: str) -> ServerSettings:
    return ServerSettings("127.0.0.1", dovecot.port, "none", user, PASSWORD, 120.0)


def spec(dovecot: Dovecot, user: str) -> MailboxSpec:
    return MailboxSpec("support", 1, "support@example.test", "mailbox", server(dovecot, user),
                       60, "Processed", "Retry", 25 * 1024 * 1024, "bench.test")


async def fetch_only(dovecot: Dovecot, user: str) -> tuple[int, float]:
    """Raw IMAP: sizes and bodies in the poller's batches, nothing stored or moved."""
    started = time.perf_counter()
    conn = await ImapConnection.open(server(dovecot, user))
    await conn.select("INBOX")
    uids = await conn.search_uids()
    fetched = 0
    for start in range(0, len(uids), LIST_CHUNK):
        chunk = list(await conn.fetch_sizes(uids[start:start + LIST_CHUNK]))
        for at in range(0, len(chunk), BATCH_COUNT):
            fetched += len(await conn.fetch_bodies(chunk[at:at + BATCH_COUNT]))
    await conn.logout()
    return fetched, time.perf_counter() - started


async def drain(dovecot: Dovecot, user: str, intake: Any) -> tuple[int, float]:
    started = time.perf_counter()
    poller = MailboxPoller(spec(dovecot, user), intake)
    if not await poller.run(once=True):
        raise RuntimeError(f"drain failed: {poller.health.last_error}")
    return poller.health.fetched, time.perf_counter() - started


def cell(name: str, count: int, seconds: float) -> dict[str, Any]:
    return {"phase": name, "messages": count, "seconds": round(seconds, 3),
            "msgs_per_s": round(count / seconds, 1)}


async def run(args: argparse.Namespace, dovecot: Dovecot, workdir: Path) -> dict[str, Any]:
    raws = [message(i, args.size) for i in range(args.messages)]
    users = [dovecot.new_user(), dovecot.new_user()]
    for user in users:
        dovecot.deliver_many(user, raws)
        assert dovecot.count(user) == args.messages  # Dovecot indexes the new mail now
    url = args.database or f"sqlite:///{workdir / 'bench.db'}"
    upgrade(url)
    from sqlalchemy import insert

    from engine.store.database import make_engine
    from engine.store.models import Account
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(insert(Account), [{"id": 1, "name": "support",
                                        "addresses": ["support@example.test"]}])
    engine.dispose()
    baseline = cell("fetch_only", *await fetch_only(dovecot, users[0]))
    null = cell("null_store", *await drain(dovecot, users[0], NullIntake()))
    intake = Intake(url, isolate=True)
    await intake.start()
    try:
        real = cell("drain", *await drain(dovecot, users[1], intake))
    finally:
        await intake.stop()
    left = [dovecot.count(u) for u in users]
    return {
        "bench": "imap", "messages": args.messages, "size": len(raws[0]),
        "batch": BATCH_COUNT, "cells": [baseline, null, real],
        "drain_vs_fetch_only": round(real["msgs_per_s"] / baseline["msgs_per_s"], 3),
        "inbox_left": left,
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=2048, help="approximate bytes a message")
    parser.add_argument("--database", help="default: a fresh SQLite file")
    args = parser.parse_args()
    dovecot = Dovecot()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-imap-") as workdir:
            result = asyncio.run(run(args, dovecot, Path(workdir)))
    finally:
        dovecot.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
