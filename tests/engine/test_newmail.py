"""New messages from agents (engine.newmail): address checks, drafts, and a send that the
real outbox worker delivers to a real relay and archives in a new thread the customer's
answer joins; the supervisor's engine side (queue monitor, deletions, assign)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import default
from pathlib import Path

import pytest
from helpers import deliver, make_mail
from outboxkit import relay_settings as settings_for
from relay import Relay
from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from engine import drafts, monitor, newmail, replies, work
from engine.outboxworker import OutboxWorker
from engine.queues import Viewer, viewer_of
from engine.store.models import (
    ComposeDraft,
    History,
    Message,
    Outbox,
    Thread,
    ThreadParticipant,
    User,
)
from engine.users import assign_accounts, create_user

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


@pytest.fixture
def desk(store: Engine) -> dict[str, Viewer]:
    """Agents ana and bo on support, cy on sales; sue a supervisor."""
    with Session(store) as session, session.begin():
        for name in ("ana", "bo", "cy"):
            create_user(session, name, "pw-" + name)
        create_user(session, "sue", "pw-sue", role="supervisor")
        assign_accounts(session, "ana", ["support"])
        assign_accounts(session, "bo", ["support"])
        assign_accounts(session, "cy", ["sales"])
        session.flush()
        return {u.username: viewer_of(u) for u in session.scalars(select(User))}


def test_addresses_are_validated_deduplicated_and_keep_display_names() -> None:
    pairs = newmail.parse_addresses("Ann Lee <Ann@Client.test>; bo@client.test,\nann@client.test")
    assert pairs == [("Ann Lee", "ann@client.test"), ("", "bo@client.test")]
    assert newmail.parse_addresses("  ") == []
    for bad in ("ann", "ann@localhost", "a b@client.test", "ann@client.test bo@client.test",
                "<ann@client..test>", "ann@-client.test"):
        with pytest.raises(newmail.AddressError, match="not an email address"):
            newmail.parse_addresses(bad, "Cc")


def test_send_checks_reason_recipients_and_body_before_writing_anything(
        store: Engine, desk: dict[str, Viewer], tmp_path: Path, relay: Relay) -> None:
    outgoing = replies.Outgoing.from_settings(settings_for(tmp_path, relay, store), "support")
    good = newmail.NewMail("ann@client.test", "Hello", "Body")
    cases = [(good, None, work.ReasonRequired),
             (newmail.NewMail("", "Hello", "Body"), "ESCALATED", newmail.AddressError),
             (newmail.NewMail("ann@", "Hello", "Body"), "ESCALATED", newmail.AddressError),
             (newmail.NewMail("ann@client.test", "Hello", " "), "ESCALATED", work.WorkError)]
    with Session(store) as session, session.begin():
        for mail, reason, error in cases:
            with pytest.raises(error):
                newmail.send(session, 1, desk["ana"], mail, reason, outgoing, NOW)
        assert session.scalars(select(Outbox)).all() == []
        assert session.scalars(select(Thread)).all() == []


def test_compose_drafts_are_kept_per_user_and_account_with_attachments(
        store: Engine, desk: dict[str, Viewer]) -> None:
    ana = desk["ana"]
    with Session(store) as session, session.begin():
        draft = newmail.save_draft(session, ana, 1, newmail.NewMail(
            "ann@client.test", "Offer", "Dear Ann,", cc="x@client.test"), NOW)
        drafts.attach(session, draft, drafts.File("offer.pdf", "application/pdf", b"%PDF"), NOW)
        newmail.save_draft(session, ana, 2, newmail.NewMail("", "", "other account"), NOW)
    with Session(store) as session, session.begin():
        again = newmail.load_draft(session, ana.id, 1)
        assert (again.to, again.cc, again.subject, again.body) == (
            "ann@client.test", "x@client.test", "Offer", "Dear Ann,")
        assert [f.filename for f in drafts.files(session, again)] == ["offer.pdf"]
        assert newmail.load_draft(session, desk["bo"].id, 1) is None
        newmail.discard_draft(session, ana.id, 1)
        assert [d.account_id for d in session.scalars(select(ComposeDraft))] == [2]


def test_a_new_message_is_sent_by_the_worker_archived_in_a_new_thread_and_answered_there(
        store: Engine, desk: dict[str, Viewer], tmp_path: Path, relay: Relay) -> None:
    settings = settings_for(tmp_path, relay, store)
    ana = desk["ana"]
    outgoing = replies.Outgoing.from_settings(settings, "support")
    with Session(store) as session, session.begin():
        draft = newmail.save_draft(session, ana, 1, newmail.NewMail(
            "Ann Lee <ann@client.test>", "Your order", "<p>It <b>shipped</b></p>",
            cc="boss@client.test; ann@client.test", html=True), NOW)
        drafts.attach(session, draft, drafts.File("label.txt", "text/plain", b"TRACK-1"), NOW)
        mail = newmail.NewMail(draft.to, draft.subject, draft.body, draft.cc, True,
                               drafts.files(session, draft))
        row_id = newmail.send(session, 1, ana, mail, "ESCALATED", outgoing,
                              datetime.now(UTC), note="Called first", note_kind="customer-call")
        row = session.get(Outbox, row_id)
        assert (row.kind, row.automatic, row.rcpt, row.rcpt_to, row.cause_message_id) == (
            "agent-new", False, "ann@client.test", ["ann@client.test", "boss@client.test"],
            None)
        assert row.mail_from.startswith("bounces+")
        thread = session.get(Thread, row.thread_id)
        assert thread.subject == "Your order"
        people = set(session.scalars(select(ThreadParticipant.address)))
        assert people == {"support@example.test", "ann@client.test", "boss@client.test"}
        composed = session.scalars(select(History).where(History.action == "composed")).one()
        assert (composed.user_id, composed.resource, composed.reason_code) == (
            ana.id, "ana", "ESCALATED")
        assert (composed.thread_id, composed.detail["note"]) == (thread.id, "Called first")
        assert newmail.load_draft(session, ana.id, 1) is None
        raw, thread_id = row.raw, row.thread_id
    sent = message_from_bytes(raw, policy=default)
    assert sent["Subject"].startswith("Your order [#PD-")
    assert (sent["To"], sent["Cc"]) == ("Ann Lee <ann@client.test>", "boss@client.test")
    assert "In-Reply-To" not in sent and "Auto-Submitted" not in sent
    assert sent["From"] == "Example Support <support@example.test>"
    text = sent.get_body(("plain",)).get_content()
    assert text.replace("\r\n", "\n") == "It shipped\n\n--\nExample Support\n"
    assert [p.get_filename() for p in sent.iter_attachments()] == ["label.txt"]

    assert asyncio.run(OutboxWorker(settings, store).step()) == 1
    [got] = relay.wait_for(1)
    assert got.raw == raw and sorted(got.rcpt_to) == ["ann@client.test", "boss@client.test"]
    with Session(store) as session:
        archived = session.scalars(select(Message).where(Message.direction == "outbound")).one()
        assert (archived.thread_id, archived.state) == (thread_id, "sent")
        done = session.scalars(select(History).where(History.action == "sent")).one()
        assert done.reason_code == "AGENT_MAIL_SENT"
    answer = deliver(store, make_mail("Re: Your order", sender="ann@client.test",
                                      headers=f"In-Reply-To: {sent['Message-ID']}\n"))
    with Session(store) as session:
        assert session.get(Message, answer.message_pk).thread_id == thread_id


# --- the supervisor's engine side --------------------------------------------------------------


def _messages(store: Engine, *rows: dict) -> list[int]:
    base = {"message_id_header": "<m@x>", "subject": "Q", "from_addr": "c@client.test",
            "date": NOW, "raw": b"x"}
    with store.begin() as conn:
        return [conn.execute(insert(Message).returning(Message.id), {
            **base, "dedupe_key": f"d{i}", **row}).scalar_one() for i, row in enumerate(rows)]


def test_queue_monitor_counts_ages_and_who_holds_what(store: Engine,
                                                      desk: dict[str, Viewer]) -> None:
    ana, bo = desk["ana"].id, desk["bo"].id
    _messages(store,
              {"account_id": 1, "classification": "billing", "received_at": NOW},
              {"account_id": 1, "classification": "billing",
               "received_at": NOW - timedelta(hours=2)},
              {"account_id": 1, "classification": "billing", "state": "assigned",
               "assigned_user_id": ana, "received_at": NOW},
              {"account_id": 1, "classification": None, "state": "draft",
               "assigned_user_id": bo, "received_at": NOW},
              {"account_id": 2, "classification": "leads", "received_at": NOW},
              {"account_id": 1, "classification": "billing", "state": "resolved",
               "assigned_user_id": ana, "received_at": NOW})
    with Session(store) as session:
        loads = monitor.queue_loads(session, desk["sue"])
        table = {(q.account, q.classification): (q.queued, q.age_seconds(NOW), q.held)
                 for q in loads}
        assert table == {("sales", "leads"): (1, 0.0, {}),
                         ("support", ""): (0, None, {"bo": 1}),
                         ("support", "billing"): (2, 7200.0, {"ana": 1})}
        assert [q.account for q in monitor.queue_loads(session, desk["cy"])] == ["sales"]


def test_deletions_show_who_when_why_and_assign_writes_history(
        store: Engine, desk: dict[str, Viewer]) -> None:
    sue, ana = desk["sue"], desk["ana"]
    gone, live = _messages(store, {"account_id": 1, "received_at": NOW},
                           {"account_id": 1, "received_at": NOW})
    with Session(store) as session, session.begin():
        work.delete_message(session, session.get(Message, gone), ana, "SPAM", NOW)
    with Session(store) as session, session.begin():
        [found] = monitor.deletions(session, sue)
        assert (found.message.id, found.by, found.at, found.reason) == (gone, "ana", NOW, "SPAM")
        assert monitor.deletions(session, desk["cy"]) == []
        message = session.get(Message, live)
        with pytest.raises(work.WorkError, match="only supervisors"):
            work.assign(session, message, ana, "bo", NOW)
        with pytest.raises(work.WorkError, match="no active agent 'cy'"):
            work.assign(session, message, sue, "cy", NOW)  # cy works sales only
        work.assign(session, message, sue, "bo", NOW)
        assert (message.state, message.assigned_user_id) == ("assigned", desk["bo"].id)
        row = session.scalars(select(History).where(History.action == "assigned")).one()
        assert (row.resource, row.detail["to_agent"], row.detail["from_agent"]) == (
            "sue", "bo", None)
        assert monitor.agents_for(session, 1) == ["ana", "bo"]
        with pytest.raises(work.NotActive):
            work.assign(session, session.get(Message, gone), sue, "bo", NOW)
