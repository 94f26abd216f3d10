"""Rules inside the SMTP transaction, end to end against ``postdesk serve``."""

from __future__ import annotations

import asyncio
import json
import smtplib
import time
import urllib.request

import aiosmtplib
import pytest
from databases import Backend
from helpers import Instance, make_mail
from sqlalchemy import func, insert, select

from engine.store.models import History, Message, TagValue, User
from engine.tags import TagKeys, generate_secret, seal
from rules.schema import load_rules

RULES = """\
version: 1
rules:
  - name: block-spam
    type: reject
    when: {sender.domain: {in: [spam.test]}}
    message: "Mail from spam.test is not accepted"
  - name: billing
    type: classification
    when: {subject: {contains: invoice}}
    classification: billing
  - name: drop-out-of-office
    type: auto-delete
    when: {subject: {starts_with: "out of office"}}
  - name: gatekeeper
    type: auto-process
    when: {attachment.present: true}
    procedure: "engine.examples:quarantine_check"
  - name: to-their-agent
    type: routing
    priority: 10
    when: {tag.agent: {exists: true}}
    route: {original_agent: true, default: {group: tier1}}
  - name: billing-team
    type: routing
    when: {classification: billing}
    route: {group: billing}
  - name: everyone-else
    type: routing
    priority: 500
    route: {group: tier1}
"""


@pytest.fixture(scope="module")
def ruled(database: Backend, tmp_path_factory: pytest.TempPathFactory) -> Instance:
    where = tmp_path_factory.mktemp("ruled")
    inst = Instance(where, db_url=database.fresh(where))
    inst.dir.mkdir(parents=True, exist_ok=True)
    (inst.dir / "rules.yaml").write_text(RULES)
    (inst.dir / "tag.secret").write_text(generate_secret())
    inst.write(extra="rules: [rules.yaml]\ntags: {current: k1, keys: {k1: {file: tag.secret}}}\n")
    inst.start()
    yield inst
    assert inst.stop() == 0, inst.log()[-3000:]
    if inst._engine is not None:
        inst._engine.dispose()
    database.drop(inst.db_url)


def deliver(inst: Instance, raw: bytes, sender: str = "customer@client.test") -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", inst.smtp, timeout=30) as smtp:
        smtp.ehlo("client.test")
        smtp.mail(sender)
        smtp.rcpt("support@example.test")
        return smtp.data(raw)


def stored(inst: Instance, message_id: str) -> Message:
    [msg] = [m for m in inst.messages() if m.message_id_header == message_id]
    return msg


def health(inst: Instance) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{inst.http}/healthz", timeout=10) as r:
        return json.load(r)


def test_classified_and_routed_to_a_group(ruled: Instance) -> None:
    code, _ = deliver(ruled, make_mail("Your invoice 42", message_id="<r-bill@c>"))
    assert code == 250
    msg = stored(ruled, "<r-bill@c>")
    assert (msg.classification, msg.route_group, msg.state) == ("billing", "billing", "queued")
    assert msg.rule_version == health(ruled)["rules"]["rules_version"]
    matched = [t["rule"] for t in msg.decision["trace"] if t["matched"]]
    assert matched == ["billing", "billing-team"]


def test_reject_refuses_inside_the_transaction_and_stores_nothing(ruled: Instance) -> None:
    raw = make_mail("Buy now", sender="bot@spam.test", message_id="<r-spam@c>")
    code, reply = deliver(ruled, raw, sender="bot@spam.test")
    assert (code, reply) == (550, b"5.7.1 Mail from spam.test is not accepted")
    assert not [m for m in ruled.messages() if m.message_id_header == "<r-spam@c>"]
    assert health(ruled)["gateway"]["rejected_by_rules"] >= 1


