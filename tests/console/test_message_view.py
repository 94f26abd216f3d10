"""The message component over HTTP (Flask test client, real SQLite store): the thread,
sanitised bodies under CSP, attachments, permissions (404), CSRF, wrap-up, drafts,
templates with merge fields, spell check, the collision check at Send, notes, transfer,
reroute, delete."""

from __future__ import annotations

import re
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest
from conftest import csrf_of, login
from flask import Flask
from flask.testing import FlaskClient
from helpers import deliver, make_mail
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from console.app import create_app
from engine.config import AccountSettings, DatabaseSettings, OutboxSettings, Settings
from engine.store.models import Attachment, Blob, Draft, History, Message, Note, Outbox

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
HOSTILE = """<p>Hello <b>agent</b></p><script>alert(1)</script>
<img src="x" onerror="alert(1)"><img src="https://tracker.test/p.gif"><img src="cid:logo@c.test">
<a href="javascript:alert(1)">click</a><a href="https://ok.test/">ok</a>
<p style="color:red;background:url(https://tracker.test/bg)">styled</p>
<style>body{background:url(https://tracker.test/css)}</style>
<iframe src="https://evil.test/"></iframe><form action="https://evil.test/"><input></form>"""


@pytest.fixture
def app(store_engine: Engine, tmp_path: Path) -> Flask:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "refund.txt").write_text("We refund {{ AMOUNT }} to {{ INB_FROM }}.\n")
    (templates / "thanks.txt").write_text("Thanks, {{ CON_FIRST_NAME }}!\n")
    settings = Settings(
        instance_dir=tmp_path, database=DatabaseSettings(url=str(store_engine.url)),
        accounts=[AccountSettings(name="support", addresses=["support@example.test"]),
                  AccountSettings(name="sales", addresses=["sales@example.test"])],
        outbox=OutboxSettings(templates=templates))
    return create_app(settings)


def rich_mail(subject: str = "Invoice question", message_id: str = "<r1@client.test>",
              to: str = "support@example.test") -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = "Customer <customer@client.test>"
    msg["To"], msg["Subject"], msg["Message-ID"] = to, subject, message_id
    msg["Date"] = "Sun, 22 Nov 2026 10:00:00 +0000"
    msg.set_content("Hello agent (text part)\n")
    msg.add_alternative(HOSTILE, subtype="html")
    msg.get_payload()[1].add_related(PNG, "image", "png", cid="<logo@c.test>")
    msg.add_attachment(b"%PDF-1.4 invoice", maintype="application", subtype="pdf",
                       filename="invoice.pdf")
    return msg.as_bytes()


def delivered(engine: Engine, raw: bytes, account: int = 1) -> int:
    return deliver(engine, raw, account).message_pk


def page(client: FlaskClient, pk: int, **args: str) -> str:
    reply = client.get(f"/messages/{pk}", query_string=args)
    assert reply.status_code == 200
    return reply.get_data(as_text=True)


def attachments(engine: Engine, pk: int) -> dict[str, int]:
    with Session(engine) as session:
        return {a.filename or a.content_id: a.id for a in session.scalars(
            select(Attachment).where(Attachment.message_id == pk))}


def state(engine: Engine, pk: int) -> str:
    with Session(engine) as session:
        return session.get(Message, pk).state


def test_thread_newest_first_with_attachments_and_trace(as_user, store_engine: Engine) -> None:
    first = delivered(store_engine, rich_mail())
    second = delivered(store_engine, make_mail("Re: Invoice question", body="Any news?\n",
                                               headers="In-Reply-To: <r1@client.test>\n"))
    client, _ = as_user("alice")
    html = page(client, first)
    assert html.index(f'id="part-{second}"') < html.index(f'id="part-{first}"')
    assert "Any news?" in html and "invoice.pdf" in html
    assert f"/messages/{first}/body/{first}" in html and 'sandbox="allow-same-origin' in html
    assert "allow-scripts" not in html and "Rule trace" in html
    download = client.get(f"/messages/{first}/attachments/"
                          f"{attachments(store_engine, first)['invoice.pdf']}")
    assert download.data == b"%PDF-1.4 invoice"
    assert download.headers["Content-Disposition"].startswith("attachment;")
    assert download.headers["X-Content-Type-Options"] == "nosniff"


