"""A throwaway PostgreSQL cluster for tests (Debian's server binaries; ``make test`` installs
them as root): ``cluster()`` starts one on a free loopback port and yields its URL (the suite's
databases are made in it by ``databases.py``), and ``fresh_database(url)`` makes an empty
database in any server. ``POSTDESK_TEST_POSTGRES`` (a URL)
uses an existing server instead. ``server()`` yields a ``Server`` of our own that a test
can stop and start again."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ports import PortTaken, free_port, start_on_free_ports, start_when_port_free
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
        self.port = free_port()
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

    def _start_once(self) -> None:
        self._ctl("-o", self._options(), "start")

    def _pick_port(self) -> None:
        self.port = free_port()

    def first_start(self) -> None:
        """Start on a free port (tried again on another if it was taken meanwhile)."""
        start_on_free_ports(self._start_once, self._pick_port)

    def start(self, timeout: float = 30.0) -> None:
        """Start again on the same port (clients reconnect to it); a port still held for a
        moment is waited for."""
        start_when_port_free(self._start_once, timeout)

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
