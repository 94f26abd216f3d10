"""bench/console.py runs and reports every timing (home, queues, get next, the message view
of a 5-mail thread and its body frame) and the query plans (small store)."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import ROOT


def test_console_bench_smoke() -> None:
    out = subprocess.run([sys.executable, "bench/console.py", "--messages", "2000",
                          "--requests", "5"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    result = json.loads(out)
    for key in ("baseline_healthz", "home", "queues_fragment", "get_next", "message_view",
                "message_body"):
        assert result[key]["p50_ms"] > 0
    assert result["thread_mails_shown"] == 5
    assert any("INDEX" in step for step in result["plans"]["queue_counts"])
    assert any("ix_messages_queued" in step for step in result["plans"]["claim_next"])