def test_body_is_sanitised_and_served_under_a_strict_csp(as_user, store_engine: Engine) -> None:
    pk = delivered(store_engine, rich_mail())
    client, _ = as_user("alice")
    reply = client.get(f"/messages/{pk}/body/{pk}")
    body = reply.get_data(as_text=True).lower()
    csp = reply.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "https:" not in csp
    for bad in ("<script", "onerror", "javascript:", "tracker.test", "url(", "<iframe",
                "<form", "<input", "evil.test"):
        assert bad not in body, bad
    assert "<b>agent</b>" in body and 'href="https://ok.test/"' in body
    cid = re.search(r'src="([^"]*/cid/[^"]*)"', body)
    assert cid is not None
    image = client.get(cid.group(1))
    assert image.data == PNG and image.mimetype == "image/png"
    shown = client.get(f"/messages/{pk}/body/{pk}", query_string={"images": "1"})
    assert "https://tracker.test/p.gif" in shown.get_data(as_text=True)
    assert "https:" in shown.headers["Content-Security-Policy"]


def test_another_accounts_message_and_everything_on_it_answer_404(
        as_user, store_engine: Engine) -> None:
    sales = delivered(store_engine, rich_mail(to="sales@example.test",
                                              message_id="<s1@client.test>"), account=2)
    mine = delivered(store_engine, make_mail("Mine"))
    pdf = attachments(store_engine, sales)["invoice.pdf"]
    client, token = as_user("alice")
    for path in (f"/messages/{sales}", f"/messages/{sales}/body/{sales}",
                 f"/messages/{sales}/attachments/{pdf}", f"/messages/{sales}/presence",
                 f"/messages/{sales}/cid/{sales}/logo@c.test",
                 f"/messages/{mine}/attachments/{pdf}",  # not in my message's thread
                 f"/messages/{mine}/body/{sales}"):
        assert client.get(path).status_code == 404, path
    for action in ("resolve", "delete", "send", "draft", "notes", "transfer", "reroute"):
        reply = client.post(f"/messages/{sales}/{action}",
                            data={"csrf_token": token, "reason": "SPAM", "body": "x"})
        assert reply.status_code == 404, action
    assert state(store_engine, sales) == "queued"
    bob, _ = as_user("bob")
    assert bob.get(f"/messages/{sales}/attachments/{pdf}").status_code == 200


def test_a_post_without_csrf_token_is_refused(as_user, store_engine: Engine) -> None:
    pk = delivered(store_engine, make_mail())
    client, _ = as_user("alice")
    assert client.post(f"/messages/{pk}/resolve",
                       data={"reason": "RESOLVED_NO_ACTION"}).status_code == 400
    assert state(store_engine, pk) == "queued"


def test_resolve_needs_a_reason_and_writes_history(as_user, store_engine: Engine) -> None:
    pk = delivered(store_engine, make_mail())
    client, token = as_user("alice")
    page(client, pk)  # opened: the duration clock starts
    refused = client.post(f"/messages/{pk}/resolve", data={"csrf_token": token},
                          follow_redirects=True)
    assert "choose a wrap-up reason" in refused.get_data(as_text=True)
    assert state(store_engine, pk) == "queued"
    done = client.post(f"/messages/{pk}/resolve", data={
        "csrf_token": token, "reason": "RESOLVED_NO_ACTION", "note": "Solved by phone"})
    assert done.status_code == 302 and done.headers["Location"] == "/"
    with Session(store_engine) as session:
        row = session.scalars(select(History).where(History.action == "resolved")).one()
        assert (row.resource, row.reason_code) == ("alice", "RESOLVED_NO_ACTION")
        assert row.detail["duration_seconds"] is not None
        assert session.scalars(select(Note.kind)).all() == ["resolution"]
    assert state(store_engine, pk) == "resolved"


