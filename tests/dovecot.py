"""A throwaway Dovecot IMAP server for tests and ``bench/imap.py`` (needs root and Debian's
``dovecot-imapd``; ``make test`` installs it).

``tests/fixtures/start-dovecot.sh`` writes a self-contained config (own users, Maildirs,
self-signed certificate) under a ``mkdtemp`` directory (not pytest's ``tmp_path``: Dovecot
reads mail as ``nobody``, which cannot pass through the 0700 ``/tmp/pytest-of-root``). Any
user name logs in with ``PASSWORD`` and gets a fresh mailbox, so each test takes its own.
"""

from __future__ import annotations

import contextlib
import imaplib
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ports import PortTaken, free_port, start_on_free_ports, start_when_port_free

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PASSWORD = "testpw"
_names = itertools.count(1)


class Dovecot:
    """One running Dovecot: ``port`` (IMAP with STARTTLS), ``ssl_port`` (IMAPS)."""

    def __init__(self) -> None:
        if not Path("/usr/sbin/dovecot").exists():
            raise RuntimeError("Debian's dovecot-imapd is not installed "
                               "(make test installs it as root)")
        self.dir = Path(tempfile.mkdtemp(prefix="dovecot-"))
        self.cafile = self.dir / "cert.pem"
        self.conf = self.dir / "dovecot.conf"
        self._pick_ports()
        try:
            start_on_free_ports(self._start_once, self._pick_ports)
        except BaseException:
            self.close()
            raise

    def _pick_ports(self) -> None:
        self.port, self.ssl_port = free_port(), free_port()

    def start(self, timeout: float = 30.0) -> None:
        """Start again after ``kill``/``stop``, on the same ports (clients reconnect to them);
        a port the old master's processes still hold for a moment is waited for."""
        start_when_port_free(self._start_once, timeout)

    def _start_once(self) -> None:
        done = subprocess.run([FIXTURES / "start-dovecot.sh", str(self.dir), str(self.port),
                               str(self.ssl_port)], capture_output=True, text=True, timeout=90,
                              env={**os.environ, "ANY_USER_PASSWORD": PASSWORD})
        if done.returncode == 0:
            return
        log = self.dir / "dovecot.log"
        why = (f"start-dovecot.sh (ports {self.port}, {self.ssl_port}) exited "
               f"{done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}\n"
               f"dovecot.log: {log.read_text(errors='replace')[-3000:] if log.exists() else '-'}")
        raise (PortTaken if "Address already in use" in done.stderr else RuntimeError)(why)

    def stop(self) -> None:
        subprocess.run([FIXTURES / "stop-dovecot.sh", str(self.dir)], capture_output=True,
                       timeout=60)

    def _master_pid(self) -> int | None:
        """The running master's PID (None if there is none: never a reused PID's process)."""
        try:
            pid = int((self.dir / "run" / "master.pid").read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if str(self.conf).encode() in cmdline else None

    def kill(self) -> None:
        """A crash: SIGKILL to the master and every Dovecot process of its group; returns when
        all are gone (an imap-login child holds the listening socket until it has exited)."""
        pid = self._master_pid()
        if pid is None:
            return
        group = os.getpgid(pid) == pid  # the master daemonizes with setsid()
        signal_all = os.killpg if group else os.kill
        signal_all(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                signal_all(pid, 0)  # zombies count until reaped: then the sockets are closed
            except ProcessLookupError:
                return
            time.sleep(0.02)
        ps = subprocess.run(["ps", "-o", "pid,stat,wchan,args", "-g", str(pid)],
                            capture_output=True, text=True).stdout
        raise RuntimeError(f"Dovecot processes of group {pid} still there 30 s after "
                           f"SIGKILL:\n{ps}")

    def close(self) -> None:
        """Throw the server away (a graceful stop takes 1–2 s; nothing here needs one)."""
        with contextlib.suppress(ProcessLookupError):
            self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def new_user(self) -> str:
        """A fresh user name with an empty mailbox (created now, owned by the mail user)."""
        user = f"u{os.getpid()}x{next(_names)}"
        self._maildir(user)
        return user

    def _maildir(self, user: str) -> Path:
        base = self.dir / "mail" / user / "Maildir"
        if not base.exists():
            nobody = pwd.getpwnam("nobody")
            for sub in ("", "cur", "new", "tmp"):
                (base / sub).mkdir(parents=True, exist_ok=True)
            for path in (base.parent, base, base / "cur", base / "new", base / "tmp"):
                os.chown(path, nobody.pw_uid, nobody.pw_gid)
        return base

    @contextlib.contextmanager
    def folder_locked(self, user: str, folder: str) -> Iterator[None]:
        """Hold ``folder``'s Maildir lock (``dovecot-uidlist.lock``, a dotlock naming a live
        process: this one) as another writer would: Dovecot then waits before saving into it,
        so a UID MOVE or COPY to it gets no answer until the lock is gone."""
        conn = self.imap(user)
        try:
            conn.create(f'"{folder}"')  # "already exists" is fine
        finally:
            conn.logout()
        lock = self._maildir(user) / f".{folder.replace('/', '.')}" / "dovecot-uidlist.lock"
        lock.write_text(f"{os.getpid()}:{socket.gethostname()}")
        nobody = pwd.getpwnam("nobody")
        os.chown(lock, nobody.pw_uid, nobody.pw_gid)
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)

    def deliver(self, user: str, raw: bytes, mailbox: str = "INBOX") -> None:
        """A real delivery (``doveadm save``): indexes updated, IDLE clients notified."""
        subprocess.run(["doveadm", "-c", str(self.conf), "save", "-u", user, "-m", mailbox],
                       input=raw, check=True, capture_output=True, timeout=30)

    def deliver_many(self, user: str, raws: list[bytes]) -> None:
        """Many messages at once, written into ``Maildir/new`` as an MDA does (tmp, rename)."""
        base = self._maildir(user)
        nobody = pwd.getpwnam("nobody")
        stamp = time.time_ns()
        for i, raw in enumerate(raws):
            name = f"{stamp // 10**9}.M{stamp % 10**9}Q{i}.test,S={len(raw)}"
            tmp = base / "tmp" / name
            tmp.write_bytes(raw)
            os.chown(tmp, nobody.pw_uid, nobody.pw_gid)
            tmp.rename(base / "new" / name)

    def imap(self, user: str) -> imaplib.IMAP4:
        conn = imaplib.IMAP4("127.0.0.1", self.port, timeout=30)
        conn.login(user, PASSWORD)
        return conn

    def count(self, user: str, mailbox: str = "INBOX") -> int:
        """Messages in ``mailbox`` (0 if it does not exist), as the server sees them."""
        conn = self.imap(user)
        try:
            status, data = conn.status(f'"{mailbox}"', "(MESSAGES)")
            if status != "OK":
                if b"NONEXISTENT" in data[0]:
                    return 0
                raise RuntimeError(f"STATUS {mailbox}: {data}")  # never a silent 0
            return int(data[0].decode().rsplit("MESSAGES", 1)[1].strip(" )"))
        finally:
            conn.logout()

    def message_ids(self, user: str, mailbox: str) -> list[str]:
        """Message-ID headers of every message in ``mailbox``."""
        conn = self.imap(user)
        try:
            if conn.select(f'"{mailbox}"', readonly=True)[0] != "OK":
                return []
            _, data = conn.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            return [part[1].decode().split(":", 1)[1].strip() for part in data
                    if isinstance(part, tuple)]
        finally:
            conn.logout()

    def flags(self, user: str, mailbox: str) -> list[str]:
        conn = self.imap(user)
        try:
            conn.select(f'"{mailbox}"', readonly=True)
            _, data = conn.fetch("1:*", "(FLAGS)")
            return [d.decode() for d in data if d]
        finally:
            conn.logout()
