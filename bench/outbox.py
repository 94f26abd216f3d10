"""Outbox benchmark: the sending worker draining auto-acknowledgements to a null relay.

A fresh instance per run (SQLite in a temp dir, tag keys, account ``support``, an
``outbound-relay`` driver, an ``ack.txt`` template with merge fields, a rule that
acknowledges everything) gets N inbound messages stored through ``store_batch`` with the
rules applied, exactly as the gateway stores them, which leaves N pending ``auto-acknowledge``
outbox rows. ``OutboxWorker.run`` then drains them to a null relay: an aiosmtpd server in its
own process that accepts and discards, counting messages and distinct Message-IDs. Only the
drain is timed, from ``run()`` until the last row is recorded ``sent``.

The baseline, same run and same relay: the very bytes and envelopes the worker sent, sent again
by a bare ``aiosmtplib.send`` loop, one connection per message as the worker does; a second
baseline sends them over one reused connection (what connection reuse could gain).
Per-message latency for the worker is one row's ``_handle`` (policy check, compose, send,
bookkeeping), for the baselines one send; ``phases_ms`` splits the worker's time per row.
``--profile PATH`` adds a cProfile'd drain of a second fresh instance (thread hops replaced by
direct calls so one profiler sees everything) and writes its pstats to PATH.

Usage: ``python bench/outbox.py [--messages N] [--json-out PATH] [--profile PATH]``.
``python bench/outbox.py --null-relay`` runs only the null relay (used internally).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the engine packages live at the root
    sys.path.insert(0, str(ROOT))

from bench.benchkit import machine, ms, note, percentile, report  # noqa: E402

RECIPIENT = "support@example.test"
SEED_BATCH = 64  # deliveries per store_batch transaction, like the gateway's groups
WARMUP_MESSAGES = 20  # baseline sends before its timed loops
START_TIMEOUT = 30.0
DRAIN_TIMEOUT_BASE = 120.0  # seconds, plus DRAIN_TIMEOUT_PER_MESSAGE for each message
DRAIN_TIMEOUT_PER_MESSAGE = 0.5
# the worker methods the timers wrap (each row still runs the worker's own code)
WRAPPED = ("_claim", "_policy", "_compose", "_send", "_sent", "_handle")

CONFIG = """\
database:
  url: sqlite:///{db}
gateway:
  smtp_listen: "off"
  lmtp_listen: "off"
  http_listen: "off"
  hostname: postdesk.bench
rules: [rules.yaml]
tags: {{current: k1, keys: {{k1: {{file: tag.secret}}}}}}
drivers:
  relay: {{type: outbound-relay, host: 127.0.0.1, port: {port}, tls: none, timeout: 30}}
accounts:
  - name: support
    addresses: [{recipient}]
    from_name: Example Support
    signature: "-- \\nExample Support, https://example.test/help"
outbox:
  templates: templates
  breaker_per_minute: {breaker}
"""
RULES = """\
version: 1
rules:
  - name: ack-everything
    type: auto-acknowledge
    template: ack
"""
ACK = """\
Dear {{ INB_FROM_NAME }},

