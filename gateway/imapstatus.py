"""Health of the IMAP pollers: counters per account, for /healthz and ``postdesk status``.

The gateway serves its pollers' health on /healthz; ``postdesk status`` runs in another
process, so each poller also writes its health to ``<instance>/status/imap-<key>.json``
(write and rename: a reader never sees half a file). A file whose process is gone reads as
``stopped`` with its last counters kept.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

WRITE_EVERY = 1.0  # seconds between status-file writes while draining


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class PollerHealth:
    """What an admin needs to see about one polled mailbox."""

    account: str
    driver: str
    server: str
    user: str
    state: str = "starting"  # connecting | polling | idle | waiting | backoff | error | stopped
    #                         | standby (another process holds the lease)
    idle_supported: bool | None = None
    last_poll: str | None = None
    last_success: str | None = None
    fetched: int = 0
    stored: int = 0
    duplicates: int = 0
    needs_attention: int = 0
    retried: int = 0  # moved to the Retry folder
    pending: int = 0  # messages in the INBOX at the last poll
    uidvalidity: int | None = None
    uidvalidity_changes: int = 0
    reconnects: int = 0
    last_error: str | None = None
    last_error_at: str | None = None
    pid: int = field(default_factory=os.getpid)

    def error(self, message: str, state: str = "backoff") -> None:
        self.state, self.last_error, self.last_error_at = state, message, now_iso()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class StatusFile:
    """Writes one poller's health to the instance's status directory, throttled."""

    def __init__(self, directory: Path | None, key: str):
        self.path = directory / f"imap-{_safe(key)}.json" if directory else None
        self._written = 0.0

    def write(self, health: PollerHealth, *, force: bool = False) -> None:
        if self.path is None or (not force and time.monotonic() - self._written < WRITE_EVERY):
            return
        self._written = time.monotonic()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(health.as_dict(), indent=1))
            tmp.replace(self.path)
        except OSError:
            pass  # status is best effort; polling must go on


def read_status(directory: Path) -> dict[str, dict[str, Any]]:
    """Every poller status file under ``directory`` by ``account/driver``."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("imap-*.json")) if directory.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not _alive(int(data.get("pid") or 0)):
            data["state"] = "stopped"
        out[f"{data.get('account')}/{data.get('driver')}"] = data
    return out


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _safe(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