def test_auto_delete_stores_as_deleted_with_history_never_queued(ruled: Instance) -> None:
    deliver(ruled, make_mail("Out of office until Monday", message_id="<r-ooo@c>"))
    msg = stored(ruled, "<r-ooo@c>")
    assert msg.state == "deleted" and msg.deleted_at is not None and msg.route_group is None
    with ruled.engine.connect() as conn:
        rows = conn.execute(select(History.action, History.resource, History.reason_code)
                            .where(History.message_id == msg.id)).all()
    assert [tuple(r) for r in rows] == [("received", "system", "RECEIVED"),
                                        ("auto-delete", "system", "AUTO_DELETED")]
    queued = ruled.cli_json("message", "list", "--state", "queued")
    assert msg.id not in [m["id"] for m in queued]


def test_custom_procedure_saying_stop_ends_processing(ruled: Instance) -> None:
    raw = (b"From: c@client.test\r\nTo: support@example.test\r\nSubject: see attached\r\n"
           b"Message-ID: <r-exe@c>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
           b"Content-Type: text/plain\r\n\r\nrun this\r\n--B\r\n"
           b"Content-Type: application/octet-stream\r\n"
           b"Content-Disposition: attachment; filename=setup.exe\r\n\r\nMZ\r\n--B--\r\n")
    deliver(ruled, raw)
    msg = stored(ruled, "<r-exe@c>")
    assert msg.decision["stopped_by"] == "gatekeeper" and msg.route_group is None
    [gate] = [t for t in msg.decision["trace"] if t["rule"] == "gatekeeper"]
    assert gate["note"] == "procedure said stop"


def test_reply_with_a_tag_goes_to_the_original_agent(ruled: Instance) -> None:
    deliver(ruled, make_mail("Where is my parcel?", message_id="<r-orig@c>"))
    original = stored(ruled, "<r-orig@c>")
    keys = TagKeys.from_config({"k1": (ruled.dir / "tag.secret").read_text().strip()}, "k1")
    tag = seal({"agent": "alice", "thread": original.thread_id, "interaction": 7}, keys)
    with ruled.engine.begin() as conn:  # what the outbox will do when it sends alice's reply
        conn.execute(insert(TagValue).values(reference=tag.reference, blob=tag.blob))
    # the customer's client kept only the subject: no In-Reply-To, no References
    reply = make_mail(f"Re: AW: Where is my parcel? {tag.marker}", message_id="<r-reply@c>")
    deliver(ruled, reply)
    msg = stored(ruled, "<r-reply@c>")
    assert (msg.route_agent, msg.route_group) == ("alice", None)
    assert (msg.thread_id, msg.thread_reason) == (original.thread_id, "tag")


def test_forged_tag_is_ignored_and_counted(ruled: Instance) -> None:
    before = health(ruled)["rules"]["forged_tags"]
    deliver(ruled, make_mail("Re: hello [#PD-K1ABCDEFGHJK012345]", message_id="<r-forged@c>"))
    msg = stored(ruled, "<r-forged@c>")
    assert (msg.route_agent, msg.route_group) == (None, "tier1")
    assert msg.thread_reason == "new"
    assert health(ruled)["rules"]["forged_tags"] == before + 1


def version_rules(n: int) -> str:
    return ("version: 1\nrules:\n  - name: stamp\n    type: classification\n"
            f"    classification: v{n}\n")


