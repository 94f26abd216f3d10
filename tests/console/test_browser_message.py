"""Working a message end to end in headless Chromium against a real ``postdesk serve`` whose
outbox sends to a real SMTP relay on loopback: get next, read, insert a template with custom
fields, save the draft, reload, send with a wrap-up reason; the relay gets the threaded
reply. A hostile HTML mail runs nothing and loads nothing; the keyboard shortcuts work.

Screenshots (1280x800) go to ``tests/output/``; with ``POSTDESK_SCREENSHOTS=docs`` they also
replace the README's ``docs/screenshots/console-{home,message}.png`` (fixed data, so only
times and ids differ between runs; a plain test run never touches the working tree).
"""

from __future__ import annotations

import os
import re
import smtplib
from collections.abc import Iterator
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import parseaddr

import pytest
from conftest import OUTPUT, PASSWORD
from databases import Backend
from helpers import ROOT, Instance, wait_port
from outboxkit import history, prepare, rows, stored, wait_until
from playwright.sync_api import Browser, Page, expect
from relay import Relay
from sqlalchemy.orm import Session

from engine.store.database import writer
from engine.users import assign_accounts, create_user

DOCS = ROOT / "docs" / "screenshots"
VIEWPORT = {"width": 1280, "height": 800}

RULES = """\
version: 1
rules:
  - name: billing
    type: classification
    accounts: [support]
    when: {any: [{subject: {contains: invoice}}, {subject: {contains: refund}}]}
    classification: billing
  - name: orders
    type: classification
    accounts: [support]
    when: {subject: {contains: order}}
    classification: orders
  - name: shipping
    type: classification
    accounts: [support]
    when: {subject: {contains: delivery}}
    classification: shipping
"""
REFUND = """\
We have refunded {{ AMOUNT }} for invoice {{ INVOICE_NO }}; it reaches your card within five \
working days.
{{ NOTE|default('') }}
Kind regards,
{{ AD_FULL_NAME }}
"""
CUSTOMER_MID = "<refund-1043@client.test>"
FOLLOW_UP = "Any news on this? My statement still shows both charges.\n\nDana\n"
QUESTION = ("<p>Hello,</p><p>I was charged <b>twice</b> for invoice 1043 (49.00 EUR). "
            "Could you refund the second charge?</p><p>Thanks,<br>Dana</p>")
FILLER = [("support", "Invoice address change for ACME GmbH"),
          ("support", "Refund still pending?"),
          ("support", "Order 5521 has not arrived"),
          ("support", "Wrong size in order 5530"),
          ("support", "Delivery to a parcel locker"),
          ("support", "Partnership enquiry"),
          ("sales", "Quote for 40 seats"),
          ("sales", "Volume discount")]
HOSTILE = """<p>Totally <b>harmless</b> newsletter</p>
<img src=x onerror="window.parent.pwned=1"><script>parent.pwned=1</script>
<a href="javascript:parent.pwned=1">click me</a>
<style>body{background:url(http://evil.test/style)}</style>
<div style="background-image:url(http://evil.test/inline)">styled</div>
<svg onload="parent.pwned=1"><circle r="5"></circle></svg><svg><script>parent.pwned=1</script></svg>
<link rel="stylesheet" href="http://evil.test/link.css">
<meta http-equiv="refresh" content="0;url=http://evil.test/meta">
<iframe src="http://evil.test/frame" onload="parent.pwned=1"></iframe>
<object data="http://evil.test/object"></object><embed src="http://evil.test/embed">
<base href="http://evil.test/"><form action="http://evil.test/form"><button>go</button></form>
<noscript><p title="</noscript><img src=x onerror=parent.pwned=1>"></noscript>
<img src="http://evil.test/pixel.png">"""


def mail(subject: str, html: str, *, to: str = "support@example.test",
         sender: str = "Dana Whitfield <dana@client.test>", message_id: str | None = None,
         i: int = 0, headers: dict[str, str] | None = None) -> bytes:
    """A mail with a text part and, when ``html`` has markup, an HTML alternative."""
    msg = EmailMessage(policy=SMTP)
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    for name, value in (headers or {}).items():
        msg[name] = value
    msg["Message-ID"] = message_id or f"<filler-{i}@client.test>"
    msg["Date"] = f"Mon, 23 Nov 2026 {8 + i // 6:02d}:{(i * 7) % 60:02d}:00 +0000"
    msg.set_content(re.sub(r"<[^>]+>", "", html.replace("</p>", "\n")))
    if "<" in html:
        msg.add_alternative(html, subtype="html")
    return msg.as_bytes()