def test_draft_is_restored_after_logout(app: Flask, as_user, store_engine: Engine) -> None:
    pk = delivered(store_engine, make_mail())
    client, token = as_user("alice")
    saved = client.post(f"/messages/{pk}/draft", data={
        "csrf_token": token, "body": "Dear customer, <draft>", "mode": "text"},
        headers={"HX-Request": "true"})
    assert "Draft saved" in saved.get_data(as_text=True)
    client.post("/logout", data={"csrf_token": token})
    again = app.test_client()
    login(again, "alice")
    assert "Dear customer, &lt;draft&gt;</textarea>" in page(again, pk)
    assert state(store_engine, pk) == "draft"


def test_template_fields_are_prompted_and_required_ones_enforced(
        as_user, store_engine: Engine) -> None:
    pk = delivered(store_engine, make_mail())
    client, token = as_user("alice")
    base = {"csrf_token": token, "body": "Hello,", "mode": "text", "template": "refund.txt"}
    prompt = client.post(f"/messages/{pk}/template", data=base).get_data(as_text=True)
    assert 'name="field.AMOUNT" required' in prompt
    empty = client.post(f"/messages/{pk}/template", data={
        "csrf_token": token, "template": "refund.txt", "filled": "1", "field.AMOUNT": " "})
    assert "Fill in the required fields: AMOUNT" in empty.get_data(as_text=True)
    client.post(f"/messages/{pk}/template", data={
        "csrf_token": token, "template": "refund.txt", "filled": "1",
        "field.AMOUNT": "12 EUR"})
    client.post(f"/messages/{pk}/template", data={"csrf_token": token,
                                                  "template": "thanks.txt"})
    with Session(store_engine) as session:
        draft = session.scalars(select(Draft)).one()
        assert draft.body == ("Hello,\n\nWe refund 12 EUR to customer@client.test.\n\n"
                              "Thanks, Customer!\n")


def test_spell_check_and_the_site_dictionary(as_user, store_engine: Engine) -> None:
    pk = delivered(store_engine, make_mail())
    client, token = as_user("alice")
    form = {"csrf_token": token, "body": "Thanks for chosing Acmeware", "mode": "text"}
    html = client.post(f"/messages/{pk}/spelling", data=form).get_data(as_text=True)
    assert ">chosing</b>" in html and "choosing" in html and ">acmeware</b>" in html
    client.post(f"/messages/{pk}/words", data={"csrf_token": token, "word": "acmeware"})
    html = client.post(f"/messages/{pk}/spelling", data=form).get_data(as_text=True)
    assert ">acmeware</b>" not in html and ">chosing</b>" in html


def test_send_asks_to_confirm_when_the_customer_wrote_meanwhile(
        as_user, store_engine: Engine) -> None:
    pk = delivered(store_engine, make_mail("Broken", message_id="<b1@client.test>"))
    client, token = as_user("alice")
    seen = re.search(r'name="seen" value="([^"]+)"', page(client, pk)).group(1)
    delivered(store_engine, make_mail("Re: Broken", body="It works again!\n",
                                      headers="In-Reply-To: <b1@client.test>\n"))
    form = {"csrf_token": token, "body": "We fixed it.", "mode": "text", "seen": seen,
            "reason": "RESOLVED_ANSWERED"}
    held = client.post(f"/messages/{pk}/send", data=form)
    assert held.status_code == 409 and "It works again!" in held.get_data(as_text=True)
    with Session(store_engine) as session:
        assert session.scalars(select(Outbox)).all() == []
        assert session.scalars(select(Draft.body)).one() == "We fixed it."
    confirm = csrf_of(held.get_data(as_text=True))
    sent = client.post(f"/messages/{pk}/send", data={
        "csrf_token": confirm, "confirmed": "1", "seen": seen, "reason": "RESOLVED_ANSWERED"})
    assert sent.status_code == 302
    with Session(store_engine) as session:
        row = session.scalars(select(Outbox)).one()
        assert (row.kind, row.automatic, row.rcpt) == ("agent-reply", False,
                                                       "customer@client.test")
        assert b"We fixed it." in row.raw and b"Subject: Re: Broken" in row.raw
        assert session.scalars(select(Draft)).all() == []
    assert state(store_engine, pk) == "resolved"


