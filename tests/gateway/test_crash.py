"""No data loss: kill -9 the gateway at random points while a client streams 1,000 messages.

After every restart, each message that got a 250 must be in the store exactly once, byte-exact.
The client retries unacknowledged messages like an MTA would, so a commit whose 250 was lost
in the kill must be recognised as the same message, not stored twice.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

from crash_client import message
from helpers import Instance

COUNT = 1000
KILLS = 5


def acknowledged(path: Path) -> dict[int, int]:
    if not path.exists():
        return {}
    pairs = (line.split() for line in path.read_text().splitlines() if line.strip())
    return {int(i): int(q) for i, q in pairs}


def check_store(inst: Instance, acked: dict[int, int]) -> None:
    stored: dict[str, list] = {}
    for msg in inst.messages():
        stored.setdefault(msg.message_id_header, []).append(msg)
    for i, queue_id in acked.items():
        rows = stored.get(f"<crash-{i}@client.test>", [])
        assert len(rows) == 1, f"message {i}: {len(rows)} copies"
        assert rows[0].id == queue_id and rows[0].raw == message(i)
    assert all(len(rows) == 1 for rows in stored.values())


def test_kill_dash_nine_loses_nothing_and_duplicates_nothing(instance: Instance) -> None:
    rng = random.Random(20261122)
    instance.write().start()
    acks = instance.dir / "acks.txt"
    client = subprocess.Popen([sys.executable, str(Path(__file__).parent / "crash_client.py"),
                               str(instance.smtp), str(COUNT), str(acks)])
    try:
        for _ in range(KILLS):
            before = len(acknowledged(acks))
            deadline = time.monotonic() + 60
            # let a random share of the remaining stream through, then kill mid-flight
            target = before + rng.randint(20, max(21, (COUNT - before) // (KILLS + 1)))
            while len(acknowledged(acks)) < target and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(rng.random() * 0.05)
            instance.kill()
            check_store(instance, acknowledged(acks))
            instance.start()
        assert client.wait(timeout=300) == 0
    finally:
        if client.poll() is None:
            client.kill()
    acked = acknowledged(acks)
    assert sorted(acked) == list(range(COUNT))
    instance.stop()
    check_store(instance, acked)