we received your message "{{ INB_SUBJECT }}" on {{ INB_RECEIVED_DATE }} and will answer
soon. Your reference: {{ ACK_REFERENCE }}.
"""
BODY = ("Hello, I ordered a replacement charger last week and it still has not arrived.\r\n"
        "The tracking page says the parcel left the warehouse on Monday but nothing since.\r\n"
        "Could you please check what happened and tell me when I can expect it?\r\n")


# ---------------------------------------------------------------------------- null relay


class NullRelay:
    """Accepts and discards; counts messages, distinct Message-IDs and In-Reply-Tos."""

    _MESSAGE_ID = re.compile(rb"(?im)^Message-ID:[ \t]*(\S+)")
    _IN_REPLY_TO = re.compile(rb"(?im)^In-Reply-To:[ \t]*(\S+)")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.messages = 0
        self.recipients = 0
        self.bytes = 0
        self.message_ids: set[bytes] = set()
        self.in_reply_to: set[bytes] = set()

    def snapshot(self) -> dict[str, int]:
        return {"messages": self.messages, "recipients": self.recipients, "bytes": self.bytes,
                "distinct_message_ids": len(self.message_ids),
                "distinct_in_reply_to": len(self.in_reply_to)}

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data: bytes = envelope.original_content or b""
        head = data[:data.find(b"\r\n\r\n") + 2]
        self.messages += 1
        self.recipients += len(envelope.rcpt_tos)
        self.bytes += len(data)
        if found := self._MESSAGE_ID.search(head):
            self.message_ids.add(found.group(1))
        if found := self._IN_REPLY_TO.search(head):
            self.in_reply_to.add(found.group(1))
        return "250 OK"


async def serve_null_relay() -> None:
    """Listen on a free loopback port, print it, then answer ``snapshot`` lines on stdin
    with the counts since the previous snapshot (one JSON line); EOF or SIGTERM stops."""
    from aiosmtpd.smtp import SMTP

    loop = asyncio.get_running_loop()
    handler = NullRelay()
    # a fixed hostname: aiosmtpd would otherwise call socket.getfqdn() per connection
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="null.relay", loop=loop), host="127.0.0.1", port=0)
    print(server.sockets[0].getsockname()[1], flush=True)
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    loop.add_signal_handler(signal.SIGTERM, stdin.feed_eof)
    while line := await stdin.readline():
        if line.strip() == b"snapshot":
            print(json.dumps(handler.snapshot()), flush=True)
            handler.reset()
    server.close()


class RelayProcess:
    """The null relay in its own process (so it never competes for the worker's GIL)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--null-relay"], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert self.proc.stdout is not None
        line = self._readline(START_TIMEOUT)
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"null relay did not start (said {line!r})")
        self.port = int(line)

    def _readline(self, timeout: float) -> str:
        import selectors

        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise RuntimeError("null relay did not answer")
        return self.proc.stdout.readline()

    def snapshot(self) -> dict[str, int]:
        """Counts since the previous snapshot (and reset them)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("snapshot\n")
        self.proc.stdin.flush()
        return json.loads(self._readline(30))  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# ---------------------------------------------------------------------------- instance


def make_instance(workdir: Path, relay_port: int, messages: int) -> Path:
    """Write config, rules, template and tag key into ``workdir``; returns the config path."""
    from engine.tags import generate_secret

    workdir.mkdir(parents=True)
    (workdir / "rules.yaml").write_text(RULES)
    (workdir / "tag.secret").write_text(generate_secret())
    (workdir / "templates").mkdir()
    (workdir / "templates" / "ack.txt").write_text(ACK)
    config = workdir / "postdesk.yaml"
    # the breaker (automatic mails a minute) must not trip inside the measurement
    config.write_text(CONFIG.format(db=workdir / "postdesk.db", port=relay_port,
                                    recipient=RECIPIENT, breaker=messages + 1000))
    return config


def inbound(index: int, tag: str) -> bytes:
    """Inbound message ``index``; each from its own sender (one acknowledgement per sender)."""
    return (f"From: Customer {index} <{tag}{index}@client.test>\r\n"
            f"To: Example Support <{RECIPIENT}>\r\n"
            f"Subject: Where is my order #{100000 + index}?\r\n"
            f"Date: Sun, 22 Nov 2026 10:{index // 60 % 60:02d}:{index % 60:02d} +0000\r\n"
            f"Message-ID: <outbox-bench.{tag}.{index}@client.test>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 7bit\r\n\r\n" + BODY).encode()


@dataclass
class Store:
    """A migrated instance and what storing deliveries with its rules needs."""

    settings: Any
    engine: Any
    context: Any
    account: int

    @classmethod
    def open(cls, config: Path) -> Store:
        """Load the config, migrate, sync accounts, load the rules (as ``serve`` does)."""
        from engine.accounts import sync_accounts
        from engine.config import load_settings, tag_keys
        from engine.decisions import RulesContext
        from engine.procedures import ProcedureRunner
        from engine.store.database import make_engine, upgrade
        from rules.schema import load_rules

        settings = load_settings(config, environ={})
        upgrade(settings.database_url)
        engine = make_engine(settings.database_url,
                             busy_timeout_ms=settings.database.busy_timeout_ms)
        directory = sync_accounts(engine, settings)
        ruleset = load_rules(list(settings.rules), set(directory.names.values()))
        context = RulesContext(ruleset, directory.names,
                               ProcedureRunner(ruleset.procedure_timeout_ms),
                               tag_keys(settings), own_addresses=frozenset(directory.by_address),
                               bounce_local=settings.outbox.bounce_local)
        account = directory.lookup(RECIPIENT)
        assert account is not None
        return cls(settings, engine, context, account)

    def seed(self, messages: int, tag: str) -> None:
        """Store ``messages`` deliveries through ``store_batch`` with the rules applied;
        fails unless that leaves exactly that many more pending auto-acknowledge rows."""
        from engine.deliveries import Delivery, Envelope, store_batch
        from engine.mime import parse_message
        from engine.store.database import writer

        before = self.pending()
        for start in range(0, messages, SEED_BATCH):
            deliveries = []
            for index in range(start, min(start + SEED_BATCH, messages)):
                raw, now = inbound(index, tag), datetime.now(UTC)
                envelope = Envelope(f"{tag}{index}@client.test", [(self.account, RECIPIENT)],
                                    received_at=now)
                deliveries.append(Delivery(raw, envelope, parse_message(raw, now)))
            with writer(self.engine).begin() as conn:
                store_batch(conn, deliveries, self.context)
        if (added := self.pending() - before) != messages:
            raise RuntimeError(f"seeding added {added} pending rows, expected {messages}")

    def pending(self) -> int:
        from sqlalchemy import func, select

        from engine.store.models import Outbox

        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(Outbox).where(
                Outbox.state == "pending", Outbox.kind == "auto-acknowledge")).scalar_one())


# ---------------------------------------------------------------------------- worker


@dataclass
class Timings:
    """Wall time per handled row and per phase of the worker (seconds)."""

    handle: list[float] = field(default_factory=list)
    phases: dict[str, list[float]] = field(default_factory=dict)

    def add(self, phase: str, seconds: float) -> None:
        self.phases.setdefault(phase, []).append(seconds)


def timed_worker(settings: Any, engine: Any) -> Any:
    """An ``OutboxWorker`` that times each row and phase and sets ``done`` once ``target``
    rows are settled. Only wrappers: every row still takes the worker's own code path."""
    from engine.outboxworker import OutboxStats, OutboxWorker

    missing = [name for name in WRAPPED if not callable(getattr(OutboxWorker, name, None))]
    if missing:  # renamed in the engine: the timers (and ``done``) would silently not fire
        raise RuntimeError(f"OutboxWorker has no {', '.join(missing)}: update bench/outbox.py")

    class TimedWorker(OutboxWorker):
        def __init__(self) -> None:
            super().__init__(settings, engine)
            self.reset(0)

        def reset(self, target: int) -> None:
            """Forget counts and timings; ``done`` will mean ``target`` rows settled."""
            self.target = target
            self.stats = OutboxStats()
            self.timings = Timings()
            self.done = asyncio.Event()

        def _phase(self, name: str, call: Callable[..., Any], *args: Any) -> Any:
            begin = time.perf_counter()
            try:
                return call(*args)
            finally:
                self.timings.add(name, time.perf_counter() - begin)

        def _claim(self) -> Any:
            return self._phase("claim", super()._claim)

        def _policy(self, job: Any) -> Any:
            return self._phase("policy", super()._policy, job)

        def _compose(self, job: Any) -> None:
            self._phase("compose", super()._compose, job)

        def _sent(self, job: Any) -> None:
            self._phase("record_sent", super()._sent, job)

        async def _send(self, job: Any) -> None:
            begin = time.perf_counter()
            try:
                await super()._send(job)
            finally:
                self.timings.add("smtp_send", time.perf_counter() - begin)

        async def _handle(self, job: Any) -> None:
            begin = time.perf_counter()
            try:
                await super()._handle(job)
            finally:
                self.timings.handle.append(time.perf_counter() - begin)
                stats = self.stats
                if stats.sent + stats.failed + stats.skipped >= self.target:
                    self.done.set()

    return TimedWorker()


