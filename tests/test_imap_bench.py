"""The IMAP drain benchmark runs end to end against Dovecot and prints well-formed JSON.

Only the shape is checked: rates depend on the machine and are never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_imap_bench_prints_one_json_document_with_baseline_and_drain() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "imap.py"), "--messages", "60"],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert [c["phase"] for c in result["cells"]] == ["fetch_only", "null_store", "drain"]
    assert all(c["messages"] == 60 and c["msgs_per_s"] > 0 for c in result["cells"])
    assert result["inbox_left"] == [0, 0] and result["drain_vs_fetch_only"] > 0
