"""Scale-out on one PostgreSQL: two gateways and two outbox workers sharing the database.

5,000 messages go to both gateways at once, 500 of them to both (the same bytes, at the same
moment, as an MTA retrying on another host would): each is stored exactly once, each gets
exactly one acknowledgement through the relay, and two agents pulling "get next" at the same
time never get the same message.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from email.parser import BytesHeaderParser
from pathlib import Path

import aiosmtplib
from databases import PostgresServer
from helpers import Instance, make_mail
from outboxkit import prepare
from relay import Relay
from rolekit import Role
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from engine.queues import claim
from engine.store.models import Message, Outbox
from engine.users import assign_accounts, create_user

MESSAGES = 5000
TWICE = 500  # delivered to both gateways at the same moment
CONNECTIONS = 10  # per gateway
ACK_RULES = ("version: 1\nrules:\n  - {name: ack, type: auto-acknowledge, accounts: [support], "
             "template: ack}\n")


def nodes(tmp_path: Path, relay: Relay, url: str, count: int) -> list[Instance]:
    """``count`` configurations of one installation (one database, one tag secret)."""
    made: list[Instance] = []
    for i in range(count):
        node = Instance(tmp_path / f"node{i}", db_url=url)
        prepare(node, relay, ACK_RULES, breaker_per_minute=1_000_000, poll_seconds=0.05)
        if made:
            (node.dir / "tag.secret").write_bytes((made[0].dir / "tag.secret").read_bytes())
        made.append(node)
    return made


async def send_all(ports: list[int], mails: list[tuple[str, bytes]],
                   twice: set[int]) -> Counter[str]:
    """Each message to one gateway (alternating); those in ``twice`` to both at once."""
    replies: Counter[str] = Counter()
    work: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(mails)):
        work.put_nowait(index)

    async def one(client: aiosmtplib.SMTP, index: int) -> None:
        sender, raw = mails[index]
        try:
            await client.sendmail(sender, ["support@example.test"], raw)
            replies["250"] += 1
        except aiosmtplib.SMTPResponseException as exc:
            replies[str(exc.code)] += 1

    async def connection(first: int) -> None:
        # a pair of connections, one to each gateway: a message in ``twice`` goes to both
        pair = [aiosmtplib.SMTP(hostname="127.0.0.1", port=ports[(first + k) % len(ports)],
                               timeout=60)
                for k in range(2)]
        for client in pair:
            await client.connect()
        while not work.empty():
            index = work.get_nowait()
            if index in twice:
                await asyncio.gather(one(pair[0], index), one(pair[1], index))
            else:
                await one(pair[index % 2], index)
        for client in pair:
            await client.quit()

    await asyncio.gather(*(connection(i) for i in range(CONNECTIONS)))
    return replies


class Agents:
    """Two agents pulling "get next" in a loop while mail arrives, each on its own thread."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        with Session(engine) as session, session.begin():
            self.users = [create_user(session, name, "a-long-password-1").id
                          for name in ("ann", "ben")]
            for name in ("ann", "ben"):
                assign_accounts(session, name, ["support"])
        self.got: dict[int, list[int]] = {uid: [] for uid in self.users}
        self.arrived = threading.Event()  # set when every message has been sent
        self.threads = [threading.Thread(target=self._pull, args=(uid,)) for uid in self.users]
        for thread in self.threads:
            thread.start()

    def _pull(self, uid: int) -> None:
        while True:
            done = self.arrived.is_set()  # read before claiming: no message can slip past
            if (pk := claim(self.engine, uid, 1, "")) is not None:
                self.got[uid].append(pk)
            elif done:
                return
            else:
                time.sleep(0.02)

    def join(self) -> list[int]:
        self.arrived.set()
        for thread in self.threads:
            thread.join(300)
        return [pk for uid in self.users for pk in self.got[uid]]


def test_two_gateways_and_two_outbox_workers_store_and_answer_each_message_once(
        tmp_path: Path, postgres_server: PostgresServer, relay: Relay) -> None:
    url = postgres_server.create()  # empty: the first gateway to start migrates it
    first, second = nodes(tmp_path, relay, url, 2)
    engine = first.engine
    roles: list[Role] = []
    try:
        for i, node in enumerate((first, second)):
            roles.append(Role(node, "gateway", name=f"gateway{i}").wait_port(node.smtp))
            roles.append(Role(node, "outbox", name=f"outbox{i}"))
        agents = Agents(engine)
        mails = [(f"c{i}@client.test",
                  make_mail(f"Question {i}", sender=f"c{i}@client.test",
                            message_id=f"<scale-{i}@client.test>")) for i in range(MESSAGES)]
        twice = set(range(0, MESSAGES, MESSAGES // TWICE))
        replies = asyncio.run(send_all([first.smtp, second.smtp], mails, twice))
        assert replies == {"250": MESSAGES + len(twice)}

        with Session(engine) as session:
            ids = session.execute(select(Message.message_id_header).where(
                Message.direction == "inbound")).scalars().all()
        assert len(ids) == MESSAGES and len(set(ids)) == MESSAGES

        claimed = agents.join()
        assert len(claimed) == MESSAGES and len(set(claimed)) == MESSAGES
        assert all(agents.got.values())  # both really pulled

        received = relay.wait_for(MESSAGES, timeout=240)
        assert len(received) == MESSAGES
        answered = Counter(BytesHeaderParser().parsebytes(r.raw)["In-Reply-To"]
                           for r in received)
        with Session(engine) as session:
            retried = session.execute(select(Outbox.id, Outbox.attempts, Outbox.last_error)
                                      .where(Outbox.attempts > 1)).all()
        assert answered == {f"<scale-{i}@client.test>": 1 for i in range(MESSAGES)}, retried
        with Session(engine) as session:
            states = dict(session.execute(select(Outbox.state, func.count())
                                          .group_by(Outbox.state)).all())
        assert states == {"sent": MESSAGES}
    finally:
        codes = [role.stop(60) for role in roles]
    assert codes == [0] * len(roles), "\n".join(role.log()[-2000:] for role in roles)
