"""Ingest benchmark: the inline SMTP gateway against a null aiosmtpd handler, same run.

Sits outside the pipeline: it drives ``postdesk serve`` from the network edge exactly as an
MTA would (loopback SMTP, PIPELINING of MAIL/RCPT/DATA) and compares it with a baseline
measured in the same run, a null aiosmtpd handler in its own process that answers 250 at once.
For every cell (message size x concurrent connections) it reports msgs/s for both servers,
their ratio and the gateway's DATA->250 latency (p50, p99), as one JSON document on stdout.
The two are measured in alternating rounds and the ratio is the median of the rounds' ratios:
on a shared machine the speed of the moment drifts by a third within a minute, and a pair
measured seconds apart shares it. Each cell gets a fresh temp directory, database and
gateway process so cells are independent.

Usage: ``python bench/ingest.py [--messages N] [--sizes 1024,20480] [--concurrency 1,20]
[--rules FILE] [--role serve|gateway] [--database URL|postgresql] [--rounds 5]``.
``python bench/ingest.py --null-server PORT`` runs only the null server (used internally).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: bench.benchkit from the root

from bench.benchkit import machine, ms, note, percentile, report  # noqa: E402

RECIPIENT = "support@example.test"
WARMUP_MESSAGES = 50
REPLY_TIMEOUT = 60.0
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
MAX_BROKEN = 3
MIN_PER_CONNECTION = 5  # messages per connection in a round

GATEWAY_CONFIG = """\
database:
  url: {db_url}
gateway:
  smtp_listen: 127.0.0.1:{port}
  lmtp_listen: "off"
  http_listen: "off"
  hostname: bench.test
  max_message_size: 10000000
{workers}{rules}accounts:
  - name: support
    addresses: [{recipient}]
  - name: sales
    addresses: [sales@example.test]
"""

SENTENCES = (
    "Hello, I ordered a replacement charger last week and it still has not arrived.",
    "The tracking page says the parcel left the warehouse on Monday but nothing since.",
    "Could you please check what happened and tell me when I can expect it?",
    "I have attached nothing this time, the order number is in the subject line.",
    "My account is registered under this address, in case you need to look it up.",
    "If the parcel is lost I would prefer a refund rather than a second shipment.",
    "I also noticed that the invoice lists the wrong billing address, please fix it.",
    "Thanks in advance for your help, your team was very quick the last time I wrote.",
)


# ---------------------------------------------------------------------------- null server


class NullHandler:
    """The baseline: accept every message without looking at it."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


async def serve_null(port: int) -> None:
    """Run the null SMTP server on 127.0.0.1:port until SIGTERM/SIGINT."""
    from aiosmtpd.smtp import SMTP

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    handler = NullHandler()
    # a fixed hostname: aiosmtpd would otherwise call socket.getfqdn() per connection
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="null.bench", loop=loop),
        host="127.0.0.1", port=port, reuse_address=True)
    await stop.wait()
    server.close()


# ---------------------------------------------------------------------------- messages


def dot_stuff(data: bytes) -> bytes:
    """RFC 5321 section 4.5.2: a line starting with '.' gets one more '.'."""
    return re.sub(rb"(?m)^\.", b"..", data)


def message_head(index: int, tag: str) -> bytes:
    """Headers of message ``index``; the Message-ID is unique per run, phase and index."""
    return (f"From: Customer {index} <customer{index % 500}@client.test>\r\n"
            f"To: Example Support <{RECIPIENT}>\r\n"
            f"Subject: Where is my order #{100000 + index}?\r\n"
            f"Date: Sun, 22 Nov 2026 10:{index // 60 % 60:02d}:{index % 60:02d} +0000\r\n"
            f"Message-ID: <{tag}.{index}@client.test>\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 7bit\r\n\r\n").encode()


def message_body(size: int) -> bytes:
    """Plain-text paragraphs wrapped at 72 columns, padded so head + body is about ``size``."""
    target = max(size - len(message_head(0, "x" * 40)), 64)
    lines: list[str] = []
    total, n = 0, 0
    while total < target:
        para = " ".join(SENTENCES[(n + k) % len(SENTENCES)] for k in range(3))
        for line in [*textwrap.wrap(para, 72), ""]:
            lines.append(line)
            total += len(line) + 2
        n += 1
    text = "\r\n".join(lines)
    if len(text) > target:  # end on a whole line, just under the target
        text = text[:text.rfind("\r\n", 0, target)]
    text = text.rstrip() + "\r\n"
    return dot_stuff(text.encode())


# ---------------------------------------------------------------------------- client


