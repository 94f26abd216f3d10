"""Scale-out benchmark: gateways sharing one PostgreSQL against one gateway on SQLite, same run.

Each setup gets the same messages from the same pipelining client (``bench/ingest.py``) on a
fresh database, and runs ``postdesk gateway`` (the SMTP intake alone):

- ``sqlite``: one gateway on a SQLite file, the embedded default (the baseline);
- ``postgresql-1``: one gateway on PostgreSQL;
- ``postgresql-N``: N gateways on the same PostgreSQL database, the client's connections
  spread over them round-robin, as an MTA with several transport destinations would.

PostgreSQL is a throwaway cluster started for the run with ``fsync`` and
``synchronous_commit`` on, so its 250s are as durable as SQLite's (``--database URL`` uses an
existing server instead; each setup gets a new database in it). One JSON document on stdout:
msgs/s, DATA->250 p50/p99 and the ratio to the SQLite gateway for every setup.

Usage: ``python bench/scaleout.py [--messages N] [--size BYTES] [--concurrency C]
[--gateways N] [--rules FILE] [--database URL]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: bench.* from the root

from bench.benchkit import machine, note, report  # noqa: E402
from bench.ingest import (  # noqa: E402
    log_problems,
    message_body,
    phase,
    postgresql_databases,
    start_gateway,
    stop,
)
from engine.store.database import upgrade  # noqa: E402


def run_setup(name: str, urls: list[str], workdir: Path, body: bytes,
              args: argparse.Namespace, tag: str) -> dict[str, Any]:
    """Start one gateway per URL (all the same database for PostgreSQL), measure, stop."""
    upgrade(urls[0])  # once, before several gateways start
    procs, ports = [], []
    try:
        for i, url in enumerate(urls):
            proc, port = start_gateway(workdir / f"gateway-{i}", url, None, args.rules,
                                       role="gateway")
            procs.append(proc)
            ports.append(port)
        note(f"{name}: {len(ports)} gateway(s), {args.messages} messages")
        result = asyncio.run(phase(ports, args.messages, args.concurrency, body,
                                   f"{tag}.{name}"))
    finally:
        codes = [stop(proc) for proc in procs]
    problems = [p for i in range(len(urls))
                for p in log_problems(workdir / f"gateway-{i}" / "serve.log")]
    note(f"  {result['msgs_per_s']} msgs/s, p50 {result['p50_ms']} ms, "
         f"p99 {result['p99_ms']} ms, errors {result['errors']}")
    return {"setup": name, "gateways": len(urls), **result, "exit_codes": codes,
            "log_problems": problems[:20]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    body = message_body(args.size)
    tag = f"scale-{uuid.uuid4().hex[:12]}"
    rows = []
    with ExitStack() as stack:
        base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="postdesk-scale-")))
        fresh = stack.enter_context(postgresql_databases(args.database))
        sqlite = f"sqlite:///{base / 'sqlite' / 'postdesk.db'}"
        (base / "sqlite").mkdir()
        rows.append(run_setup("sqlite", [sqlite], base / "sqlite", body, args, tag))
        for count in sorted({1, args.gateways}):
            database = fresh()
            rows.append(run_setup(f"postgresql-{count}", [database] * count,
                                  base / f"postgresql-{count}", body, args, tag))
    baseline = rows[0]["msgs_per_s"]
    for row in rows:
        row["ratio_to_sqlite"] = (round(row["msgs_per_s"] / baseline, 3)
                                  if row["msgs_per_s"] and baseline else None)
    return {"benchmark": "scaleout", "machine": machine(), "size": args.size,
            "concurrency": args.concurrency, "messages": args.messages,
            "rules": str(args.rules) if args.rules else None,
            "postgresql": "given server" if args.database else "throwaway cluster, fsync on",
            "setups": rows}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=5000, help="messages per setup")
    parser.add_argument("--size", type=int, default=1024, help="message size in bytes")
    parser.add_argument("--concurrency", type=int, default=20,
                        help="client connections (spread over the gateways)")
    parser.add_argument("--gateways", type=int, default=2,
                        help="gateways sharing PostgreSQL in the last setup")
    parser.add_argument("--rules", type=Path, default=None, help="rule file the gateways load")
    parser.add_argument("--database", default=None,
                        help="an existing PostgreSQL server URL (default: a throwaway cluster)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if min(args.messages, args.size, args.concurrency, args.gateways) < 1:
        parser.error("--messages, --size, --concurrency and --gateways must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report(run, args)


if __name__ == "__main__":
    sys.exit(main())
