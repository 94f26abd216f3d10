"""A throwaway PostgreSQL cluster for tests (Debian's server binaries; ``make test`` installs
them as root): ``cluster()`` starts one on a free loopback port and yields its URL (the suite's
databases are made in it by ``databases.py``), and ``fresh_database(url)`` makes an empty
database in any server. ``POSTDESK_TEST_POSTGRES`` (a URL)
uses an existing server instead. ``server()`` yields a ``Server`` of our own that a test
can stop and start again."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text

PORT_ATTEMPTS = 5


class PortTaken(RuntimeError):
    """The server could not listen: another process has the port."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@contextmanager
def cluster() -> Iterator[str]:
    """A running cluster's URL (the ``postgres`` database, trust auth, fsync off)."""
    if os.environ.get("POSTDESK_TEST_POSTGRES"):
        yield os.environ["POSTDESK_TEST_POSTGRES"]
        return
    with server() as running:
        yield running.url


class Server:
    """A throwaway server that a test can stop, start and restart (a database outage)."""

    def __init__(self, *, durable: bool = False) -> None:
        self.options = "" if durable else " -c fsync=off"  # tests need no crash safety
        bin_dir = _bin()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL server binaries not installed "
                               "(make test installs them as root)")
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="pg-test-"))  # chowned: not under tmp_path
        self.root.chmod(0o755)
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root
            shutil.chown(self.root, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.port = _free_port()
        self.data = self.root / "data"
        subprocess.run([*self.as_user, self.bin / "initdb", "-D", self.data, "-U", "postgres",
                        "--auth=trust", "--no-sync", "-E", "UTF8"],
                       check=True, capture_output=True, timeout=120)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        log = self.root / "log"
        seen = log.stat().st_size if log.exists() else 0
        done = subprocess.run([*self.as_user, self.bin / "pg_ctl", "-D", self.data, "-l", log,
                               "-w", *args], capture_output=True, text=True, timeout=120)
        if done.returncode == 0:
            return
        with open(log, errors="replace") as file:  # this attempt's part of the server log
            file.seek(seen)
            tail = file.read()[-3000:]
        why = (f"pg_ctl {' '.join(args)} (port {self.port}) exited {done.returncode}\n"
               f"{done.stdout}{done.stderr}server log:\n{tail}")
        raise (PortTaken if "Address already in use" in tail else RuntimeError)(why)

    def _options(self) -> str:
        return f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}{self.options}"

    def first_start(self) -> None:
        """Start on a free port: one free a moment ago may have been taken since (another
        test worker), so a refused start is tried again on another."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                self._ctl("-o", self._options(), "start")
                return
            except PortTaken:
                if attempt == PORT_ATTEMPTS:
                    raise
                self.port = _free_port()

    def start(self, timeout: float = 30.0) -> None:
        """Start again on the same port (clients reconnect to it); a port still held for a
        moment is waited for."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._ctl("-o", self._options(), "start")
                return
            except PortTaken:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        """``pg_ctl stop -m fast``: sessions are terminated, the port closes."""
        self._ctl("-m", "fast", "stop")

    def restart(self) -> None:
        """``pg_ctl restart -m fast`` (every connection is cut), on the same port."""
        self.stop()
        self.start()

    def destroy(self) -> None:
        subprocess.run([*self.as_user, self.bin / "pg_ctl", "-D", self.data, "-m", "fast",
                        "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def server(*, durable: bool = False) -> Iterator[Server]:
    """A started ``Server`` of our own (never ``POSTDESK_TEST_POSTGRES``: tests stop it);
    ``durable``: with fsync, as a production server (benchmarks)."""
    running = Server(durable=durable)
    try:
        running.first_start()
        yield running
    finally:
        running.destroy()


def fresh_database(url: str) -> str:
    """A new, empty database on the server of ``url``; returns its URL."""
    name = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return url.rsplit("/", 1)[0] + "/" + name