async def drain(worker: Any, messages: int) -> float:
    """Run the worker until ``messages`` rows are settled; returns the seconds it took."""
    worker.reset(messages)
    stopping = asyncio.Event()
    start = time.perf_counter()
    task = asyncio.create_task(worker.run(stopping))
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT_BASE + DRAIN_TIMEOUT_PER_MESSAGE * messages):
            await worker.done.wait()
        seconds = time.perf_counter() - start
    except TimeoutError:
        raise RuntimeError(f"the worker settled {worker.stats.sent} of {messages} rows "
                           f"before the timeout; stats {worker.health()}") from None
    finally:
        stopping.set()
        await task
    return seconds


async def warm_then_drain(store: Store, relay: RelayProcess, messages: int,
                          profiler: cProfile.Profile | None = None) -> tuple[float, Any, int]:
    """Warm the worker up on its own rows (imports, template compile, first connections),
    then seed ``messages`` rows and time their drain; returns (seconds, worker, last
    warm-up row id)."""
    worker = timed_worker(store.settings, store.engine)
    store.seed(WARMUP_MESSAGES, "warmup")
    await drain(worker, WARMUP_MESSAGES)
    relay.snapshot()  # forget the warm-up
    warm_ids = max(r.id for r in outbox_rows(store.engine))
    store.seed(messages, "customer")
    if profiler is None:
        return await drain(worker, messages), worker, warm_ids
    with inline_threads():
        profiler.enable()
        try:
            seconds = await drain(worker, messages)
        finally:
            profiler.disable()
    return seconds, worker, warm_ids


