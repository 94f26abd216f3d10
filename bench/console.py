"""Console benchmark: home page and queue-fragment response times over a large store.

Fills a fresh SQLite store with ``--messages`` rows (default 100,000; executemany in
batches): 2 accounts, 8 classifications, ~10% queued, ~3% assigned, the rest settled, a few
with a priority. Then, through the Flask test client (the whole app: session cookie, login
check, queries, Jinja; no network), times ``GET /`` (home), ``GET /queues`` (the 3-second
poll) and ``POST /next`` (claim) for an agent working both accounts, then the message view:
``GET /messages/<id>`` of a message whose thread holds 5 mails (delivered through the real
parser and threading; text and HTML, two attachments; opening it records a write) and
``GET /messages/<id>/body/<part>`` (one mail's HTML, sanitised for the iframe). Baseline
measured in the same run: ``GET /healthz`` (same stack, one trivial query). Also prints
SQLite's query plans for the queue-count and claim queries (they must use
``ix_messages_queued``).

Usage: ``python bench/console.py [--messages N] [--requests R]``; prints JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert, select  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from console.app import create_app  # noqa: E402
from engine import queues  # noqa: E402
from engine.config import DatabaseSettings, Settings  # noqa: E402
from engine.deliveries import Delivery, Envelope, Receipt, store_batch  # noqa: E402
from engine.mime import parse_message  # noqa: E402
from engine.store.database import make_engine, upgrade  # noqa: E402
from engine.store.models import Account, Message  # noqa: E402
from engine.users import assign_accounts, create_user  # noqa: E402

CLASSES = ["billing", "returns", "shipping", "tech", "legal", "sales", "press", None]
STATES = ["queued"] * 10 + ["assigned"] * 3 + ["resolved"] * 60 + ["sent"] * 25 + ["deleted"] * 2


def fill(url: str, n: int, seed: int = 7) -> float:
    """Insert n messages; returns seconds taken."""
    rng = random.Random(seed)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(insert(Account), [{"id": 1, "name": "support", "addresses": ["s@x.test"]},
                                       {"id": 2, "name": "sales", "addresses": ["b@x.test"]}])
    with Session(engine) as session, session.begin():
        create_user(session, "agent", "bench-password")
        create_user(session, "other", "bench-password")
        assign_accounts(session, "agent", ["support", "sales"])
    t0, start = time.perf_counter(), datetime(2026, 1, 1, tzinfo=UTC)
    batch: list[dict[str, Any]] = []
    for i in range(n):
        state = rng.choice(STATES)
        when = start + timedelta(seconds=i * 30)
        batch.append({"dedupe_key": f"k{i}", "message_id_header": f"<{i}@c.test>",
                      "account_id": 1 + (i % 3 == 0), "classification": rng.choice(CLASSES),
                      "state": state, "priority": 5 if rng.random() < 0.02 else 0,
                      "subject": f"Question {i}", "from_addr": f"c{i}@c.test",
                      "from_name": f"Customer {i}", "date": when, "received_at": when,
                      "raw": b"x" * 200, "body_text": "hello " * 30,
                      "assigned_user_id": rng.choice([1, 2]) if state != "queued" else None})
        if len(batch) == 5000:
            with engine.begin() as conn:
                conn.execute(insert(Message), batch)
            batch = []
    if batch:
        with engine.begin() as conn:
            conn.execute(insert(Message), batch)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    engine.dispose()
    return time.perf_counter() - t0


NEWSLETTER_ROW = ('<tr><td style="padding:8px;color:#333"><a href="https://shop.example/p/{i}">'
                  '<img src="https://cdn.example/p/{i}.jpg" width="120" alt="item {i}"></a>'
                  '</td><td><b>Item {i}</b><p style="font-size:13px">A fine thing, {i}% off. '
                  '<a href="https://shop.example/p/{i}?utm=mail">Buy now</a></p></td></tr>')


def thread_mail(i: int, first: str) -> bytes:
    """Mail ``i`` of a 5-mail thread: even ones with an HTML part (a ~6 KB table layout with
    remote images and styles, as real customer mail is), the first two with an attachment."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = "Dana Whitfield <dana@client.test>"
    msg["To"] = "s@x.test"
    msg["Subject"] = "Refund for invoice 1043" if i == 0 else "Re: Refund for invoice 1043"
    msg["Message-ID"] = f"<thread-{i}@client.test>"
    msg["Date"] = f"Mon, 23 Nov 2026 10:0{i}:00 +0000"
    if i:
        msg["In-Reply-To"], msg["References"] = f"<thread-{i - 1}@client.test>", first
    text = f"Mail {i} of the thread.\n\n" + "I was charged twice for invoice 1043.\n" * 20
    msg.set_content(text)
    if i % 2 == 0:
        rows = "".join(NEWSLETTER_ROW.format(i=k) for k in range(20))
        msg.add_alternative(f"<html><head><style>td{{font-family:Arial}}</style></head><body>"
                            f"<p>Mail {i}: <b>charged twice</b></p><table>{rows}</table>"
                            f"</body></html>", subtype="html")
    if i < 2:
        msg.add_attachment(b"%PDF-1.4 " + b"x" * 20_000, maintype="application",
                           subtype="pdf", filename=f"statement-{i}.pdf")
    return msg.as_bytes()


