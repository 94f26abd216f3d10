"""What every benchmark prints beside its figures: percentiles, the machine, progress notes,
and the JSON report itself."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile, None when there is nothing to rank."""
    if not values:
        return None
    ranked = sorted(values)
    return ranked[max(math.ceil(pct / 100 * len(ranked)) - 1, 0)]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "commit": git_commit(),
        # other load on the box skews both sides; recorded to judge a noisy run
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    return out.stdout.strip() or None


def note(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def report(run: Callable[[Any], dict[str, Any]], args: Any) -> int:
    """Run a benchmark and print its result as one JSON document (also to ``args.json_out``
    when given); a ``RuntimeError`` (a server that would not start...) is noted, exit 1."""
    try:
        result = run(args)
    except RuntimeError as exc:
        note(f"failed: {exc}")
        return 1
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out is not None:
        args.json_out.write_text(text + "\n")
    return 0
