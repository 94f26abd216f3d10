"""A throwaway PostgreSQL cluster for tests (Debian's server binaries; ``make test`` installs
them as root): ``cluster()`` starts one on a free loopback port and yields its URL, and
``fresh_database(url)`` makes an empty database in it. ``POSTDESK_TEST_POSTGRES`` (a URL)
uses an existing server instead."""

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
    bin_dir = _bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL server binaries not installed "
                           "(make test installs them as root)")
    root = Path(tempfile.mkdtemp(prefix="pg-test-"))  # chowned: not under tmp_path
    root.chmod(0o755)
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = root / "data"
    subprocess.run([*as_user, bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth=trust",
                    "--no-sync", "-E", "UTF8"], check=True, capture_output=True, timeout=120)
    subprocess.run([*as_user, bin_dir / "pg_ctl", "-D", data, "-l", root / "log", "-w", "-o",
                    f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off", "start"],
                   check=True, capture_output=True, timeout=60)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, bin_dir / "pg_ctl", "-D", data, "-m", "fast", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def fresh_database(url: str) -> str:
    """A new, empty database on the server of ``url``; returns its URL."""
    name = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return url.rsplit("/", 1)[0] + "/" + name