def add_thread(url: str, n: int = 5) -> list[int]:
    """Deliver an n-mail thread to account 1 the way the gateway does; their ids, in order."""
    engine = make_engine(url)
    ids = []
    for i in range(n):
        raw = thread_mail(i, "<thread-0@client.test>")
        when = datetime(2026, 11, 23, 10, i, tzinfo=UTC)
        envelope = Envelope("dana@client.test", [(1, "s@x.test")], received_at=when)
        with engine.begin() as conn:
            [receipt] = store_batch(conn, [Delivery(raw, envelope, parse_message(raw, when))])
        assert isinstance(receipt, Receipt)
        ids.append(receipt.message_pk)
    engine.dispose()
    return ids


def timed(call: Any, requests: int) -> dict[str, float]:
    samples = []
    for _ in range(requests):
        t = time.perf_counter()
        reply = call()
        samples.append((time.perf_counter() - t) * 1000)
        assert reply.status_code in (200, 303), reply.status_code
    samples.sort()
    return {"p50_ms": round(statistics.median(samples), 2),
            "p95_ms": round(samples[int(len(samples) * 0.95) - 1], 2),
            "max_ms": round(samples[-1], 2), "requests": requests}


def plans(url: str) -> dict[str, list[str]]:
    engine = make_engine(url)
    out = {}
    with engine.connect() as conn:
        count = select(Message.account_id, Message.classification).where(
            Message.state == queues.QUEUED, Message.account_id.in_([1, 2]))
        claim = select(Message.id).where(*queues._in_queue(1, "billing")).order_by(
            Message.priority.desc(), Message.received_at, Message.id).limit(1)
        for name, query in (("queue_counts", count), ("claim_next", claim)):
            sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
            out[name] = [r[-1] for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")]
    engine.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        upgrade(url)
        fill_s = fill(url, args.messages)
        thread = add_thread(url)
        app = create_app(Settings(instance_dir=Path(tmp), database=DatabaseSettings(url=url)))
        client = app.test_client()
        html = client.get("/login").get_data(as_text=True)
        token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]
        client.post("/login", data={"username": "agent", "password": "bench-password",
                                    "csrf_token": token})
        html = client.get("/").get_data(as_text=True)  # a new session, a new token
        token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]
        form = {"account": "1", "classification": "billing", "csrf_token": token}
        result = {
            "messages": args.messages, "fill_seconds": round(fill_s, 2),
            "python": platform.python_version(),
            "baseline_healthz": timed(lambda: client.get("/healthz"), args.requests),
            "home": timed(lambda: client.get("/"), args.requests),
            "queues_fragment": timed(lambda: client.get("/queues",
                                                        headers={"HX-Request": "true"}),
                                     args.requests),
            "get_next": timed(lambda: client.post("/next", data=form), min(args.requests, 100)),
            "message_view": timed(lambda: client.get(f"/messages/{thread[-1]}"), args.requests),
            "message_body": timed(lambda: client.get(f"/messages/{thread[-1]}/body/{thread[0]}"),
                                  args.requests),
            "thread_mails_shown": client.get(f"/messages/{thread[-1]}").get_data(
                as_text=True).count('<details class="part '),
            "plans": plans(url),
        }
        app.extensions["postdesk.engine"].dispose()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
