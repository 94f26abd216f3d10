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
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text


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
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.data = self.root / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        subprocess.run([*self.as_user, self.bin / "initdb", "-D", self.data, "-U", "postgres",
                        "--auth=trust", "--no-sync", "-E", "UTF8"],
                       check=True, capture_output=True, timeout=120)

    def _ctl(self, *args: str) -> None:
        subprocess.run([*self.as_user, self.bin / "pg_ctl", "-D", self.data, "-l",
                        self.root / "log", "-w", *args], check=True, capture_output=True,
                       timeout=60)

    def start(self) -> None:
        self._ctl("-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}"
                  f"{self.options}", "start")

    def stop(self) -> None:
        """``pg_ctl stop -m fast``: sessions are terminated, the port closes."""
        self._ctl("-m", "fast", "stop")

    def restart(self) -> None:
        self._ctl("-m", "fast", "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} "
                  f"-k {self.root}{self.options}", "restart")

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
        running.start()
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
