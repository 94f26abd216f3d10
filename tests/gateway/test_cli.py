"""The ``postdesk`` command line: init, JSON listing, show, reprocess, users."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from helpers import POSTDESK, ROOT, Instance, make_mail
from sqlalchemy import update

from engine.store.models import Message


# `postdesk init` makes the embedded instance, whose database is an SQLite file by design
def test_init_creates_a_working_instance_once(tmp_path: Path) -> None:
    target = tmp_path / "var"
    first = subprocess.run([*POSTDESK, "init", "--instance", str(target)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120, check=True)
    assert "admin user 'admin', password: " in first.stdout
    assert {p.name for p in target.iterdir()} >= {"postdesk.yaml", "rules.yaml", "postdesk.db"}
    users = subprocess.run([*POSTDESK, "--config", str(target / "postdesk.yaml"), "user", "list",
                            "--json"], cwd=tmp_path, capture_output=True, text=True, check=True)
    [admin] = json.loads(users.stdout)
    assert admin | {"id": 1, "username": "admin", "admin": True, "active": True,
                    "role": "admin", "accounts": []} == admin
    assert (target / "console-secret.key").stat().st_mode & 0o077 == 0
    again = subprocess.run([*POSTDESK, "init", "--instance", str(target)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120, check=True)
    assert "already initialised" in again.stdout and "password" not in again.stdout


def test_init_ships_a_template_for_every_template_the_example_rules_name(tmp_path: Path) -> None:
    import re
    from datetime import UTC, datetime

    from engine.config import load_settings
    from engine.mergefields import InboundFields, merge_context
    from engine.mime import parse_message
    from engine.templates import Templates

    target = tmp_path / "var"
    subprocess.run([*POSTDESK, "init", "--instance", str(target)], cwd=tmp_path,
                   capture_output=True, text=True, timeout=120, check=True)
    names = re.findall(r"^\s+template: ([\w-]+)", (target / "rules.yaml").read_text(), re.M)
    assert names
    settings = load_settings(target / "postdesk.yaml")
    templates = Templates(settings.outbox.templates)
    now = datetime.now(UTC)
    inbound = InboundFields.from_parsed(parse_message(make_mail("Invoice 12"), now), now)
    context = merge_context(account=settings.accounts[0], inbound=inbound, now=now)
    for name in names:
        [file] = [p.name for p in settings.outbox.templates.glob(f"{name}.*")]
        rendered = templates.render(file, context)
        assert "Invoice 12" in rendered.text or "customer@client.test" in rendered.text


def test_message_list_and_show_json(gateway: Instance) -> None:
    import smtplib

    with smtplib.SMTP("127.0.0.1", gateway.smtp, timeout=30) as smtp:
        smtp.sendmail("a@client.test", ["support@example.test"],
                      make_mail("For support", sender="a@client.test", message_id="<cli-1@c>"))
        smtp.sendmail("b@client.test", ["sales@example.test"],
                      make_mail("For sales", sender="b@client.test", message_id="<cli-2@c>"))
    sales = gateway.cli_json("message", "list", "--account", "sales")
    assert [m["subject"] for m in sales] == ["For sales"]
    item = sales[0]
    assert set(item) >= {"id", "account", "from", "subject", "date", "state", "thread", "size"}
    assert (item["account"], item["from"], item["state"]) == ("sales", "b@client.test", "queued")
    assert gateway.cli_json("message", "list", "--state", "resolved") == []
    shown = gateway.cli_json("message", "show", str(item["id"]))
    assert shown["text"].strip() == "Hi there." and shown["to"] == ["support@example.test"]
    raw = subprocess.run([*POSTDESK, "--config", str(gateway.config), "message", "show",
                          str(item["id"]), "--raw"], cwd=ROOT, capture_output=True, timeout=60)
    assert raw.stdout.startswith(b"Received: from ") and raw.stdout.endswith(b"Hi there.\r\n")
    missing = gateway.cli("message", "show", "999999", check=False)
    assert missing.returncode != 0 and "no message 999999" in missing.stderr


def test_reprocess_clears_attention(gateway: Instance) -> None:
    import smtplib

    with smtplib.SMTP("127.0.0.1", gateway.smtp, timeout=30) as smtp:
        smtp.sendmail("a@client.test", ["support@example.test"],
                      make_mail("Needs a look", message_id="<cli-3@c>"))
    [msg] = [m for m in gateway.messages() if m.message_id_header == "<cli-3@c>"]
    with gateway.engine.begin() as conn:  # as the pipeline leaves a message it failed on
        conn.execute(update(Message).where(Message.id == msg.id).values(
            needs_attention=True, error="Traceback: boom", thread_id=None))
    flagged = gateway.cli_json("message", "list", "--attention")
    assert [m["id"] for m in flagged] == [msg.id]
    result = gateway.cli("message", "reprocess", str(msg.id))
    assert f"message {msg.id} reprocessed" in result.stdout
    assert gateway.cli_json("message", "list", "--attention") == []
    shown = gateway.cli_json("message", "show", str(msg.id))
    assert shown["error"] is None and shown["thread"] is not None


def test_user_add_hashes_the_password(gateway: Instance) -> None:
    out = gateway.cli("user", "add", "agent1", "--password", "s3cret-pass").stdout
    assert "agent1" in out
    with gateway.engine.connect() as conn:
        stored = conn.exec_driver_sql(
            "SELECT password_hash FROM users WHERE username='agent1'").scalar()
    assert "s3cret-pass" not in stored and stored.startswith("scrypt:")
    dup = gateway.cli("user", "add", "agent1", check=False)
    assert dup.returncode != 0 and "already exists" in dup.stderr


def test_db_upgrade_creates_the_schema(instance: Instance) -> None:
    instance.write()
    result = instance.cli("db", "upgrade")
    assert "database at head" in result.stdout
    from engine.store.database import current_revision

    versions = ROOT / "engine" / "store" / "migrations" / "versions"
    head = max(path.name[:4] for path in versions.glob("[0-9]*.py"))
    assert current_revision(instance.engine) == head
    check = instance.cli("config", "check")
    assert "is valid (2 accounts)" in check.stdout


def test_rules_example_passes_rules_check(instance: Instance) -> None:
    instance.write()  # accounts support and sales, as the example expects
    result = instance.cli("rules", "check", str(ROOT / "rules.example.yaml"))
    assert result.stdout.startswith("postdesk: ok, 17 rules, version ")


def test_rules_check_lists_every_problem_with_location(instance: Instance) -> None:
    instance.write()
    bad = instance.dir / "bad.yaml"
    bad.write_text("version: 1\nrules:\n  - name: a\n    type: classification\n"
                   "    accounts: [suport]\n    when: {subjet: {contains: x}}\n"
                   "    classification: c\n")
    result = instance.cli("rules", "check", str(bad), check=False)
    assert result.returncode == 1
    assert (f"{bad}:5:16: rules[0].accounts: unknown account 'suport' "
            "(did you mean 'support'?)") in result.stderr
    assert (f"{bad}:6:12: rules[0].when.subjet: unknown condition key 'subjet' "
            "(did you mean 'subject'?)") in result.stderr
    assert "2 problem(s)" in result.stderr


def test_rules_explain_and_stats(gateway: Instance, tmp_path: Path) -> None:
    rules = tmp_path / "r.yaml"
    rules.write_text("version: 1\nrules:\n  - name: billing\n    type: classification\n"
                     "    when: {subject: {contains: invoice}}\n    classification: billing\n")
    eml = tmp_path / "m.eml"
    eml.write_bytes(make_mail("Invoice 7", message_id="<explain@c>"))
    out = gateway.cli("rules", "explain", str(eml), "--rules-file", str(rules)).stdout
    assert "MATCH classification      billing" in out
    assert "true  subject contains 'invoice'  (actual: 'Invoice 7')" in out
    assert out.rstrip().endswith("state:          queued")
    decision = json.loads(gateway.cli("rules", "explain", str(eml), "--rules-file", str(rules),
                                      "--json").stdout)
    assert decision["classification"] == "billing"
    assert gateway.cli_json("rules", "stats") == []  # this gateway runs without rules
