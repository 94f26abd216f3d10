"""Pre-fork workers (``gateway.workers: 2``): shared sockets, drain on SIGTERM, die with
the supervisor."""

from __future__ import annotations

import os
import signal
import smtplib
import time
from concurrent.futures import ThreadPoolExecutor

from helpers import Instance, make_mail


def worker_pids(supervisor: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()  # noqa: SIM115
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == supervisor:
                children.append(int(entry))
    return children


def send_many(inst: Instance, prefix: str, count: int) -> None:
    def one(i: int) -> None:
        with smtplib.SMTP("127.0.0.1", inst.smtp, timeout=30) as smtp:
            smtp.sendmail("c@client.test", ["support@example.test"],
                          make_mail(f"{prefix} {i}", message_id=f"<{prefix}-{i}@c>"))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count)))


def test_two_workers_share_the_listeners_and_drain_on_sigterm(instance: Instance) -> None:
    instance.write(gateway_extra="  workers: 2\n").start()
    deadline = time.monotonic() + 20
    while len(worker_pids(instance.proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(worker_pids(instance.proc.pid)) == 2
    send_many(instance, "w", 40)
    assert len({m.message_id_header for m in instance.messages()}) == 40
    assert instance.stop() == 0


def test_workers_die_with_a_killed_supervisor(instance: Instance) -> None:
    instance.write(gateway_extra="  workers: 2\n").start()
    send_many(instance, "k", 4)
    deadline = time.monotonic() + 20
    while len(workers := worker_pids(instance.proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(instance.proc.pid, signal.SIGKILL)  # the supervisor alone
    instance.proc.wait()
    instance.proc = None
    deadline = time.monotonic() + 20
    while any(os.path.exists(f"/proc/{pid}") for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(os.path.exists(f"/proc/{pid}") for pid in workers)
    instance.start()  # the ports are free again
    send_many(instance, "after", 2)
    assert len(instance.messages()) == 6