def outbox_rows(engine: Any, after: int = 0) -> list[Any]:
    from sqlalchemy import select

    from engine.store.models import Outbox

    with engine.connect() as conn:
        return list(conn.execute(select(Outbox.id, Outbox.state, Outbox.attempts, Outbox.raw,
                                        Outbox.mail_from, Outbox.rcpt_to)
                                 .where(Outbox.id > after).order_by(Outbox.id)))


def worker_phase(store: Store, relay: RelayProcess,
                 messages: int) -> tuple[dict[str, Any], list[Any]]:
    """The measured drain; its figures and the rows it sent."""
    seconds, worker, warm_ids = asyncio.run(warm_then_drain(store, relay, messages))
    rows = outbox_rows(store.engine, warm_ids)
    states: dict[str, int] = {}
    for row in rows:
        states[row.state] = states.get(row.state, 0) + 1
    sent = states.get("sent", 0)
    timings: Timings = worker.timings
    result = {
        "msgs_per_s": rate(sent, seconds), "seconds": round(seconds, 3),
        "p50_ms": ms(percentile(timings.handle, 50)),
        "p99_ms": ms(percentile(timings.handle, 99)),
        "rows": states, "attempts_max": max((r.attempts for r in rows), default=0),
        "stats": worker.health(),
        # mean ms per row in each phase; "thread_hops_and_loop" is what the phases miss
        "phases_ms": phase_means(timings, seconds, sent),
        "relay": relay.snapshot(),
    }
    return result, rows


def phase_means(timings: Timings, seconds: float, sent: int) -> dict[str, float]:
    if not sent:
        return {}
    out = {name: round(sum(values) * 1000 / sent, 3) for name, values in
           sorted(timings.phases.items())}
    out["total"] = round(seconds * 1000 / sent, 3)
    out["thread_hops_and_loop"] = round(out["total"] - sum(
        v for k, v in out.items() if k != "total"), 3)
    return out


# ---------------------------------------------------------------------------- baseline


@dataclass(frozen=True)
class Outgoing:
    raw: bytes
    sender: str
    recipients: list[str]


async def baseline_per_message(port: int, outgoing: list[Outgoing],
                               hostname: str) -> tuple[float, list[float], int]:
    """Each message on its own connection with ``aiosmtplib.send``, as the worker does."""
    import aiosmtplib

    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    for out in outgoing:
        begin = time.perf_counter()
        try:
            await aiosmtplib.send(out.raw, sender=out.sender, recipients=out.recipients,
                                  hostname="127.0.0.1", port=port, use_tls=False,
                                  start_tls=False, timeout=30, local_hostname=hostname)
        except (aiosmtplib.SMTPException, OSError):
            errors += 1
            continue
        latencies.append(time.perf_counter() - begin)
    return time.perf_counter() - start, latencies, errors


async def baseline_reused(port: int, outgoing: list[Outgoing],
                          hostname: str) -> tuple[float, list[float], int]:
    """All messages over one connection (connect, EHLO once; MAIL/RCPT/DATA each)."""
    import aiosmtplib

    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, use_tls=False, start_tls=False,
                             timeout=30, local_hostname=hostname)
    async with client:
        for out in outgoing:
            begin = time.perf_counter()
            try:
                await client.sendmail(out.sender, out.recipients, out.raw)
            except aiosmtplib.SMTPException:
                errors += 1
                continue
            latencies.append(time.perf_counter() - begin)
    return time.perf_counter() - start, latencies, errors


def baseline_phase(relay: RelayProcess, outgoing: list[Outgoing], hostname: str,
                   send: Callable[[int, list[Outgoing], str],
                                  Awaitable[tuple[float, list[float], int]]]
                   ) -> dict[str, Any]:
    asyncio.run(send(relay.port, outgoing[:WARMUP_MESSAGES], hostname))
    relay.snapshot()  # forget the warm-up
    seconds, latencies, errors = asyncio.run(send(relay.port, outgoing, hostname))
    return {"msgs_per_s": rate(len(latencies), seconds), "seconds": round(seconds, 3),
            "p50_ms": ms(percentile(latencies, 50)), "p99_ms": ms(percentile(latencies, 99)),
            "errors": errors, "relay": relay.snapshot()}


# ---------------------------------------------------------------------------- profile