def test_hot_reload_under_load_loses_nothing_and_uses_one_version_per_message(
        instance: Instance) -> None:
    rules_file = instance.dir / "rules.yaml"
    instance.dir.mkdir(parents=True)
    rules_file.write_text(version_rules(0))
    instance.write(extra="rules: [rules.yaml]\n").start()
    versions = {}
    for n in range(6):  # what each file content is called, as the gateway will see it
        path = instance.dir / f"v{n}.yaml"
        path.write_text(version_rules(n))
        versions[load_rules([path]).version] = f"v{n}"

    async def sender(i: int) -> None:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=instance.smtp, timeout=60) as s:
            for j in range(100):
                await s.sendmail("c@client.test", ["support@example.test"],
                                 make_mail(f"load {i}-{j}", message_id=f"<hr-{i}-{j}@c>"))

    async def editor() -> None:
        # edits start once the load is under way (a slow start on a busy machine must not
        # let every message reach the writer after the last edit)
        def stored_count() -> int:
            with instance.engine.connect() as conn:  # a fresh snapshot each time
                return conn.execute(select(func.count()).select_from(Message)).scalar_one()

        while stored_count() < 50:
            await asyncio.sleep(0.05)
        for n in range(1, 6):
            await asyncio.sleep(0.3)
            if n == 3:
                rules_file.write_text("version: 1\nrules: [broken")  # kept out, old rules run
                await asyncio.sleep(0.3)
            rules_file.write_text(version_rules(n))

    async def run() -> None:
        await asyncio.gather(editor(), *(sender(i) for i in range(20)))

    started = time.monotonic()
    asyncio.run(run())
    messages = [m for m in instance.messages() if m.message_id_header.startswith("<hr-")]
    assert len(messages) == 2000, f"{len(messages)} stored in {time.monotonic() - started:.1f}s"
    for msg in messages:  # each message: exactly one known version, and its classification
        assert versions[msg.rule_version] == msg.classification
    assert len({m.rule_version for m in messages}) >= 2
    with instance.engine.connect() as conn:
        assert conn.execute(select(Message.id).where(Message.rule_version.is_(None))).first() \
            is None


def test_invalid_rules_keep_the_running_set_and_show_in_health(ruled: Instance) -> None:
    rules_file = ruled.dir / "rules.yaml"
    running = health(ruled)["rules"]["rules_version"]
    rules_file.write_text(RULES.replace("type: reject", "type: rejekt"))
    try:
        status = health(ruled)["rules"]
        assert status["rules_version"] == running
        assert "rules.yaml:4:11: rules[0].type: unknown rule type 'rejekt'" in status["rules_error"]
        assert "did you mean 'reject'?" in status["rules_error"]
        deliver(ruled, make_mail("Another invoice", message_id="<r-during@c>"))
        assert stored(ruled, "<r-during@c>").rule_version == running
    finally:
        rules_file.write_text(RULES)
    assert health(ruled)["rules"]["rules_error"] is None


def test_rule_hit_counts(ruled: Instance) -> None:
    def hits() -> dict[str, int]:
        return {s["rule"]: s["hits"] for s in ruled.cli_json("rules", "stats")}

    before = hits()
    deliver(ruled, make_mail("Invoice again", message_id="<r-hits@c>"))
    deliver(ruled, make_mail("x", sender="a@spam.test", message_id="<r-hits2@c>"),
            sender="a@spam.test")
    after = hits()
    assert after["billing"] == before.get("billing", 0) + 1
    assert after["block-spam"] == before.get("block-spam", 0) + 1
    assert after["billing-team"] == before.get("billing-team", 0) + 1
    stats = {s["rule"]: s for s in ruled.cli_json("rules", "stats")}
    assert stats["billing"]["last_matched_at"] is not None
    assert "gatekeeper" in stats and "everyone-else" in stats


def test_backtest_shows_what_a_changed_rule_set_would_do(ruled: Instance) -> None:
    deliver(ruled, make_mail("Invoice to backtest", message_id="<r-bt-bill@c>"))
    deliver(ruled, make_mail("Out of office, backtest", message_id="<r-bt-ooo@c>"))
    changed = ruled.dir / "changed.yaml"
    changed.write_text(RULES.replace("classification: billing", "classification: finance")
                       .replace("route: {group: billing}", "route: {group: finance}"))
    report = json.loads(ruled.cli("rules", "backtest", str(changed), "--json").stdout)
    assert report["evaluated"] == len(ruled.messages())
    by_id = {c["message"]: c["diff"] for c in report["changed"]}
    billed = stored(ruled, "<r-bt-bill@c>")
    assert by_id[str(billed.id)] == {"classification": ["billing", "finance"],
                                     "route": [{"group": "billing"}, {"group": "finance"}]}
    untouched = stored(ruled, "<r-bt-ooo@c>")  # still auto-deleted by the changed rules
    assert str(untouched.id) not in by_id
    assert stored(ruled, "<r-bt-bill@c>").classification == "billing"  # nothing acted on