@dataclass
class Tally:
    """What one measurement phase observed."""

    ok: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    replies: dict[str, int] = field(default_factory=dict)

    def fail(self, reply: str) -> None:
        self.errors += 1
        key = reply[:60]
        self.replies[key] = self.replies.get(key, 0) + 1


class SmtpError(Exception):
    """The server closed the connection or broke the protocol."""


class Client:
    """A lean SMTP client: one connection, EHLO once, pipelined envelopes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        async with asyncio.timeout(REPLY_TIMEOUT):
            await client.expect(b"220")
            writer.write(b"EHLO bench.client.test\r\n")
            await client.expect(b"250")
        return client

    async def reply(self) -> bytes:
        """One (possibly multi-line) reply; returns its last line."""
        while True:
            line = await self.reader.readline()
            if not line.endswith(b"\n"):
                raise SmtpError("connection closed by server")
            if line[3:4] != b"-":
                return line

    async def expect(self, code: bytes) -> None:
        line = await self.reply()
        if not line.startswith(code):
            raise SmtpError(f"expected {code.decode()}, got {line!r}")

    async def send(self, sender: bytes, content: bytes, tally: Tally) -> None:
        """One transaction; non-250 replies go to ``tally`` as errors, the session stays usable."""
        w = self.writer
        async with asyncio.timeout(REPLY_TIMEOUT):
            w.write(b"MAIL FROM:<" + sender + b">\r\nRCPT TO:<" + RECIPIENT.encode()
                    + b">\r\nDATA\r\n")
            mail, rcpt, data = await self.reply(), await self.reply(), await self.reply()
            if not data.startswith(b"354"):
                tally.fail((mail if not mail.startswith(b"250") else rcpt
                            if not rcpt.startswith(b"250") else data).decode(errors="replace"))
                w.write(b"RSET\r\n")
                await self.reply()
                return
            start = time.perf_counter()
            w.write(content + b".\r\n")
            await w.drain()
            done = await self.reply()
            elapsed = time.perf_counter() - start
        if done.startswith(b"250"):
            tally.ok += 1
            tally.latencies.append(elapsed)
        else:
            tally.fail(done.decode(errors="replace"))

    async def quit(self) -> None:
        try:
            self.writer.write(b"QUIT\r\n")
            async with asyncio.timeout(5):
                await self.reply()
        except (OSError, SmtpError, TimeoutError):
            pass
        self.writer.close()


async def send_share(port: int, client: Client, indices: range, body: bytes, tag: str,
                     tally: Tally) -> Client | None:
    """Send messages ``indices`` sequentially, reconnecting after a broken connection.

    After ``MAX_BROKEN`` broken connections in a row the rest of the share counts as errors,
    so a dead server costs seconds, not ``REPLY_TIMEOUT`` per message.
    """
    current: Client | None = client
    broken = 0
    for pos, index in enumerate(indices):
        if broken >= MAX_BROKEN:
            for _ in indices[pos:]:
                tally.fail("not sent: server unreachable")
            break
        try:
            if current is None:
                current = await Client.connect(port)
            sender = f"customer{index % 500}@client.test".encode()
            await current.send(sender, message_head(index, tag) + body, tally)
            broken = 0
        except (OSError, SmtpError, TimeoutError, asyncio.IncompleteReadError) as exc:
            tally.fail(f"connection: {type(exc).__name__}: {exc}")
            broken += 1
            if current is not None:
                current.writer.close()
            current = None
    return current


async def measure(ports: list[int], messages: int, concurrency: int, body: bytes,
                  tag: str) -> tuple[float, Tally]:
    """Send ``messages`` over ``concurrency`` connections, spread round-robin over the
    servers listening on ``ports``; returns (seconds, tally)."""
    conns = min(concurrency, messages)
    targets = [ports[i % len(ports)] for i in range(conns)]
    clients = await asyncio.gather(*(Client.connect(port) for port in targets))
    tally = Tally()
    shares = split(messages, conns)
    start = time.perf_counter()
    left = await asyncio.gather(*(send_share(port, c, r, body, tag, tally)
                                  for port, c, r in zip(targets, clients, shares, strict=True)))
    seconds = time.perf_counter() - start
    await asyncio.gather(*(c.quit() for c in left if c is not None))
    return seconds, tally


def split(total: int, parts: int) -> list[range]:
    """``range(total)`` cut into ``parts`` consecutive shares differing by at most one."""
    out, begin = [], 0
    for i in range(parts):
        size = total // parts + (i < total % parts)
        out.append(range(begin, begin + size))
        begin += size
    return out






async def phase(ports: list[int], messages: int, concurrency: int, body: bytes,
                tag: str) -> dict[str, Any]:
    """Warm up, then measure the servers on ``ports`` (one, or several gateways sharing a
    database); the result keys are prefixed by the caller."""
    await measure(ports, WARMUP_MESSAGES, concurrency, body, f"{tag}.warmup")
    return _totals([await measure(ports, messages, concurrency, body, tag)])


# ---------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Block until ``port`` accepts connections; fail with the log tail if ``proc`` dies."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening:\n"
                               f"{log_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {START_TIMEOUT}s:\n{log_tail(log)}")


def start(cmd: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """Start ``cmd`` from the repository root with output to ``log``; wait for ``port``."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_port(port, proc, log)
    except BaseException:
        stop(proc)
        raise
    return proc


def stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, wait, then SIGKILL if it will not go; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def start_gateway(workdir: Path, database: str | None, workers: int | None,
                  rules: Path | None, role: str = "serve") -> tuple[subprocess.Popen[bytes], int]:
    """Write a postdesk.yaml into ``workdir`` and run ``postdesk ROLE`` on it (``serve``:
    everything; ``gateway``: the SMTP intake alone)."""
    workdir.mkdir(parents=True)
    port = free_port()
    config = workdir / "postdesk.yaml"
    db_url = database or f"sqlite:///{workdir / 'postdesk.db'}"
    workers_line = f"  workers: {workers}\n" if workers else ""
    rules_line = f"rules: [{rules.resolve()}]\n" if rules else ""
    config.write_text(GATEWAY_CONFIG.format(db_url=db_url, port=port, recipient=RECIPIENT,
                                            workers=workers_line, rules=rules_line))
    cmd = [sys.executable, "-m", "gateway.cli", "--config", str(config), role]
    return start(cmd, port, workdir / "serve.log"), port


def log_problems(log: Path) -> list[str]:
    """Lines of the gateway log that look like trouble (warnings, errors, tracebacks)."""
    marks = ("WARNING", "ERROR", "CRITICAL", "Traceback")
    text = log.read_text(errors="replace") if log.exists() else ""
    return [line for line in text.splitlines() if any(m in line for m in marks)]


# ---------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    size: int
    concurrency: int
    messages: int