@contextmanager
def inline_threads() -> Iterator[None]:
    """``asyncio.to_thread`` calls the function directly: one profiler sees it all."""
    original = asyncio.to_thread

    async def direct(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    asyncio.to_thread = direct  # type: ignore[assignment]
    try:
        yield
    finally:
        asyncio.to_thread = original


def profile_phase(workdir: Path, relay: RelayProcess, messages: int, path: Path,
                  top: int = 30) -> dict[str, Any]:
    """Drain a second fresh instance under cProfile; write pstats to ``path``."""
    store = Store.open(make_instance(workdir, relay.port, messages))
    profiler = cProfile.Profile()
    seconds, _, _ = asyncio.run(warm_then_drain(store, relay, messages, profiler))
    store.engine.dispose()
    relay.snapshot()
    profiler.dump_stats(str(path))
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(top)
    note(f"profile of the drain (cumulative, top {top}):\n{text.getvalue()}")
    raw_stats: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = [{"function": f"{short(filename)}:{line}({name})", "calls": calls,
             "tottime_ms_per_msg": round(tottime * 1000 / messages, 3),
             "cumtime_ms_per_msg": round(cumtime * 1000 / messages, 3)}
            for (filename, line, name), (_, calls, tottime, cumtime, _) in raw_stats.items()]
    rows.sort(key=lambda r: r["tottime_ms_per_msg"], reverse=True)
    return {"pstats": str(path), "seconds_profiled": round(seconds, 3),
            "top_tottime": rows[:15]}


def short(filename: str) -> str:
    for marker in ("site-packages/", str(ROOT) + "/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


# ---------------------------------------------------------------------------- run






def rate(count: int, seconds: float) -> float | None:
    return round(count / seconds, 1) if seconds > 0 and count else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None








def run(args: argparse.Namespace) -> dict[str, Any]:
    n = args.messages
    info = machine()
    with tempfile.TemporaryDirectory(prefix="postdesk-outbox-bench-") as tmp:
        relay = RelayProcess()
        try:
            note(f"null relay on 127.0.0.1:{relay.port}; seeding {n} messages")
            store = Store.open(make_instance(Path(tmp) / "run", relay.port, n))
            note(f"warming the worker up on {WARMUP_MESSAGES} rows, then draining {n}")
            worker, rows = worker_phase(store, relay, n)
            store.engine.dispose()
            note(f"  worker: {worker['msgs_per_s']} msgs/s, p50 {worker['p50_ms']} ms, "
                 f"p99 {worker['p99_ms']} ms, rows {worker['rows']}")
            outgoing = [Outgoing(r.raw, r.mail_from, list(r.rcpt_to)) for r in rows
                        if r.raw is not None]
            hostname = store.settings.gateway.hostname
            note("baseline: the same messages, one connection each")
            per_message = baseline_phase(relay, outgoing, hostname, baseline_per_message)
            note(f"  baseline: {per_message['msgs_per_s']} msgs/s")
            note("baseline: the same messages over one reused connection")
            reused = baseline_phase(relay, outgoing, hostname, baseline_reused)
            note(f"  reused connection: {reused['msgs_per_s']} msgs/s")
            profile = profile_phase(Path(tmp) / "profile", relay, n, args.profile) \
                if args.profile else None
        finally:
            relay.stop()
    sizes = [len(o.raw) for o in outgoing]
    result = {
        "benchmark": "outbox", "machine": info, "messages": n, "warmup_messages": WARMUP_MESSAGES,
        "database": "sqlite (fresh per run)",
        "message_bytes_mean": round(sum(sizes) / len(sizes)) if sizes else None,
        "worker_msgs_per_s": worker["msgs_per_s"],
        "baseline_msgs_per_s": per_message["msgs_per_s"],
        "ratio": ratio(worker["msgs_per_s"], per_message["msgs_per_s"]),
        "worker_p50_ms": worker["p50_ms"], "worker_p99_ms": worker["p99_ms"],
        "baseline_p50_ms": per_message["p50_ms"], "baseline_p99_ms": per_message["p99_ms"],
        "baseline_reused_msgs_per_s": reused["msgs_per_s"],
        "ratio_to_reused": ratio(worker["msgs_per_s"], reused["msgs_per_s"]),
        "worker": worker, "baseline": per_message, "baseline_reused": reused,
    }
    if profile is not None:
        result["profile"] = profile
    return result


# ---------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=500, help="outbox rows to drain")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--profile", type=Path, default=None, metavar="PATH",
                        help="also drain a second instance under cProfile; pstats to PATH")
    parser.add_argument("--null-relay", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.messages < 1:
        parser.error("--messages must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.null_relay:
        asyncio.run(serve_null_relay())
        return 0
    return report(run, args)


if __name__ == "__main__":
    sys.exit(main())