def test_send_without_reason_keeps_the_draft(as_user, store_engine: Engine) -> None:
    pk = delivered(store_engine, make_mail())
    client, token = as_user("alice")
    reply = client.post(f"/messages/{pk}/send", data={
        "csrf_token": token, "body": "Typed with care", "mode": "text"}, follow_redirects=True)
    assert "choose a wrap-up reason" in reply.get_data(as_text=True)
    assert "Typed with care</textarea>" in reply.get_data(as_text=True)
    assert state(store_engine, pk) == "draft"


def test_notes_transfer_reroute_and_delete(as_user, store_engine: Engine) -> None:
    first, second, third = (delivered(store_engine, make_mail(f"Q{i}")) for i in range(3))
    client, token = as_user("alice")
    fragment = client.post(f"/messages/{first}/notes", headers={"HX-Request": "true"},
                           data={"csrf_token": token, "body": "Customer called",
                                 "kind": "customer-call"})
    assert "Customer call" in fragment.get_data(as_text=True)
    assert "<html" not in fragment.get_data(as_text=True)
    client.post(f"/messages/{first}/transfer", data={
        "csrf_token": token, "to": "agent:carl", "reason": "TRANSFERRED", "note": "VIP"})
    client.post(f"/messages/{second}/reroute", data={
        "csrf_token": token, "account": "sales", "classification": "leads"})
    client.post(f"/messages/{third}/delete", data={"csrf_token": token, "reason": "SPAM"})
    with Session(store_engine) as session:
        moved = session.get(Message, first)
        assert (moved.state, moved.assigned_user_id) == ("assigned", 4)  # carl
        rerouted = session.get(Message, second)
        assert (rerouted.account_id, rerouted.classification) == (2, "leads")
        kinds = sorted(session.scalars(select(Note.kind)))
        assert kinds == ["customer-call", "internal"]
    assert state(store_engine, third) == "deleted"
    assert client.get(f"/messages/{second}").status_code == 404  # now in sales
    sue, sue_token = as_user("sue")
    assert "Restore to its queue" in page(sue, third)
    sue.post(f"/messages/{third}/restore", data={"csrf_token": sue_token})
    assert state(store_engine, third) == "queued"


def test_a_template_or_document_can_be_attached_filled_in(as_user, store_engine: Engine) -> None:
    pk = delivered(store_engine, make_mail())
    client, token = as_user("alice")
    form = {"csrf_token": token, "body": "See the attached.", "mode": "text",
            "template": "refund.txt", "as": "attach"}
    prompt = client.post(f"/messages/{pk}/template", data=form).get_data(as_text=True)
    assert 'name="as" value="attach"' in prompt and ">Attach</button>" in prompt
    client.post(f"/messages/{pk}/template", data={
        "csrf_token": token, "template": "refund.txt", "filled": "1", "as": "attach",
        "field.AMOUNT": "12 EUR"})
    with Session(store_engine) as session:
        draft = session.scalars(select(Draft)).one()
        [attached] = draft.attachments
        blob = session.get(Blob, attached["sha256"])
        assert draft.body == "See the attached."  # the body is left as typed
    assert (attached["filename"], attached["content_type"]) == ("refund.txt", "text/plain")
    assert blob.data == b"We refund 12 EUR to customer@client.test.\n"
