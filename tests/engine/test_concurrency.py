"""Claims under concurrency: agents taking the next message at once (both databases), and
outbox claims that skip rows another transaction holds (``FOR UPDATE SKIP LOCKED``, the
PostgreSQL scale-out path)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers import deliver, make_mail
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


def acknowledging(tmp_path: Path) -> RulesContext:
    path = tmp_path / "rules.yaml"
    path.write_text("version: 1\nrules:\n  - {name: ack, type: auto-acknowledge, "
                    "template: ack}\n")
    return RulesContext(load_rules([path]), {1: "support", 2: "sales"})


# PostgreSQL only: SQLite has one writer, so a second claimer waits instead of skipping rows
@pytest.mark.backends("postgresql")
def test_outbox_claims_skip_rows_another_transaction_holds(store: Engine,
                                                           tmp_path: Path) -> None:
    rules = acknowledging(tmp_path)
    now = datetime.now(UTC)
    raws = [make_mail(f"Question {i}", sender=f"c{i}@client.test") for i in range(12)]
    with store.begin() as conn:
        store_batch(conn, [Delivery(raw, Envelope(f"c{i}@client.test", [(1, "s@x")],
                                                  received_at=now), parse_message(raw, now))
                           for i, raw in enumerate(raws)], rules)
    with store.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Outbox)).scalar_one() == 12
    holder = store.connect()
    holder.begin()
    held = claim_due(holder, datetime.now(UTC), 5, True)  # locked until this commits
    with store.begin() as other:
        taken = claim_due(other, datetime.now(UTC), 20, True)
    holder.commit()
    holder.close()
    assert len(held) == 5 and len(taken) == 7 and not set(held) & set(taken)
    with store.begin() as conn:
        set_paused(conn, True, "maintenance")
        assert paused(conn) == "maintenance"
        assert health(conn)["rows"]["sending"] == 12


def test_two_agents_claiming_at_once_never_get_the_same_message(store: Engine) -> None:
    for i in range(30):
        deliver(store, make_mail(f"Queued {i}"))
    with Session(store) as session, session.begin():
        ids = [create_user(session, name, "a-long-password-1").id for name in ("ann", "ben")]
        for name in ("ann", "ben"):
            assign_accounts(session, name, ["support"])
    got: dict[int, list[int]] = {uid: [] for uid in ids}

    def agent(uid: int) -> None:
        while (pk := claim(store, uid, 1, "")) is not None:
            got[uid].append(pk)

    threads = [threading.Thread(target=agent, args=(uid,)) for uid in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    claimed = got[ids[0]] + got[ids[1]]
    assert len(claimed) == 30 and len(set(claimed)) == 30
    with writer(store).connect() as conn:
        assert conn.execute(select(func.count()).select_from(Message).where(
            Message.state == "assigned")).scalar_one() == 30