def run_cell(cell: Cell, null_port: int, workdir: Path, args: argparse.Namespace,
             run_tag: str, database: str | None) -> dict[str, Any]:
    """A fresh gateway, then rounds of the same messages to the null server and to it
    alternately; one result row."""
    body = message_body(cell.size)
    tag = f"{run_tag}.{cell.size}.{cell.concurrency}"
    rounds = max(1, min(args.rounds, cell.messages // (cell.concurrency * MIN_PER_CONNECTION)))
    note(f"cell size={cell.size} concurrency={cell.concurrency}: starting gateway in {workdir}")
    proc, port = start_gateway(workdir, database, args.workers, args.rules, args.role)
    try:
        null, gw, ratios = asyncio.run(paired(null_port, port, cell, body, tag, rounds))
    finally:
        code = stop(proc)
    problems = log_problems(workdir / "serve.log")
    note(f"  null: {null['msgs_per_s']} msgs/s; gateway: {gw['msgs_per_s']} msgs/s, "
         f"p50 {gw['p50_ms']} ms, p99 {gw['p99_ms']} ms, round ratios {ratios}, "
         f"errors {gw['errors']}, exit {code}, {len(problems)} log problems")
    return row(cell, null, gw, code, problems, ratios)


async def paired(null_port: int, gateway_port: int, cell: Cell, body: bytes, tag: str,
                 rounds: int) -> tuple[dict[str, Any], dict[str, Any], list[float]]:
    """Both servers warmed up, then ``rounds`` rounds each sending a share of the messages to
    the null server, then the same number to the gateway. Returns the totals of each and the
    ratio of every round: a pair measured seconds apart shares the machine's speed of the
    moment, which on a shared machine drifts by a third within a minute."""
    ports = {"null": null_port, "gw": gateway_port}
    for name, port in ports.items():
        await measure([port], WARMUP_MESSAGES, cell.concurrency, body, f"{tag}.{name}.warmup")
    runs: dict[str, list[tuple[float, Tally]]] = {"null": [], "gw": []}
    for i, share in enumerate(split(cell.messages, rounds)):
        for name, port in ports.items():
            runs[name].append(await measure([port], len(share), cell.concurrency, body,
                                            f"{tag}.{name}.{i}"))
    ratios = [round((g.ok / gs) / (n.ok / ns), 3) if gs > 0 and ns > 0 and n.ok else 0.0
              for (ns, n), (gs, g) in zip(runs["null"], runs["gw"], strict=True)]
    return _totals(runs["null"]), _totals(runs["gw"]), ratios


def _totals(runs: list[tuple[float, Tally]]) -> dict[str, Any]:
    seconds = sum(s for s, _ in runs)
    ok = sum(t.ok for _, t in runs)
    latencies = [x for _, t in runs for x in t.latencies]
    replies: dict[str, int] = {}
    for _, tally in runs:
        for reply, count in tally.replies.items():
            replies[reply] = replies.get(reply, 0) + count
    return {
        "msgs_per_s": round(ok / seconds, 1) if seconds > 0 else None,
        "seconds": round(seconds, 3),
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
        "errors": sum(t.errors for _, t in runs),
        "error_replies": replies,
    }


def row(cell: Cell, null: dict[str, Any], gw: dict[str, Any], code: int,
        problems: list[str], ratios: list[float]) -> dict[str, Any]:
    return {
        "size": cell.size, "concurrency": cell.concurrency, "messages": cell.messages,
        "null_msgs_per_s": null["msgs_per_s"], "gateway_msgs_per_s": gw["msgs_per_s"],
        "ratio": statistics.median(ratios) if any(ratios) else None,  # of the rounds
        "round_ratios": ratios,
        "gateway_p50_ms": gw["p50_ms"], "gateway_p99_ms": gw["p99_ms"],
        "errors": null["errors"] + gw["errors"],
        "null_p50_ms": null["p50_ms"], "null_p99_ms": null["p99_ms"],
        "null_errors": null["errors"], "gateway_errors": gw["errors"],
        "error_replies": {**null["error_replies"], **gw["error_replies"]},
        "gateway_exit_code": code, "gateway_log_problems": problems[:20],
    }








@contextmanager
def postgresql_databases(server_url: str | None = None) -> Iterator[Callable[[], str]]:
    """Yields a function making a fresh database on the PostgreSQL server ``server_url``, or
    on a cluster started for the run (the test suite's, with fsync on: its commits are as
    durable as SQLite's)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from postgres import fresh_database, server

    if server_url:
        yield lambda: fresh_database(server_url)
        return
    with server(durable=True) as running:
        yield lambda: fresh_database(running.url)


def run(args: argparse.Namespace) -> dict[str, Any]:
    cells = [Cell(size, conc, args.messages) for size in args.sizes for conc in args.concurrency]
    run_tag = f"bench-{uuid.uuid4().hex[:12]}"
    info = machine()
    with tempfile.TemporaryDirectory(prefix="postdesk-bench-") as tmp, ExitStack() as stack:
        base = Path(tmp)
        if args.database == "postgresql":  # a fresh database per cell, as for SQLite
            fresh = stack.enter_context(postgresql_databases())
        else:
            fresh = lambda: args.database  # noqa: E731 — None: a SQLite file per cell
        null_port = free_port()
        null_cmd = [sys.executable, str(Path(__file__).resolve()), "--null-server",
                    str(null_port)]
        null_proc = start(null_cmd, null_port, base / "null.log")
        try:
            rows = [run_cell(cell, null_port, base / f"cell-{i}", args, run_tag, fresh())
                    for i, cell in enumerate(cells)]
        finally:
            stop(null_proc)
    database = "sqlite (fresh per cell)" if args.database is None else (
        "postgresql (throwaway cluster, fsync on, fresh per cell)"
        if args.database == "postgresql" else args.database.split(":", 1)[0])
    return {"benchmark": "ingest", "machine": info, "role": args.role,
            "workers": args.workers or "default",
            "rules": str(args.rules) if args.rules else None, "database": database,
            "cells": rows}


# ---------------------------------------------------------------------------- CLI


def int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per cell")
    parser.add_argument("--sizes", type=int_list, default=[1024, 20480])
    parser.add_argument("--concurrency", type=int_list, default=[1, 20])
    parser.add_argument("--database", default=None,
                        help="database URL, or 'postgresql' for a throwaway cluster (default: "
                        "a fresh SQLite file per cell)")
    parser.add_argument("--rules", type=Path, default=None,
                        help="rule file the gateway loads (e.g. rules.example.yaml)")
    parser.add_argument("--workers", type=int, default=None,
                        help="gateway.workers for the gateway (default: the gateway's default)")
    parser.add_argument("--role", choices=["serve", "gateway"], default="serve",
                        help="serve: everything (the outbox sends automatic answers on the "
                        "same machine); gateway: the SMTP intake alone")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds per cell, null server then gateway in each; the ratio is "
                        "the median of the rounds' (at least 5 messages per connection a round)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--null-server", type=int, metavar="PORT", default=None,
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.messages < 1:
        parser.error("--messages must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.null_server is not None:
        asyncio.run(serve_null(args.null_server))
        return 0
    return report(run, args)


if __name__ == "__main__":
    sys.exit(main())
