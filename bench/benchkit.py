"""What every benchmark prints beside its figures: percentiles, the machine, progress notes."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
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
