"""Composing a new message over HTTP (Flask test client, real SQLite store): only the
user's accounts, CSRF, validated addresses, drafts with templates and attachments, and a
Send that the real outbox worker delivers to a real relay and archives in a new thread."""

from __future__ import annotations

import asyncio
from email import message_from_bytes
from email.policy import default
from io import BytesIO
from pathlib import Path

import pytest
from flask import Flask
from outboxkit import relay_settings
from relay import Relay
from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from console.app import create_app
from engine.outboxworker import OutboxWorker
from engine.store.models import ComposeDraft, History, Message, Outbox, TemplateSource


@pytest.fixture
def app(store_engine: Engine, tmp_path: Path, relay: Relay) -> Flask:
    with store_engine.begin() as conn:
        conn.execute(insert(TemplateSource), [{"name": "offer.txt", "source":
                     "Dear {{ CON_EMAIL }}, {{ PLAN }} costs {{ PRICE }}. {{ AD_USER_NAME }}\n"}])
    return create_app(relay_settings(tmp_path, relay, store_engine), engine=store_engine)


def form(token: str, **fields: str) -> dict[str, str]:
    return {"csrf_token": token, "to": "", "cc": "", "subject": "", "body": "",
            "mode": "text", **fields}


def draft_of(engine: Engine) -> ComposeDraft | None:
    with Session(engine) as session:
        return session.scalars(select(ComposeDraft)).one_or_none()


def test_only_the_users_accounts_can_compose(as_user, store_engine: Engine) -> None:
    client, token = as_user("alice")  # support only
    page = client.get("/compose?account=1")
    assert page.status_code == 200 and 'name="to"' in page.get_data(as_text=True)
    assert "support@example.test" in page.get_data(as_text=True)
    for path in ("/compose?account=2", "/compose?account=x", "/compose", "/compose?account=9"):
        assert client.get(path).status_code == 404, path
    for action in ("send", "draft", "template", "attachments", "spelling", "discard"):
        reply = client.post(f"/compose/2/{action}", data=form(
            token, to="a@client.test", body="x", reason="ESCALATED"))
        assert reply.status_code == 404, action
    assert draft_of(store_engine) is None
    sue, _ = as_user("sue")  # supervisors write from any account
    assert sue.get("/compose?account=2").status_code == 200


def test_a_post_without_csrf_token_is_refused(as_user, store_engine: Engine) -> None:
    client, token = as_user("alice")
    fields = form(token, to="a@client.test", body="Hi", reason="ESCALATED")
    del fields["csrf_token"]
    assert client.post("/compose/1/send", data=fields).status_code == 400
    assert client.post("/compose/1/draft", data=fields).status_code == 400
    assert draft_of(store_engine) is None


def test_drafts_keep_what_was_typed_through_errors_and_logins(app: Flask, as_user,
                                                              store_engine: Engine) -> None:
    client, token = as_user("alice")
    saved = client.post("/compose/1/draft", headers={"HX-Request": "true"}, data=form(
        token, to="ann@client.test", subject="Offer", body="Dear <Ann>"))
    assert saved.get_data(as_text=True).startswith('<span id="draft-status">Draft saved')
    bad = client.post("/compose/1/send", data=form(
        token, to="ann@client.test, not-an-address", subject="Offer", body="Dear <Ann>",
        reason="ESCALATED"), follow_redirects=True)
    html = bad.get_data(as_text=True)
    assert "To: not an email address: not-an-address" in html
    assert 'value="ann@client.test, not-an-address"' in html
    assert "Dear &lt;Ann&gt;</textarea>" in html
    no_reason = client.post("/compose/1/send", data=form(
        token, to="ann@client.test", body="Dear Ann"), follow_redirects=True)
    assert "choose a wrap-up reason" in no_reason.get_data(as_text=True)
    with Session(store_engine) as session:
        assert session.scalars(select(Outbox)).all() == []
    again, _ = as_user("alice")
    assert "Dear Ann</textarea>" in again.get("/compose?account=1").get_data(as_text=True)
    client.post("/compose/1/discard", data={"csrf_token": token})
    assert draft_of(store_engine) is None


def test_send_with_template_and_attachment_reaches_the_relay_through_the_worker(
        app: Flask, as_user, store_engine: Engine, relay: Relay) -> None:
    client, token = as_user("alice")
    base = form(token, to="Ann <ann@client.test>", cc="boss@client.test", subject="New plan",
                body="Hello,", template="offer.txt")
    prompt = client.post("/compose/1/template", data=base).get_data(as_text=True)
    assert 'name="field.PLAN" required' in prompt and 'name="field.PRICE" required' in prompt
    missing = client.post("/compose/1/template", data={
        "csrf_token": token, "template": "offer.txt", "filled": "1", "field.PLAN": "Gold"})
    assert "Fill in the required fields: PRICE" in missing.get_data(as_text=True)
    client.post("/compose/1/template", data={"csrf_token": token, "template": "offer.txt",
                                             "filled": "1", "field.PLAN": "Gold",
                                             "field.PRICE": "9 EUR"})
    assert draft_of(store_engine).body == (
        "Hello,\n\nDear ann@client.test, Gold costs 9 EUR. alice\n")
    client.post("/compose/1/attachments", content_type="multipart/form-data", data={
        "csrf_token": token, "file": (BytesIO(b"%PDF plan"), "plan.pdf", "application/pdf")})
    assert [a["filename"] for a in draft_of(store_engine).attachments] == ["plan.pdf"]
    sent = client.post("/compose/1/send", data={"csrf_token": token, "reason": "ESCALATED",
                                                "note": "Upsell", "note_kind": "follow-up"})
    assert sent.status_code == 302 and sent.headers["Location"] == "/"
    with Session(store_engine) as session:
        row = session.scalars(select(Outbox)).one()
        assert (row.kind, row.automatic, row.rcpt_to) == (
            "agent-new", False, ["ann@client.test", "boss@client.test"])
        composed = session.scalars(select(History).where(History.action == "composed")).one()
        assert (composed.resource, composed.reason_code, composed.detail["note"]) == (
            "alice", "ESCALATED", "Upsell")
    assert draft_of(store_engine) is None

    assert asyncio.run(OutboxWorker(app.extensions["postdesk.settings"],
                                    store_engine).step()) == 1
    [got] = relay.wait_for(1)
    mail = message_from_bytes(got.raw, policy=default)
    assert mail["Subject"].startswith("New plan [#PD-") and mail["Cc"] == "boss@client.test"
    assert "Gold costs 9 EUR" in mail.get_body(("plain",)).get_content()
    assert [p.get_filename() for p in mail.iter_attachments()] == ["plan.pdf"]
    with Session(store_engine) as session:
        archived = session.scalars(select(Message).where(Message.direction == "outbound")).one()
        assert (archived.state, archived.thread_id) == ("sent", row.thread_id)
    home = client.get("/").get_data(as_text=True)
    assert "queued for sending" in home
