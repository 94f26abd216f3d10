"""The message component's engine: open, presence, wrap-up, transfer, reroute, delete,
drafts, notes, templates, spelling, sanitising, and sending an agent reply through the
real outbox worker to a real relay."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import default
from pathlib import Path

import pytest
from helpers import deliver, make_mail
from outboxkit import relay_settings
from relay import Relay
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from engine import drafts, notes, replies, spelling, threadview, work
from engine.decisions import RulesContext
from engine.mergefields import MissingField
from engine.outboxworker import OutboxWorker
from engine.queues import Viewer, claim_next, viewer_of
from engine.reasons import SEEDED, WRAPUP
from engine.sanitize import clean_style, for_display, for_sending
from engine.store.models import (
    Group,
    History,
    Message,
    Outbox,
    ReasonCode,
    TemplateSource,
    WorkSession,
)
from engine.templates import Templates
from engine.users import assign_accounts, create_user
from rules.schema import load_rules

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


@pytest.fixture
def desk(store: Engine) -> dict[str, Viewer]:
    """Agents ana and bo on support, cy on sales, sue a supervisor."""
    with Session(store) as session, session.begin():
        for name in ("ana", "bo", "cy"):
            create_user(session, name, "pw-" + name)
        sue = create_user(session, "sue", "pw-sue", role="supervisor")
        assign_accounts(session, "ana", ["support"])
        assign_accounts(session, "bo", ["support"])
        assign_accounts(session, "cy", ["sales"])
        session.add(Group(name="billing"))
        session.flush()
        from engine.store.models import User

        users = {u.username: viewer_of(u) for u in session.scalars(select(User))}
        assert sue.role == "supervisor"
    return users


def mail(store: Engine, subject: str = "Where is my order?", **kw: object) -> int:
    return deliver(store, make_mail(subject, **kw)).message_pk  # type: ignore[arg-type]


def claimed(store: Engine, viewer: Viewer) -> int:
    with Session(store) as session, session.begin():
        pk = claim_next(session, viewer.id, 1, "", NOW)
    assert pk is not None
    return pk


def history(session: Session, pk: int, action: str) -> History:
    return session.scalars(select(History).where(History.message_id == pk,
                                                 History.action == action)).one()


def test_reason_codes_are_seeded_from_engine_reasons(store: Engine) -> None:
    with Session(store) as session:
        rows = {r.code: (r.kind, r.description) for r in session.scalars(select(ReasonCode))}
        assert {c for c, (k, _) in rows.items() if k == "system"} == set(SEEDED)
        assert {c: d for c, (k, d) in rows.items() if k == "wrap-up"} == WRAPUP
        assert [r.code for r in work.wrapup_codes(session)] == sorted(WRAPUP)


def test_resolve_needs_a_wrapup_reason_and_records_agent_reason_and_duration(
        store: Engine, desk: dict[str, Viewer]) -> None:
    ana = desk["ana"]
    mail(store)
    pk = claimed(store, ana)
    with Session(store) as session, session.begin():
        message = session.get(Message, pk)
        work.open_message(session, message, ana, NOW)
        work.open_message(session, message, ana, NOW + timedelta(minutes=1))  # clock kept
        for bad in (None, "", "RECEIVED", "NOPE"):  # RECEIVED is the machine's, not wrap-up
            with pytest.raises(work.ReasonRequired):
                work.resolve(session, message, ana, bad, NOW)
        work.resolve(session, message, ana, "resolved_no_action", NOW + timedelta(seconds=95))
    with Session(store) as session:
        message = session.get(Message, pk)
        assert message.state == "resolved"
        row = history(session, pk, "resolved")
        assert (row.resource, row.user_id, row.reason_code) == ("ana", ana.id,
                                                                "RESOLVED_NO_ACTION")
        assert row.detail["duration_seconds"] == 95.0
        assert session.scalars(select(WorkSession)).all() == []
        with pytest.raises(work.NotActive):
            work.resolve(session, message, ana, "RESOLVED_NO_ACTION", NOW)


def test_presence_shows_who_else_has_the_message_open(store: Engine,
                                                      desk: dict[str, Viewer]) -> None:
    pk = mail(store)
    with Session(store) as session, session.begin():
        message = session.get(Message, pk)
        work.open_message(session, message, desk["ana"], NOW)
        work.open_message(session, message, desk["bo"], NOW + timedelta(minutes=2))
        assert work.working(session, pk, desk["ana"].id, NOW + timedelta(minutes=3)) == ["bo"]
        assert work.working(session, pk, desk["bo"].id, NOW + timedelta(minutes=3)) == ["ana"]
        assert work.working(session, pk, desk["bo"].id, NOW + timedelta(minutes=30)) == []


def test_duration_falls_back_to_the_claim_time(store: Engine, desk: dict[str, Viewer]) -> None:
    mail(store)
    pk = claimed(store, desk["ana"])
    with Session(store) as session:
        message = session.get(Message, pk)
        assert work.duration(session, message, desk["ana"], NOW + timedelta(seconds=30)) == 30
        assert work.duration(session, message, desk["bo"], NOW) is None


def test_another_agents_message_cannot_be_finished_but_a_supervisor_can(
        store: Engine, desk: dict[str, Viewer]) -> None:
    mail(store)
    pk = claimed(store, desk["ana"])
    with Session(store) as session, session.begin():
        message = session.get(Message, pk)
        with pytest.raises(work.Taken, match="ana"):
            work.resolve(session, message, desk["bo"], "DUPLICATE", NOW)
        work.resolve(session, message, desk["sue"], "DUPLICATE", NOW)
        assert history(session, pk, "resolved").resource == "sue"


def test_delete_is_soft_and_supervisors_review_and_restore(store: Engine,
                                                           desk: dict[str, Viewer]) -> None:
    pk = mail(store, "Buy cheap watches")
    with Session(store) as session, session.begin():
        message = session.get(Message, pk)
        work.delete_message(session, message, desk["ana"], "SPAM", NOW)
    with Session(store) as session, session.begin():
        message = session.get(Message, pk)
        assert (message.state, message.deleted_at) == ("deleted", NOW)
        assert message.raw  # kept
        assert [m.id for m in work.deleted_messages(session, desk["sue"])] == [pk]
        assert work.deleted_messages(session, desk["cy"]) == []  # another account's
        with pytest.raises(work.WorkError):
            work.restore(session, message, desk["ana"], NOW)
        work.restore(session, message, desk["sue"], NOW)
        assert (message.state, message.deleted_at) == ("queued", None)


def test_transfer_to_an_agent_or_a_group(store: Engine, desk: dict[str, Viewer]) -> None:
    mail(store)
    pk = claimed(store, desk["ana"])
    with Session(store) as session, session.begin():
        message = session.get(Message, pk)
        with pytest.raises(work.WorkError, match="cy"):  # cy does not work support
            work.transfer(session, message, desk["ana"], "TRANSFERRED", NOW, agent="cy")
        with pytest.raises(work.ReasonRequired):
            work.transfer(session, message, desk["ana"], None, NOW, agent="bo")
        work.transfer(session, message, desk["ana"], "TRANSFERRED", NOW, agent="bo")
        assert (message.state, message.assigned_user_id) == ("assigned", desk["bo"].id)
        work.transfer(session, message, desk["bo"], "ESCALATED", NOW, group="billing")
        assert (message.state, message.assigned_user_id, message.route_group) == (
            "queued", None, "billing")
        rows = session.scalars(select(History).where(History.action == "transferred")
                               .order_by(History.id)).all()
        assert [(r.resource, r.reason_code, r.detail.get("to_agent"), r.detail.get("to_group"))
                for r in rows] == [("ana", "TRANSFERRED", "bo", None),
                                   ("bo", "ESCALATED", None, "billing")]
        with pytest.raises(work.WorkError, match="no group"):
            work.transfer(session, message, desk["bo"], "ESCALATED", NOW, group="nope")


def test_a_rerouted_message_is_not_handed_back_to_that_agent(
        store: Engine, desk: dict[str, Viewer]) -> None:
    mail(store)
    pk = claimed(store, desk["ana"])
    with Session(store) as session, session.begin():
        work.reroute(session, session.get(Message, pk), desk["ana"], NOW)
        row = history(session, pk, "rerouted")
        assert (row.resource, row.user_id) == ("ana", desk["ana"].id)
    with Session(store) as session, session.begin():
        assert claim_next(session, desk["ana"].id, 1, "", NOW) is None
        assert claim_next(session, desk["bo"].id, 1, "", NOW) == pk


def test_reroute_to_a_classification_or_to_another_account_decided_by_its_rules(
        store: Engine, desk: dict[str, Viewer], tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\nrules:\n"
                     "  - {name: sales-leads, type: classification, accounts: [sales],\n"
                     "     when: {subject: {contains: order}}, classification: leads}\n"
                     "  - {name: leads-team, type: routing, when: {classification: leads},\n"
                     "     route: {group: closers}}\n")
    context = RulesContext(load_rules([rules], {"support", "sales"}), {1: "support", 2: "sales"})
    first, second = mail(store), mail(store, "Another order")
    with Session(store) as session, session.begin():
        message = session.get(Message, first)
        work.reroute(session, message, desk["ana"], NOW, classification="refunds",
                     reason="WRONG_QUEUE")
        assert (message.classification, message.state, message.account_id) == (
            "refunds", "queued", 1)
        assert history(session, first, "rerouted").reason_code == "WRONG_QUEUE"
        other = session.get(Message, second)
        detail = work.reroute(session, other, desk["ana"], NOW, account="sales", rules=context)
        assert detail["to_account"] == 2
        assert (other.account_id, other.classification, other.route_group, other.state) == (
            2, "leads", "closers", "queued")
        assert other.decision["classification"] == "leads"
        with pytest.raises(work.WorkError, match="no active account"):
            work.reroute(session, session.get(Message, first), desk["ana"], NOW,
                         account="nope")


def test_drafts_survive_sessions_with_attachments_and_take_the_message(
        store: Engine, desk: dict[str, Viewer]) -> None:
    ana = desk["ana"]
    pk = mail(store)
    with Session(store) as session, session.begin():
        message = session.get(Message, pk)
        draft = drafts.save(session, message, ana, "<p>Hello</p>", True, NOW)
        drafts.attach(session, draft, drafts.File("C:\\Users\\x\\invoice.pdf",
                                                  "application/pdf", b"%PDF-1"), NOW)
        drafts.attach(session, draft, drafts.File("b.txt", "text/plain", b"two"), NOW)
        with pytest.raises(drafts.DraftError):
            drafts.attach(session, draft, drafts.File("empty", "text/plain", b""), NOW)
        assert (message.state, message.assigned_user_id) == ("draft", ana.id)
    with Session(store) as session, session.begin():  # "after logout": a new session
        draft = drafts.load(session, pk, ana.id)
        assert (draft.body, draft.html) == ("<p>Hello</p>", True)
        assert [f.filename for f in drafts.files(session, draft)] == ["invoice.pdf", "b.txt"]
        drafts.detach(session, draft, 0, NOW)
        assert [f.data for f in drafts.files(session, draft)] == [b"two"]
        assert drafts.load(session, pk, desk["bo"].id) is None


def test_notes_have_six_types_and_are_read_newest_first(store: Engine,
                                                        desk: dict[str, Viewer]) -> None:
    pk = mail(store)
    assert len(notes.NOTE_TYPES) == 6
    with Session(store) as session, session.begin():
        notes.add_note(session, pk, desk["ana"], "Called her back", "customer-call", NOW)
        notes.add_note(session, pk, desk["bo"], "Refund approved", "resolution",
                       NOW + timedelta(minutes=1))
        for body, kind in (("  ", "general"), ("x", "gossip")):
            with pytest.raises(notes.NoteError):
                notes.add_note(session, pk, desk["bo"], body, kind, NOW)
        listed = notes.notes_for(session, [pk])
        assert [(n.author, n.kind, n.label) for n in listed] == [
            ("bo", "resolution", "Resolution"), ("ana", "customer-call", "Customer call")]


def test_templates_prompt_for_custom_fields_and_enforce_required_ones(
        store: Engine, desk: dict[str, Viewer], tmp_path: Path) -> None:
    (tmp_path / "refund.txt").write_text(
        "Dear {{ INB_FROM_NAME }}, refund {{ AMOUNT }} by {{ AD_USER_NAME }}."
        "{{ EXTRA|default('') }}")
    pk = mail(store)
    with Session(store) as session, session.begin():
        session.add(TemplateSource(name="howto.html", source="<p>Hi {{ CON_FIRST_NAME }}</p>"))
        session.flush()
        assert replies.template_names(session, tmp_path) == ["howto.html", "refund.txt"]
        templates = Templates(replies.template_source(session, tmp_path))
        wanted = replies.prompts(templates, "refund.txt")
        assert (wanted.required, wanted.optional) == ({"AMOUNT"}, {"EXTRA"})
        context = replies.merge_values(session, session.get(Message, pk), desk["ana"],
                                       None, NOW)
        with pytest.raises(MissingField, match="AMOUNT"):
            replies.fill(templates, "refund.txt", context, {"AMOUNT": "  "})
        done = replies.fill(templates, "refund.txt", context, {"AMOUNT": "12 EUR"})
        assert done.text == "Dear Customer, refund 12 EUR by ana."
        assert replies.fill(templates, "howto.html", context, {}).html == "<p>Hi Customer</p>"


def test_spell_check_knows_the_site_dictionary(store: Engine) -> None:
    with Session(store) as session, session.begin():
        spelling.add_word(session, "Postdesk", NOW)
        with pytest.raises(ValueError):
            spelling.add_word(session, "two words", NOW)
        site = spelling.site_words(session)
    found = spelling.check("Thank you for chosing Postdesk.\n> quotd text\nmail a@b.test",
                           site)
    assert [m.word for m in found] == ["chosing"]
    assert "choosing" in found[0].suggestions
    assert [m.word for m in spelling.check("<p>Teh end</p>", html=True)] == ["teh"]


HOSTILE = """<html><head><style>p{background:url(http://t.test/x)}</style>
<script>alert(1)</script></head><body onload="alert(1)">
<img src="x" onerror="alert(1)"><img src="http://t.test/pixel.gif"><img src="cid:logo@x">
<a href="javascript:alert(1)">a</a><a href=" JaVaScRiPt:alert(1)">b</a>
<a href="https://ok.test/">ok</a><svg><script>alert(1)</script></svg>
<p style="color: red; background-image: url(http://t.test/y); width: expression(alert(1))">t</p>
<iframe src="https://evil.test"></iframe><form action="https://evil.test"><input></form>
<div style="behavior: url(x.htc); -moz-binding: url(x)">d</div></body></html>"""


def test_sanitiser_removes_scripts_handlers_javascript_urls_and_css_payloads() -> None:
    cleaned = for_display(HOSTILE, cid_url=lambda cid: f"/cid/{cid}")
    html = cleaned.html.lower()
    for bad in ("<script", "onerror", "onload", "javascript:", "url(", "expression",
                "<iframe", "<form", "<input", "<svg", "behavior", "binding", "t.test"):
        assert bad not in html, bad
    assert '<img src="/cid/logo@x">' in cleaned.html
    assert 'href="https://ok.test/"' in cleaned.html and "color:red" in cleaned.html
    assert cleaned.blocked_images == 1
    assert "http://t.test/pixel.gif" in for_display(HOSTILE, remote_images=True).html
    assert clean_style("color:red;font-size:\\75rl(x)") == "color: red"
    sent = for_sending('<p onclick="x()">Hi <img src="https://cdn.test/a.png"></p><script>')
    assert sent == '<p>Hi <img src="https://cdn.test/a.png"></p>'


# --- sending ----------------------------------------------------------------------------------


def test_send_queues_a_composed_agent_reply_that_the_worker_sends_and_archives(
        store: Engine, desk: dict[str, Viewer], tmp_path: Path, relay: Relay) -> None:
    settings = relay_settings(tmp_path, relay, store)
    ana = desk["ana"]
    mail(store, "Refund please", message_id="<q1@client.test>")
    pk = claimed(store, ana)
    with Session(store) as session, session.begin():
        message = session.get(Message, pk)
        draft = drafts.save(session, message, ana, "<p>Done <b>today</b></p>", True, NOW)
        drafts.attach(session, draft, drafts.File("receipt.txt", "text/plain", b"12 EUR"), NOW)
        reply = replies.Reply(draft.body, True, drafts.files(session, draft))
        outgoing = replies.Outgoing.from_settings(settings, "support")
        with pytest.raises(work.ReasonRequired):
            replies.send(session, message, ana, reply, None, outgoing, NOW)
        seen = threadview.seen_now(session, message)
        row_id = replies.send(session, message, ana, reply, "RESOLVED_ANSWERED", outgoing,
                              datetime.now(UTC), seen=seen)  # due now for the worker
        assert message.state == "resolved"
        assert drafts.load(session, pk, ana.id) is None
        row = session.get(Outbox, row_id)
        assert (row.kind, row.automatic, row.rcpt, row.state) == (
            "agent-reply", False, "customer@client.test", "pending")
        assert row.mail_from.startswith("bounces+")  # VERP
        assert history(session, pk, "replied").reason_code == "RESOLVED_ANSWERED"
        raw = row.raw
    sent = message_from_bytes(raw, policy=default)
    assert sent["Subject"].startswith("Re: Refund please [#PD-")
    assert sent["In-Reply-To"] == "<q1@client.test>"
    assert "Auto-Submitted" not in sent
    assert sent.get_body(("plain",)).get_content().startswith("Done today")
    assert "<b>today</b>" in sent.get_body(("html",)).get_content()
    assert [p.get_filename() for p in sent.iter_attachments()] == ["receipt.txt"]

    worker = OutboxWorker(settings, store)
    assert asyncio.run(worker.step()) == 1
    [got] = relay.wait_for(1)
    assert got.raw == raw
    with Session(store) as session:
        archived = session.scalars(select(Message).where(Message.direction == "outbound")).one()
        original = session.get(Message, pk)
        assert (archived.thread_id, archived.state) == (original.thread_id, "sent")
        assert archived.tag_reference is not None  # a reply without the marker finds it
        assert history(session, pk, "sent").reason_code == "AGENT_REPLY_SENT"


def test_send_stops_when_the_customer_wrote_again_until_confirmed(
        store: Engine, desk: dict[str, Viewer], tmp_path: Path, relay: Relay) -> None:
    settings = relay_settings(tmp_path, relay, store)
    ana = desk["ana"]
    mail(store, "Broken", message_id="<b1@client.test>")
    pk = claimed(store, ana)
    with Session(store) as session:
        seen = threadview.seen_now(session, session.get(Message, pk))
    deliver(store, make_mail("Re: Broken", body="Never mind, it works now.\n",
                             headers="In-Reply-To: <b1@client.test>\n"))
    outgoing = replies.Outgoing.from_settings(settings, "support")
    reply = replies.Reply("We fixed it.")
    with Session(store) as session, session.begin():
        message = session.get(Message, pk)
        with pytest.raises(replies.Collision) as caught:
            replies.send(session, message, ana, reply, "RESOLVED_ANSWERED", outgoing, NOW,
                         seen=seen)
        [news] = caught.value.news
        assert (news.kind, news.text) == ("inbound", "Never mind, it works now.\n")
        assert message.state == "assigned"
        assert session.scalars(select(Outbox)).all() == []
        replies.send(session, message, ana, reply, "RESOLVED_ANSWERED", outgoing, NOW,
                     seen=seen, confirmed=True)
        assert message.state == "resolved"
    assert threadview.Seen.parse(seen.token()) == seen
    assert threadview.Seen.parse("x:1") is None
