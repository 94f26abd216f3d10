"""End to end in headless Chromium against a real ``postdesk serve``: log in, see the
queue counts update live, get next lands on the message, two agents clicking together get
different messages; /healthz keeps the gateway's JSON on the console's port.

Debian's chromium is driven by Playwright through ``executable_path`` (never
``playwright install``); screenshots go to ``tests/output/``.
"""

from __future__ import annotations

import json
import re
import smtplib
import urllib.request
from collections.abc import Iterator

import pytest
from conftest import OUTPUT, PASSWORD
from databases import Backend
from helpers import Instance, make_mail, wait_port
from playwright.sync_api import Browser, Page, expect
from sqlalchemy.orm import Session

from engine.store.database import writer
from engine.users import assign_accounts, create_user


@pytest.fixture(scope="module")
def served(database: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    where = tmp_path_factory.mktemp("console-e2e")
    inst = Instance(where, db_url=database.fresh(where)).write().start()
    wait_port(inst.http, 20, inst.proc)
    with Session(writer(inst.engine)) as session, session.begin():  # the server writes too
        for name in ("alice", "carl"):
            create_user(session, name, PASSWORD)
            assign_accounts(session, name, ["support"])
    yield inst
    code = inst.stop()
    inst.engine.dispose()
    database.drop(inst.db_url)
    assert code == 0, inst.log()[-3000:]


def _send(inst: Instance, n: int) -> None:
    with smtplib.SMTP("127.0.0.1", inst.smtp, timeout=10) as smtp:
        for i in range(n):
            smtp.sendmail("customer@client.test", ["support@example.test"],
                          make_mail(f"Order {i} is late"))


def _login(browser: Browser, inst: Instance, user: str) -> Page:
    page = browser.new_context(viewport={"width": 1200, "height": 700}).new_page()
    page.goto(f"http://127.0.0.1:{inst.http}/")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("#queues")).to_be_visible()
    return page


def _count(page: Page) -> object:
    return page.locator('#queues tr[data-queue=""] td.count')


def test_log_in_see_counts_live_and_get_next(browser: Browser, served: Instance) -> None:
    _send(served, 3)
    page = _login(browser, served, "alice")
    expect(_count(page)).to_have_text("3")
    _send(served, 1)
    expect(_count(page)).to_have_text("4", timeout=20_000)  # htmx polling, no reload
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "console-home.png"), full_page=True)
    page.click('#queues tr[data-queue=""] button.next')
    expect(page).to_have_url(re.compile(r"/messages/\d+$"))
    page.goto(f"http://127.0.0.1:{served.http}/")
    expect(_count(page)).to_have_text("3")
    expect(page.locator("table.inbox tbody tr")).to_have_count(1)
    page.screenshot(path=str(OUTPUT / "console-home-inbox.png"), full_page=True)
    page.wait_for_load_state()  # keys.js is deferred: a key before it runs does nothing
    page.keyboard.press("n")  # the shortcut: next from the first queue
    expect(page).to_have_url(re.compile(r"/messages/\d+$"))
    page.wait_for_load_state()  # the URL changes before the new page's scripts have run
    first = page.url
    page.keyboard.press("n")  # on a message: next from its queue
    expect(page).not_to_have_url(first)
    expect(page).to_have_url(re.compile(r"/messages/\d+$"))
    for width, height in ((1280, 800), (820, 1180)):  # a laptop and a tablet: no sideways scroll
        page.set_viewport_size({"width": width, "height": height})
        for url in (page.url, f"http://127.0.0.1:{served.http}/"):
            page.goto(url)
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), (
                width, url)
    page.context.close()


def test_two_agents_clicking_together_get_different_messages(browser: Browser,
                                                              served: Instance) -> None:
    _send(served, 2)  # its own two messages, whatever earlier tests took
    pages = [_login(browser, served, user) for user in ("alice", "carl")]
    for page in pages:
        expect(_count(page)).not_to_have_text("0")
    for page in pages:  # the second click goes out before the first page has navigated
        page.locator('#queues tr[data-queue=""] button.next').click(no_wait_after=True)
    ids = []
    for page in pages:
        expect(page).to_have_url(re.compile(r"/messages/\d+$"))
        ids.append(page.url.rsplit("/", 1)[1])
        page.context.close()
    assert ids[0] != ids[1]


def test_healthz_keeps_the_gateways_json_on_the_console_port(served: Instance) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{served.http}/healthz", timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "ok" and {"http", "smtp", "lmtp"} <= set(body["listeners"])
    assert body["gateway"]["accepted"] >= 4 and "outbox" in body and "rules" in body
