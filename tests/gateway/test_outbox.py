"""The outbox through real SMTP both ways: mail in through the gateway, automatic mail out
to a relay on loopback that accepts, defers, refuses, drops or is down on demand."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from helpers import Instance, make_mail
from outboxkit import history, prepare, rows, send, stored, wait_until
from relay import Relay

RULES = """\
version: 1
rules:
  - name: redirect-legal
    type: auto-redirect
    when: {subject: {contains: lawsuit}}
    to: {address: legal@elsewhere.test}
    mode: resend
  - name: redirect-legal-attached
    type: auto-redirect
    when: {subject: {contains: subpoena}}
    to: {address: legal@elsewhere.test}
    mode: attach
  - name: wrong-desk
    type: auto-redirect
    when: {subject: {contains: quotation}}
    to: {account: sales}
  - name: sales-desk
    type: classification
    accounts: [sales]
    when: {subject: {contains: quotation}}
    classification: quotes
  - name: password-help
    type: auto-reply
    when: {subject: {contains: password}}
    template: password-howto
  - name: broken-template
    type: auto-acknowledge
    when: {subject: {contains: broken}}
    template: nowhere
  - name: ack-everything
    type: auto-acknowledge
    template: ack
"""

def test_auto_acknowledgement_is_composed_sent_once_and_archived(instance: Instance,
                                                                relay: Relay) -> None:
    prepare(instance, relay, RULES).start()
    send(instance, make_mail("Where is my order?", message_id="<ack-1@client.test>"))
    [got] = relay.wait_for(1)
    msg = got.message
    inbound = stored(instance, "<ack-1@client.test>")
    assert got.rcpt_to == ["customer@client.test"]
    assert got.mail_from.startswith("bounces+") and got.mail_from.endswith("@example.test")
    assert msg["From"] == "Example Support <support@example.test>"
    assert msg["To"] == "customer@client.test"
    assert msg["Subject"].startswith("Re: Where is my order? [#PD-")
    assert msg["In-Reply-To"] == "<ack-1@client.test>"
    assert "<ack-1@client.test>" in msg["References"]
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Message-ID"].endswith("@postdesk.test>") and msg["Date"]
    body = msg.get_content()
    assert "Dear Customer," in body and '"Where is my order?"' in body
    assert f"Your reference: {inbound.id}." in body
    [row] = wait_until(lambda: [r for r in rows(instance) if r.state == "sent"])
    assert row.message_id_header == msg["Message-ID"] and row.attempts == 1
    archived = next(m for m in instance.messages() if m.id == row.archived_message_id)
    assert (archived.direction, archived.state, archived.thread_id) == (
        "outbound", "sent", inbound.thread_id)
    assert archived.raw == got.raw and archived.tag_reference
    [sent] = history(instance, "sent")
    assert (sent.resource, sent.reason_code, sent.message_id) == (
        "system", "AUTO_ACKNOWLEDGED", inbound.id)
    listed = instance.cli_json("outbox", "list")
    assert listed[0]["state"] == "sent" and listed[0]["rcpt"] == "customer@client.test"
    time.sleep(1)
    assert len(relay.received) == 1  # never sent twice


def test_reply_to_the_acknowledgement_comes_back_to_its_thread(instance: Instance,
                                                              relay: Relay) -> None:
    prepare(instance, relay, RULES).start()
    send(instance, make_mail("Cracked screen", message_id="<t-1@client.test>"))
    [got] = relay.wait_for(1)
    reply = make_mail(f"AW: {got.message['Subject']}", message_id="<t-2@client.test>")
    send(instance, reply)
    first, answer = stored(instance, "<t-1@client.test>"), stored(instance, "<t-2@client.test>")
    assert answer.thread_id == first.thread_id


def test_auto_reply_is_html_with_a_text_part_and_settles_the_message(instance: Instance,
                                                                    relay: Relay) -> None:
    prepare(instance, relay, RULES).start()
    send(instance, make_mail("Forgot my password", message_id="<pw@client.test>"))
    # acknowledged first (auto-acknowledge comes before auto-reply), then answered
    msg = next(g.message for g in relay.wait_for(2)
               if g.message.get_content_type() != "text/plain")
    assert msg.get_content_type() == "multipart/alternative"
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert "reset your password at example.test/reset" in " ".join(text.split())
    assert "<b>example.test/reset</b>" in html
    assert stored(instance, "<pw@client.test>").state == "auto_replied"


def test_relay_down_then_back_sends_every_message_exactly_once(instance: Instance,
                                                              relay: Relay) -> None:
    relay.down()
    prepare(instance, relay, RULES).start()
    for i in range(20):
        send(instance, make_mail(f"Question {i}", message_id=f"<down-{i}@client.test>"))
    waiting = wait_until(lambda: (r := rows(instance)) and all(
        x.attempts >= 2 and x.state == "pending" for x in r) and r)
    assert len(waiting) == 20 and all("Connect" in (x.last_error or "") or "refused"
                                      in (x.last_error or "") for x in waiting)
    relay.up()
    got = relay.wait_for(20)
    time.sleep(2)  # and nothing more arrives
    assert len(relay.received) == 20
    assert sorted(g.message["In-Reply-To"] for g in got) == sorted(
        f"<down-{i}@client.test>" for i in range(20))
    assert len({g.message["Message-ID"] for g in got}) == 20
    assert all(r.state == "sent" for r in rows(instance))


def test_deferrals_and_dropped_connections_are_retried(instance: Instance,
                                                      relay: Relay) -> None:
    relay.mode = "tempfail"
    prepare(instance, relay, RULES).start()
    send(instance, make_mail("Deferred", message_id="<defer@client.test>"))
    row = wait_until(lambda: next((r for r in rows(instance)
                                   if r.attempts >= 2 and r.state == "pending"), None))
    assert row.state == "pending" and row.last_error.startswith("451")
    relay.mode = "drop"
    wait_until(lambda: rows(instance)[0].attempts >= row.attempts + 1)
    relay.mode = "accept"
    [got] = relay.wait_for(1)
    final = wait_until(lambda: (r := rows(instance)[0]).state == "sent" and r)
    assert final.message_id_header == got.message["Message-ID"]  # composed once


def test_permanent_refusal_fails_the_row_visibly(instance: Instance, relay: Relay) -> None:
    relay.mode = "permfail"
    prepare(instance, relay, RULES).start()
    send(instance, make_mail("Refused", message_id="<refused@client.test>"))
    row = wait_until(lambda: (r := rows(instance)) and r[0].state == "failed" and r[0])
    assert row.attempts == 1 and row.last_error.startswith("550")
    [failed] = instance.cli_json("outbox", "list", "--state", "failed")
    assert failed["id"] == row.id and "User unknown" in failed["last_error"]
    [record] = history(instance, "send-failed")
    assert record.message_id == stored(instance, "<refused@client.test>").id
    relay.mode = "accept"
    assert "pending" in instance.cli("outbox", "retry", str(row.id)).stdout
    relay.wait_for(1)


def test_a_template_that_does_not_exist_fails_the_row(instance: Instance,
                                                      relay: Relay) -> None:
    prepare(instance, relay, RULES).start()
    send(instance, make_mail("broken thing", message_id="<tpl@client.test>"))
    row = wait_until(lambda: (r := rows(instance)) and r[0].state == "failed" and r[0])
    assert "nowhere" in row.last_error and row.raw is None
    assert relay.received == []


def test_crash_between_relay_acceptance_and_bookkeeping_resends_the_same_message(
        instance: Instance, relay: Relay) -> None:
    """The documented policy: a row interrupted mid-send goes again with the same bytes and
    Message-ID, so the receiver can tell it is the same mail; history records it."""
    prepare(instance, relay, RULES)
    instance.start(env={"POSTDESK_TEST_HOLD_AFTER_SEND": "60"})
    send(instance, make_mail("Crash me", message_id="<crash@client.test>"))
    [first] = relay.wait_for(1)
    assert rows(instance)[0].state == "sending"
    instance.kill()
    instance.start()
    second = relay.wait_for(2)[1]
    assert second.message["Message-ID"] == first.message["Message-ID"]
    assert second.raw == first.raw
    row = wait_until(lambda: (r := rows(instance)[0]).state == "sent" and r)
    assert row.attempts == 2
    assert len(history(instance, "send-interrupted")) == 1
    assert len(history(instance, "sent")) == 1


def test_external_redirects_resend_or_attach_the_original(instance: Instance,
                                                         relay: Relay) -> None:
    prepare(instance, relay, RULES).start()
    original = make_mail("About the lawsuit", message_id="<legal-1@client.test>")
    send(instance, original)
    send(instance, make_mail("A subpoena", message_id="<legal-2@client.test>"))
    got = [g for g in relay.wait_for(4) if g.rcpt_to == ["legal@elsewhere.test"]]
    assert len(got) == 2  # the other two: acknowledgements to the customer (an earlier type)
    resent = next(g for g in got if g.message["Resent-To"])
    assert resent.rcpt_to == ["legal@elsewhere.test"]
    assert resent.raw.endswith(original)  # the customer's bytes, unchanged
    assert resent.message["Resent-From"] == "Example Support <support@example.test>"
    attached = next(g for g in got if not g.message["Resent-To"])
    [part] = [p for p in attached.message.iter_attachments()]
    assert part.get_content_type() == "message/rfc822"
    assert part.get_content()["Message-ID"] == "<legal-2@client.test>"
    assert attached.message["Subject"] == "Fwd: A subpoena"
    assert stored(instance, "<legal-1@client.test>").state == "redirected"


def test_internal_redirect_moves_the_message_and_applies_that_accounts_rules(
        instance: Instance, relay: Relay) -> None:
    prepare(instance, relay, RULES).start()
    send(instance, make_mail("Need a quotation", message_id="<quote@client.test>"))
    msg = wait_until(lambda: (m := stored(instance, "<quote@client.test>")).account_id == 2
                     and m.classification == "quotes" and m)
    assert msg.state == "queued"
    [moved] = history(instance, "redirected")
    assert moved.detail["from"] == "support" and moved.detail["to"] == "sales"


def test_pause_and_resume_stop_and_restart_automatic_sending(instance: Instance,
                                                            relay: Relay) -> None:
    prepare(instance, relay, RULES).start()
    instance.cli("outbox", "pause", "--reason", "maintenance")
    send(instance, make_mail("While paused", message_id="<paused@client.test>"))
    time.sleep(1.5)
    assert relay.received == [] and rows(instance)[0].state == "pending"
    health = json.loads(urllib.request.urlopen(
        f"http://127.0.0.1:{instance.http}/healthz", timeout=10).read())
    assert health["alerts"] == ["automatic sending paused: maintenance"]
    instance.cli("outbox", "resume")
    relay.wait_for(1)


def test_the_breaker_pauses_a_flood_of_automatic_mail(instance: Instance,
                                                      relay: Relay) -> None:
    prepare(instance, relay, RULES, breaker_per_minute=3).start()
    for i in range(8):
        send(instance, make_mail(f"Flood {i}", sender=f"c{i}@client.test",
                                 message_id=f"<flood-{i}@client.test>"),
             sender=f"c{i}@client.test")
    wait_until(lambda: "breaker" in instance.cli("outbox", "list").stdout)
    time.sleep(1)
    assert 3 <= len(relay.received) < 8
    assert "breaker: 3 automatic mails" in instance.log()


def test_per_sender_rate_limit_skips_and_records(instance: Instance, relay: Relay) -> None:
    prepare(instance, relay, RULES, auto_per_sender=1).start()
    send(instance, make_mail("First", message_id="<rate-1@client.test>"))
    relay.wait_for(1)
    send(instance, make_mail("Second", message_id="<rate-2@client.test>"))
    row = wait_until(lambda: (r := rows(instance)) and len(r) == 2 and r[1].state == "skipped"
                     and r[1])
    assert row.last_error.startswith("rate-limit")
    [skipped] = history(instance, "auto-skipped")
    assert skipped.message_id == stored(instance, "<rate-2@client.test>").id
    assert len(relay.received) == 1


def test_cancel(instance: Instance, relay: Relay) -> None:
    relay.down()
    prepare(instance, relay, RULES, retry_base_seconds=30).start()
    send(instance, make_mail("Cancel me", message_id="<cancel@client.test>"))
    row = wait_until(lambda: (r := rows(instance)) and r[0].attempts >= 1 and r[0])
    assert "cancelled" in instance.cli("outbox", "cancel", str(row.id)).stdout
    relay.up()
    time.sleep(1)
    assert relay.received == [] and rows(instance)[0].state == "cancelled"


def test_outbox_runs_alone(instance: Instance, relay: Relay, tmp_path: Path) -> None:
    """``postdesk outbox`` sends what another process queued."""
    import signal
    import subprocess
    import sys

    from helpers import ROOT

    prepare(instance, relay, RULES).start()
    instance.cli("outbox", "pause")
    send(instance, make_mail("Queued elsewhere", message_id="<alone@client.test>"))
    instance.stop()
    instance.cli("outbox", "resume")
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "--config",
                             str(instance.config), "outbox"], cwd=ROOT)
    try:
        relay.wait_for(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_templates_from_the_database_with_seed_markers_and_sql_merge_fields(
        instance: Instance, relay: Relay, tmp_path: Path) -> None:
    sql = '"SELECT upper(name) AS DESK FROM accounts WHERE name = :ACCT_NAME"'
    prepare(instance, relay, RULES, sql_fields=f"{{desk: {sql}}}").start()
    seed = tmp_path / "ack.txt"
    seed.write_text("Hello ((*CP_PARTY_NAME*)), the ((*DESK*)) desk has it. "
                    "Tracking: ((?TRACKING?)). {{ not code }}\n")
    out = instance.cli("template", "import", str(seed), "--seed").stdout
    assert "stored text template ack.txt" in out and "optional: TRACKING" in out
    needy = tmp_path / "needy.txt"
    needy.write_text("Refund of ((*REFUND_AMOUNT*)) approved.\n")
    instance.cli("template", "import", str(needy), "--seed", "--name", "nowhere.txt")
    assert [t["name"] for t in instance.cli_json("template", "list")] == ["ack.txt",
                                                                          "nowhere.txt"]
    send(instance, make_mail("Stored template", message_id="<db-tpl@client.test>"))
    [got] = relay.wait_for(1)
    assert got.message.get_content().startswith(
        "Hello Customer, the SUPPORT desk has it. Tracking: . {{ not code }}\r\n")
    send(instance, make_mail("broken promise", message_id="<needy@client.test>"))
    row = wait_until(lambda: (r := rows(instance)) and r[-1].state == "failed" and r[-1])
    assert "REFUND_AMOUNT" in row.last_error  # never a blank in a customer's mail


def test_rate_limits_per_rule_and_per_address(instance: Instance, relay: Relay) -> None:
    rules = ("version: 1\nrules:\n  - name: ack-twice\n    type: auto-acknowledge\n"
             "    template: ack\n    limit: {per_sender: 2, window_hours: 1}\n")
    prepare(instance, relay, rules, auto_per_sender=1,
            auto_limits='{"vip@client.test": 0}').start()
    for i in range(3):
        send(instance, make_mail(f"Again {i}", message_id=f"<again-{i}@client.test>"))
        wait_until(lambda i=i: (r := rows(instance)) and len(r) == i + 1
                   and r[i].state in ("sent", "skipped"))
    send(instance, make_mail("VIP", sender="vip@client.test", message_id="<vip@client.test>"),
         sender="vip@client.test")
    wait_until(lambda: (r := rows(instance)) and len(r) == 4 and r[3].state == "skipped")
    assert [r.state for r in rows(instance)] == ["sent", "sent", "skipped", "skipped"]
    assert "at most 2" in rows(instance)[2].last_error
    assert "at most 0" in rows(instance)[3].last_error


def test_relay_with_starttls_and_auth(instance: Instance, tmp_path: Path) -> None:
    from test_starttls import self_signed

    cert, key = self_signed(tmp_path)
    secure = Relay(tls=(cert, key), login=("desk", "s3cret")).up()
    try:
        prepare(instance, secure, "version: 1\nrules:\n  - {name: ack, type: auto-acknowledge,"
                " template: ack}\n")
        config = instance.config.read_text().replace(
            "tls: none, timeout: 5}", f"tls: starttls, ca_file: {cert}, user: desk, "
            "password: {env: RELAY_PASSWORD}, timeout: 5}")
        instance.config.write_text(config)
        instance.start(env={"RELAY_PASSWORD": "s3cret"})
        send(instance, make_mail("Over TLS", message_id="<tls@client.test>"))
        [got] = secure.wait_for(1)
        assert got.encrypted and got.authenticated
    finally:
        secure.down()