def deliver(inst: Instance, raw: bytes) -> None:
    """Through the gateway's SMTP listener, envelope from the mail's own From and To."""
    headers = message_from_bytes(raw)
    with smtplib.SMTP("127.0.0.1", inst.smtp, timeout=10) as smtp:
        smtp.sendmail(parseaddr(headers["From"])[1], [parseaddr(headers["To"])[1]], raw)


@pytest.fixture(scope="module")
def relay(database: Backend) -> Iterator[Relay]:
    """One relay per backend's ``served`` instance (the tests count what it received)."""
    r = Relay().up()
    yield r
    r.down()


@pytest.fixture(scope="module")
def served(database: Backend, tmp_path_factory: pytest.TempPathFactory,
           relay: Relay) -> Iterator[Instance]:
    where = tmp_path_factory.mktemp("console-message")
    inst = prepare(Instance(where, db_url=database.fresh(where)), relay, RULES)
    (inst.dir / "templates" / "refund.txt").write_text(REFUND)
    inst.start()
    wait_port(inst.http, 20, inst.proc)
    with Session(writer(inst.engine)) as session, session.begin():  # the server writes too
        create_user(session, "alice", PASSWORD).display_name = "Alice Moreau"
        assign_accounts(session, "alice", ["support", "sales"])
    deliver(inst, mail("Refund for invoice 1043", QUESTION, message_id=CUSTOMER_MID, i=0))
    deliver(inst, mail("Re: Refund for invoice 1043", FOLLOW_UP, i=9, message_id=(
        "<refund-1043-2@client.test>"), headers={"In-Reply-To": CUSTOMER_MID}))
    for i, (account, subject) in enumerate(FILLER, start=1):  # later: the refund is next
        deliver(inst, mail(subject, f"<p>{subject}.</p>", to=f"{account}@example.test",
                           sender=f"Customer {i} <c{i}@client.test>", i=i))
    yield inst
    code = inst.stop()
    inst.engine.dispose()
    database.drop(inst.db_url)
    assert code == 0, inst.log()[-3000:]


def login(browser: Browser, inst: Instance) -> Page:
    page = browser.new_context(viewport=VIEWPORT).new_page()
    page.goto(f"http://127.0.0.1:{inst.http}/")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("#queues")).to_be_visible()
    return page


def shoot(page: Page, name: str) -> None:
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / name))
    if os.environ.get("POSTDESK_SCREENSHOTS") == "docs":
        DOCS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS / name))


def test_get_next_reply_with_a_template_save_reload_and_send(browser: Browser, served: Instance,
                                                             relay: Relay) -> None:
    page = login(browser, served)
    billing = page.locator('#queues [data-account="support"] tr[data-queue="billing"]')
    expect(billing.locator("td.count")).to_have_text("4")
    expect(page.locator('#queues [data-account="sales"] .count.total')).to_have_text("2")
    shoot(page, "console-home.png")

    billing.locator("button.next").click()
    expect(page).to_have_url(re.compile(r"/messages/\d+$"))
    pk = stored(served, CUSTOMER_MID).id
    assert page.url.endswith(f"/messages/{pk}")
    expect(page.locator("h1")).to_have_text("Refund for invoice 1043")
    question = page.frame_locator(f"#part-{pk} iframe.mailbody")
    expect(question.locator("b")).to_have_text("twice")  # the sanitised HTML, in its frame
    expect(page.locator(".thread h2")).to_contain_text("2 mails")  # with the follow-up
    expect(page.locator(".thread pre.mailtext")).to_contain_text("still shows both charges")

    page.fill("#reply-body", "Dear Dana,")
    page.select_option("select[name=template]", "refund.txt")
    page.click("#reply-form button:has-text('Insert')")
    prompt = page.locator("form.fields")  # the template's own fields are asked for
    expect(prompt.locator("input[name='field.AMOUNT']")).to_have_attribute("required", "")
    expect(prompt.locator("input[name='field.NOTE']")).not_to_have_attribute("required", "")
    prompt.locator("input[name='field.AMOUNT']").fill("49.00 EUR")
    prompt.locator("input[name='field.INVOICE_NO']").fill("1043")
    prompt.locator("button[type=submit]").click()
    body = page.locator("#reply-body")
    expect(body).to_have_value(re.compile(
        r"^Dear Dana,\n\nWe have refunded 49.00 EUR for invoice 1043;"))

    page.fill("#reply-body", body.input_value() + "\nP.S. Sorry for the trouble.")
    page.click("button:has-text('Save draft')")
    expect(page.locator(".flash")).to_contain_text("Draft saved")
    page.reload()
    expect(body).to_have_value(re.compile(r"Alice Moreau\n*\nP\.S\. Sorry for the trouble\.$"))
    expect(page.locator("#draft-status")).to_contain_text("Draft saved")
    page.evaluate("window.scrollTo(0, 0)")
    shoot(page, "console-message.png")

    page.select_option("#reply-form select[name=reason]", "")  # no reason: refused, kept
    page.click("#reply-form button[data-key=send]")
    expect(page.locator(".flash")).to_contain_text("wrap-up reason")
    expect(body).to_have_value(re.compile(r"Sorry for the trouble\.$"))
    page.select_option("#reply-form select[name=reason]", "RESOLVED_ANSWERED")
    body.focus()
    page.keyboard.press("Control+Enter")  # the send shortcut
    expect(page.locator(".flash")).to_contain_text(f"Reply to message {pk} queued for sending")

    [got] = relay.wait_for(1)
    sent = got.message
    assert sent["Subject"].startswith("Re: Refund for invoice 1043 [#PD-")
    assert sent["In-Reply-To"] == CUSTOMER_MID and CUSTOMER_MID in sent["References"]
    assert got.rcpt_to == ["dana@client.test"]
    text = sent.get_content()
    assert "We have refunded 49.00 EUR for invoice 1043" in re.sub(r"\s+", " ", text)
    assert "Sorry for the trouble." in text and "{{" not in text
    assert stored(served, CUSTOMER_MID).state == "resolved"
    [replied] = history(served, "replied")
    assert (replied.resource, replied.reason_code) == ("alice", "RESOLVED_ANSWERED")
    wait_until(lambda: [r for r in rows(served) if r.state == "sent"])
    page.goto(f"http://127.0.0.1:{served.http}/messages/{pk}")  # archived in the thread
    expect(page.locator(".thread h2")).to_contain_text("3 mails")
    expect(page.locator(".side")).to_contain_text("This message is resolved")
    page.context.close()


