"""Server processes: pre-fork workers (``gateway.workers: 2``) share the sockets, drain on
SIGTERM and die with the supervisor; the children of ``serve`` die with it too."""

from __future__ import annotations

import contextlib
import os
import signal
import smtplib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from helpers import Instance, make_mail


def _processes(field: int, value: int) -> list[int]:
    """Live processes whose /proc stat field (0: state, 1: parent, 3: session) is ``value``
    (zombies left out: they hold nothing)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
            except OSError:
                continue
            if int(stat[field]) == value and stat[0] != "Z":
                found.append(int(entry))
    return found


def worker_pids(supervisor: int) -> list[int]:
    return _processes(1, supervisor)


def session_pids(leader: int) -> list[int]:
    return _processes(3, leader)


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


def _names(pids: list[int]) -> set[str]:
    names = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            names.add(Path(f"/proc/{pid}/comm").read_text().strip())
    return names


def test_the_children_of_serve_die_with_it(instance: Instance) -> None:
    """SIGKILL to ``serve`` alone: its intake writer and outbox worker (named in
    ``/proc/PID/comm``) and the forkserver that started them all exit too (nothing keeps
    the store or the ports), and a new ``serve`` starts on the same ports."""
    instance.write().start()
    send_many(instance, "s", 2)
    leader = instance.proc.pid  # started in a session of its own
    deadline = time.monotonic() + 20
    while not {"postdesk-writer", "postdesk-outbox"} <= (names := _names(session_pids(leader))):
        assert time.monotonic() < deadline, names  # each child names itself once started
        time.sleep(0.05)
    os.kill(leader, signal.SIGKILL)
    instance.proc.wait()
    instance.proc = None
    deadline = time.monotonic() + 20
    while session_pids(leader) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = session_pids(leader)
    assert left == [], [Path(f"/proc/{pid}/cmdline").read_bytes()[:150] for pid in left]
    instance.start()
    send_many(instance, "after", 2)
    assert len(instance.messages()) == 4
