"""The rule evaluation benchmark runs end to end and prints well-formed JSON.

Only the shape, positive timings and agreement with the baseline evaluator are checked:
times depend on the machine and are never asserted (DESIGN: benchmarks compare against a
baseline measured in the same run).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMINGS = ("us_per_msg_p50", "us_per_msg_p99", "baseline_us_per_msg_p50",
           "baseline_us_per_msg_p99", "with_trace_json_us_p50",
           "baseline_with_trace_json_us_p50")


def test_rules_bench_prints_one_cell_per_rule_set_size() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "rules.py"), "--messages", "20"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    cells = result["cells"]
    assert [cell["rules"] for cell in cells] == [10, 100, 1000]
    for cell in cells:
        assert cell["messages"] == 20
        for name in TIMINGS:
            assert isinstance(cell[name], int | float) and cell[name] > 0, (name, cell)
        assert cell["us_per_msg_p99"] >= cell["us_per_msg_p50"]
        assert cell["mismatches"] == 0, cell
    assert result["ratio_1000_to_10"] > 0
    assert result["baseline_ratio_1000_to_10"] > 0


def test_the_instruction_count_grows_with_the_rule_set() -> None:
    """``--instructions``' counter (valgrind): a deterministic figure per message, larger
    for a larger rule set over the same messages."""
    from bench.rules import build_corpus, build_ruleset, instructions

    corpus = build_corpus(3)
    small, large = instructions([build_ruleset(10), build_ruleset(100)], corpus)
    assert 0 < small < large
