"""The outbox benchmark runs end to end and prints well-formed JSON.

Checked: the shape, that the null relay got every acknowledgement exactly once (from the
worker, and again from each baseline) and that the rates are positive. Times depend on the
machine and are never asserted (DESIGN: benchmarks compare against a same-run baseline).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = 30
TOP_KEYS = {"benchmark", "machine", "messages", "worker_msgs_per_s", "baseline_msgs_per_s",
            "ratio", "worker_p50_ms", "worker_p99_ms", "baseline_p50_ms", "baseline_p99_ms",
            "baseline_reused_msgs_per_s", "worker", "baseline", "baseline_reused"}


def test_outbox_bench_sends_every_message_once_and_prints_one_json_document(
        tmp_path: Path) -> None:
    out = tmp_path / "outbox.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "outbox.py"), "--messages", str(MESSAGES),
         "--json-out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == result
    assert result.keys() >= TOP_KEYS and result["benchmark"] == "outbox"
    assert {"cpu_count", "python"} <= result["machine"].keys()
    assert result["messages"] == MESSAGES

    worker = result["worker"]
    assert worker["rows"] == {"sent": MESSAGES} and worker["attempts_max"] == 1
    assert worker["stats"]["sent"] == MESSAGES
    # exactly once: as many messages as rows, each with its own Message-ID, each answering
    # its own inbound message
    once = {"messages": MESSAGES, "recipients": MESSAGES, "distinct_message_ids": MESSAGES,
            "distinct_in_reply_to": MESSAGES}
    assert worker["relay"].items() >= once.items(), worker["relay"]
    for name in ("baseline", "baseline_reused"):
        assert result[name]["errors"] == 0, result[name]
        assert result[name]["relay"].items() >= once.items(), result[name]["relay"]
        assert result[name]["relay"]["bytes"] == worker["relay"]["bytes"]  # same messages

    for key in ("worker_msgs_per_s", "baseline_msgs_per_s", "baseline_reused_msgs_per_s",
                "ratio"):
        assert result[key] > 0, key
    for who in ("worker", "baseline"):
        p50, p99 = result[f"{who}_p50_ms"], result[f"{who}_p99_ms"]
        assert 0 < p50 <= p99
    assert set(worker["phases_ms"]) >= {"claim", "policy", "compose", "smtp_send",
                                        "record_sent", "total"}
