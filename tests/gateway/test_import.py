"""``postdesk import``: mbox, Maildir and .eml folders through the intake; interrupted runs
resume; duplicates are skipped; failures are listed with their reason."""

from __future__ import annotations

import json
import mailbox
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import POSTDESK, ROOT, Instance, make_mail
from sqlalchemy import func, select

from engine.store.models import Message

RULES = """\
version: 1
rules:
  - name: no-spam
    type: reject
    when: {header.X-Spam-Flag: {equals: "YES"}}
    message: spam is not accepted
"""


def mail(prefix: str, i: int) -> bytes:
    return make_mail(f"{prefix} {i}", message_id=f"<{prefix}-{i}@client.test>",
                     body=f"Archived message {i}.\n" * 15)


def write_mbox(path: Path, raws: list[bytes]) -> Path:
    box = mailbox.mbox(path)
    box.lock()
    for raw in raws:
        box.add(raw)
    box.flush()
    box.unlock()
    return path


def write_maildir(path: Path, raws: list[bytes]) -> Path:
    box = mailbox.Maildir(path)
    for raw in raws:
        box.add(raw)
    return path


def stored(instance: Instance) -> tuple[int, int]:
    """(messages, distinct Message-IDs) in the store."""
    with instance.engine.connect() as conn:
        return conn.execute(select(func.count(), func.count(Message.message_id_header.distinct()))
                            ).one()


def run_import(instance: Instance, *args: str) -> tuple[int, dict]:
    proc = instance.cli("import", *args, "--json", check=False)
    assert proc.returncode in (0, 1, 130), proc.stderr[-2000:]
    return proc.returncode, json.loads(proc.stdout)


def interrupt(instance: Instance, sig: int, *args: str) -> int:
    """Start an import and send ``sig`` once its first window is committed."""
    proc = subprocess.Popen([*POSTDESK, "--config", str(instance.config), "import", *args],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    checkpoints = instance.dir / "imports"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        files = list(checkpoints.glob("*.json")) if checkpoints.exists() else []
        if files and json.loads(files[0].read_text() or "{}").get("done", 0) > 0:
            break
        time.sleep(0.005)
    os.killpg(proc.pid, sig)
    return proc.wait(60)


@pytest.mark.parametrize("kind", ["mbox", "maildir"])
def test_interrupted_import_resumes_and_stores_each_message_once(
        instance: Instance, tmp_path: Path, kind: str) -> None:
    total = 1200
    raws = [mail(kind, i) for i in range(total)]
    source = (write_mbox(tmp_path / "archive.mbox", raws) if kind == "mbox"
              else write_maildir(tmp_path / "Maildir", raws))
    instance.write()
    args = (str(source), "--account", "support", "--no-rules")
    # mbox: a crash (SIGKILL); Maildir: Ctrl-C, which finishes the windows in flight
    code = interrupt(instance, signal.SIGKILL if kind == "mbox" else signal.SIGINT, *args)
    assert code in (-signal.SIGKILL, 130)
    first, distinct = stored(instance)
    assert 0 < first == distinct < total, "not interrupted mid-import"
    code, summary = run_import(instance, *args)
    assert code == 0 and summary["kind"] == kind
    assert 0 < summary["resumed_from"] <= first
    assert summary["done"] == summary["total"] == total and not summary["interrupted"]
    assert summary["imported"] + summary["duplicate"] == total and summary["failed"] == 0
    assert stored(instance) == (total, total)
    if kind == "mbox":  # --restart reads the whole archive again: all duplicates
        code, again = run_import(instance, *args, "--restart")
        assert code == 0 and (again["imported"], again["duplicate"]) == (0, total)
        assert stored(instance) == (total, total)


def test_eml_folder_with_rules_lists_failures_with_reasons(instance: Instance,
                                                           tmp_path: Path) -> None:
    folder = tmp_path / "eml"
    (folder / "sub").mkdir(parents=True)
    for i in range(5):
        (folder / f"{i:02d}.eml").write_bytes(mail("eml", i))
    (folder / "sub" / "spam.eml").write_bytes(
        make_mail("Buy", message_id="<spam@client.test>", headers="X-Spam-Flag: YES\n"))
    (folder / "sub" / "huge.eml").write_bytes(
        make_mail("Huge", message_id="<huge@client.test>", body=("y" * 70 + "\n") * 2000))
    (folder / "notes.txt").write_text("not mail")
    (instance.dir).mkdir(parents=True, exist_ok=True)
    (instance.dir / "rules.yaml").write_text(RULES)
    instance.write(max_size=100_000, extra="rules: [rules.yaml]\n")
    code, summary = run_import(instance, str(folder), "--account", "sales")
    assert code == 0 and summary["kind"] == "eml" and summary["total"] == 7
    assert (summary["imported"], summary["duplicate"], summary["failed"]) == (5, 0, 2)
    reasons = {Path(f["where"]).name: f["reason"] for f in summary["failures"]}
    assert "refused by rule no-spam" in reasons["spam.eml"]
    assert "max_message_size" in reasons["huge.eml"]
    assert stored(instance) == (5, 5)
    [msg] = [m for m in instance.messages() if m.message_id_header == "<eml-0@client.test>"]
    assert msg.account_id == 2 and "with IMPORT" in msg.received_header
    text = instance.cli("import", str(folder), "--account", "sales").stdout
    assert "nothing new" in text and "spam.eml" in text
    assert "imported 5, duplicate 0, failed 2" in text  # the import's totals, over its runs


def test_unknown_account_is_refused(instance: Instance, tmp_path: Path) -> None:
    instance.write()
    (tmp_path / "one.eml").write_bytes(mail("one", 1))
    proc = instance.cli("import", str(tmp_path / "one.eml"), "--account", "nobody",
                        check=False)
    assert proc.returncode != 0 and "no account named 'nobody'" in proc.stderr
