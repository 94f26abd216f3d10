"""The store's write paths on a real PostgreSQL (the scale-out database): the intake's
prepared statements, redelivery, threading, outbox rows from the rules, and claims that
skip rows another transaction holds (``FOR UPDATE SKIP LOCKED``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers import deliver, make_mail, store_with_accounts
from postgres import cluster, fresh_database
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from engine.decisions import RulesContext
from engine.deliveries import Delivery, Envelope, store_batch
from engine.mime import parse_message
from engine.outbox import claim_due, health, paused, set_paused
from engine.queues import claim
from engine.store.database import writer
from engine.store.models import Message, Outbox
from engine.users import assign_accounts, create_user
from rules.schema import load_rules


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with cluster() as url:
        yield url


@pytest.fixture
def pg(server: str) -> Iterator[Engine]:
    engine = store_with_accounts(fresh_database(server))
    yield engine
    engine.dispose()


def test_messages_are_stored_once_and_replies_join_their_thread(pg: Engine) -> None:
    first = deliver(pg, make_mail("Order 5", message_id="<pg-1@client.test>"))
    again = deliver(pg, make_mail("Order 5", message_id="<pg-1@client.test>"))
    reply = deliver(pg, make_mail("Re: Order 5", message_id="<pg-2@client.test>",
                                  headers="In-Reply-To: <pg-1@client.test>\n"))
    assert again.duplicate and again.message_pk == first.message_pk
    with Session(pg) as session:
        rows = {m.id: m for m in session.scalars(select(Message))}
    assert len(rows) == 2
    assert rows[reply.message_pk].thread_id == rows[first.message_pk].thread_id
    assert rows[first.message_pk].to_addrs == ["support@example.test"]  # a JSON column


def acknowledging(tmp_path: Path) -> RulesContext:
    path = tmp_path / "rules.yaml"
    path.write_text("version: 1\nrules:\n  - {name: ack, type: auto-acknowledge, "
                    "template: ack}\n")
    return RulesContext(load_rules([path]), {1: "support", 2: "sales"})


def test_outbox_claims_skip_rows_another_transaction_holds(pg: Engine, tmp_path: Path) -> None:
    rules = acknowledging(tmp_path)
    now = datetime.now(UTC)
    raws = [make_mail(f"Question {i}", sender=f"c{i}@client.test") for i in range(12)]
    with pg.begin() as conn:
        store_batch(conn, [Delivery(raw, Envelope(f"c{i}@client.test", [(1, "s@x")],
                                                  received_at=now), parse_message(raw, now))
                           for i, raw in enumerate(raws)], rules)
    with pg.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Outbox)).scalar_one() == 12
    holder = pg.connect()
    holder.begin()
    held = claim_due(holder, datetime.now(UTC), 5, True)  # locked until this commits
    with pg.begin() as other:
        taken = claim_due(other, datetime.now(UTC), 20, True)
    holder.commit()
    holder.close()
    assert len(held) == 5 and len(taken) == 7 and not set(held) & set(taken)
    with pg.begin() as conn:
        set_paused(conn, True, "maintenance")
        assert paused(conn) == "maintenance"
        assert health(conn)["rows"]["sending"] == 12


def test_two_agents_claiming_at_once_never_get_the_same_message(pg: Engine) -> None:
    for i in range(30):
        deliver(pg, make_mail(f"Queued {i}"))
    with Session(pg) as session, session.begin():
        ids = [create_user(session, name, "a-long-password-1").id for name in ("ann", "ben")]
        for name in ("ann", "ben"):
            assign_accounts(session, name, ["support"])
    got: dict[int, list[int]] = {uid: [] for uid in ids}

    def agent(uid: int) -> None:
        while (pk := claim(pg, uid, 1, "")) is not None:
            got[uid].append(pk)

    threads = [threading.Thread(target=agent, args=(uid,)) for uid in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    claimed = got[ids[0]] + got[ids[1]]
    assert len(claimed) == 30 and len(set(claimed)) == 30
    with writer(pg).connect() as conn:
        assert conn.execute(select(func.count()).select_from(Message).where(
            Message.state == "assigned")).scalar_one() == 30