def test_reply_that_lost_the_marker_finds_the_tag_through_in_reply_to(ruled: Instance) -> None:
    from datetime import UTC, datetime

    deliver(ruled, make_mail("Broken widget", message_id="<r-first@c>"))
    first = stored(ruled, "<r-first@c>")
    keys = TagKeys.from_config({"k1": (ruled.dir / "tag.secret").read_text().strip()}, "k1")
    tag = seal({"agent": "bob", "thread": first.thread_id}, keys)
    with ruled.engine.begin() as conn:  # bob's reply as the outbox will have archived it
        conn.execute(insert(TagValue).values(reference=tag.reference, blob=tag.blob))
        conn.execute(insert(Message).values(
            dedupe_key="out-r-first", message_id_header="<bob-reply@postdesk.test>",
            direction="outbound", account_id=1, thread_id=first.thread_id, state="sent",
            date=datetime.now(UTC), raw=b"...", tag_reference=tag.reference))
    ruled.cli("user", "add", "bob", "--password", "bob-secret-1")
    ruled.cli("user", "assign", "bob", "support")
    reply = make_mail("Re: Broken widget", message_id="<r-lost@c>",
                      headers="In-Reply-To: <bob-reply@postdesk.test>\n")
    deliver(ruled, reply)
    msg = stored(ruled, "<r-lost@c>")
    assert msg.route_agent == "bob" and msg.thread_id == first.thread_id
    # bob works the account: the reply is in his inbox, not up for grabs in the queue
    with ruled.engine.connect() as conn:
        bob = conn.execute(select(User.id).where(User.username == "bob")).scalar_one()
    assert (msg.state, msg.assigned_user_id) == ("assigned", bob)
    # replayed later, the reply still has its tag and known thread: same route, full trace
    explained = ruled.cli_json("rules", "explain", "--stored", str(msg.id))
    assert explained["route"] == {"agent": "bob"}
    assert any(t["rule"] == "to-their-agent" and t["matched"] for t in explained["trace"])
    assert len(explained["trace"]) > len(msg.decision["trace"])  # stored: matched rules only
    assert {t["rule"] for t in msg.decision["trace"]} <= {
        t["rule"] for t in explained["trace"] if t["matched"]}
    report = ruled.cli_json("rules", "backtest", str(ruled.dir / "rules.yaml"))
    assert str(msg.id) not in {c["message"] for c in report["changed"]}
    assert str(first.id) not in {c["message"] for c in report["changed"]}


def test_serve_refuses_to_start_on_invalid_rules(instance: Instance) -> None:
    instance.dir.mkdir(parents=True)
    (instance.dir / "rules.yaml").write_text("version: 1\nrules:\n  - name: x\n    type: nope\n")
    instance.write(extra="rules: [rules.yaml]\n")
    result = instance.cli("serve", check=False)
    assert result.returncode == 2
    assert "rules.yaml:4:11: rules[0].type: unknown rule type 'nope'" in result.stderr


def test_message_show_json_carries_the_decision(ruled: Instance) -> None:
    deliver(ruled, make_mail("Invoice for show", message_id="<r-show@c>"))
    shown = ruled.cli_json("message", "show", str(stored(ruled, "<r-show@c>").id))
    assert shown["classification"] == "billing"
    assert shown["route"] == {"group": "billing", "agent": None}
    assert shown["rule_version"] and shown["decision"]["classification"] == "billing"
