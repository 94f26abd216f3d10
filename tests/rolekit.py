"""Shared by the scale-out tests: role processes
(``postdesk gateway``, ``outbox``, ``poll``) with their own logs, and waiting."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

from helpers import POSTDESK, ROOT, Instance, wait_port

# An account polled from a test Dovecot (``dovecot.port``, a user of its own), for
# ``Instance.write(extra=...)``; the password comes from POSTDESK_TEST_IMAP_PW.
IMAP_MAILBOX = """\
  - name: imapbox
    addresses: [imapbox@example.test]
    inbound: [mailbox]
drivers:
  mailbox:
    type: imap-poll
    host: 127.0.0.1
    port: {port}
    tls: none
    user: {user}
    password: {{env: POSTDESK_TEST_IMAP_PW}}
    PollingInterval: 1
    lease_seconds: {lease}
"""


class Role:
    """One ``postdesk`` role process, in its own session, logging to ``<name>.log``."""

    def __init__(self, instance: Instance, *args: str, name: str,
                 env: dict[str, str] | None = None) -> None:
        self.log_path = instance.dir / f"{name}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 — closed with the process
        self.proc = subprocess.Popen([*POSTDESK, "--config", str(instance.config), *args],
                                     cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True,
                                     env={**os.environ, **env} if env else None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_port(self, port: int, timeout: float = 30) -> Role:
        wait_port(port, timeout, self.proc)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as systemd stops a unit; returns the exit status."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL to the process group: the role and its children die at once."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def wait_until(check: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Poll ``check`` until it returns something true (errors count as not yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if value := check():
                return value
        except Exception:  # noqa: BLE001 — e.g. the schema does not exist yet
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what or check}")
        time.sleep(0.1)