def test_hostile_html_runs_nothing_and_loads_nothing(browser: Browser, served: Instance) -> None:
    deliver(served, mail("<img src=x onerror=pwned=1> Newsletter", HOSTILE,
                         sender='"Evil <script>pwned=1</script>" <evil@client.test>',
                         message_id="<hostile-1@client.test>", i=20))
    pk = wait_until(lambda: [m.id for m in served.messages()
                             if m.message_id_header == "<hostile-1@client.test>"])[0]
    page = login(browser, served)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(f"http://127.0.0.1:{served.http}/messages/{pk}")
    expect(page.locator("h1")).to_have_text("<img src=x onerror=pwned=1> Newsletter")
    frame = page.frame_locator(f"#part-{pk} iframe.mailbody")
    expect(frame.locator("b")).to_have_text("harmless")
    frame.locator("text=click me").click()  # a javascript: link does nothing either
    page.wait_for_load_state("load")
    mail_frames = [f for f in page.frames if f != page.main_frame]
    assert [f.url.split("?")[0] for f in mail_frames] == [
        f"http://127.0.0.1:{served.http}/messages/{pk}/body/{pk}"]
    assert page.evaluate("window.pwned") is None
    for f in mail_frames:
        assert f.evaluate("window.pwned") is None
        assert f.evaluate("document.body.querySelectorAll("
                          "'script,style,iframe,object,embed,form,base,link,meta[http-equiv]'"
                          ").length") == 0
        assert f.evaluate("[...document.querySelectorAll('*')].flatMap(e => "
                          "[...e.attributes].map(a => a.name + '=' + a.value))"
                          ".filter(a => /^on|javascript:|url\\(/i.test(a))") == []
    assert any(f"/messages/{pk}/body/{pk}" in url for url in requested)  # frames are seen
    assert [url for url in requested if "evil.test" in url] == []
    assert dialogs == []


def test_keyboard_shortcuts(browser: Browser, served: Instance) -> None:
    pk = stored(served, "<filler-3@client.test>").id
    page = login(browser, served)
    page.goto(f"http://127.0.0.1:{served.http}/messages/{pk}")
    expect(page.locator("#reply-body")).not_to_be_focused()
    page.keyboard.press("r")
    expect(page.locator("#reply-body")).to_be_focused()
    expect(page.locator("#reply-body")).to_have_value("")  # the key focused, it did not type
    page.locator("h1").click()  # out of the textarea: shortcuts are live again
    asked: list[str] = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    page.keyboard.press("e")
    expect(page.locator("h1")).to_be_visible()
    assert asked == ["Resolve this message without replying?"]
    assert stored(served, "<filler-3@client.test>").state != "resolved"  # dismissed
    page.once("dialog", lambda dialog: dialog.accept())
    page.keyboard.press("e")
    expect(page.locator(".flash")).to_contain_text(f"Message {pk} resolved")
    assert stored(served, "<filler-3@client.test>").state == "resolved"
    page.context.close()
