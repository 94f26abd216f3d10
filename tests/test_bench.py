"""The ingest benchmark runs end to end and prints well-formed JSON.

Only the shape and the absence of errors are checked: rates and times depend on the machine
and are never asserted (DESIGN: benchmarks compare against a baseline from the same run).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CELL_KEYS = {"size", "concurrency", "messages", "null_msgs_per_s", "gateway_msgs_per_s",
             "ratio", "gateway_p50_ms", "gateway_p99_ms", "errors"}


def test_ingest_bench_prints_one_json_document_with_a_row_per_cell() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ingest.py"), "--messages", "30",
         "--sizes", "1024", "--concurrency", "1,4"],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert {"cpu_count", "python"} <= result["machine"].keys()
    cells = result["cells"]
    assert [(c["size"], c["concurrency"]) for c in cells] == [(1024, 1), (1024, 4)]
    for cell in cells:
        assert cell.keys() >= CELL_KEYS
        assert cell["messages"] == 30
        assert cell["errors"] == 0, cell
        assert cell["null_msgs_per_s"] > 0 and cell["gateway_msgs_per_s"] > 0
        assert cell["ratio"] > 0
        assert cell["gateway_p50_ms"] > 0 and cell["gateway_p99_ms"] >= cell["gateway_p50_ms"]


def test_scaleout_bench_compares_sqlite_with_one_and_two_gateways_on_postgresql() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scaleout.py"), "--messages", "40",
         "--concurrency", "4"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    setups = result["setups"]
    assert [(s["setup"], s["gateways"]) for s in setups] == [
        ("sqlite", 1), ("postgresql-1", 1), ("postgresql-2", 2)]
    for setup in setups:
        assert setup["errors"] == 0 and setup["msgs_per_s"] > 0, setup
        assert setup["exit_codes"] == [0] * setup["gateways"], setup
        assert setup["log_problems"] == [], setup
        assert setup["ratio_to_sqlite"] > 0, setup
