"""The supervisor's pages over HTTP (Flask test client, real SQLite store): agents get 404,
the queue monitor, the deleted-message review with Restore (htmx), read-only preview and
Assign (history)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from conftest import add_messages
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from engine.store.models import History, Message, WorkSession

PAGES = ("/supervisor/", "/supervisor/monitor", "/supervisor/deleted",
         "/supervisor/messages/{pk}")
ACTIONS = ("/supervisor/deleted/{pk}/restore", "/supervisor/messages/{pk}/assign")


def message(engine: Engine, pk: int) -> Message:
    with Session(engine) as session:
        return session.get(Message, pk)


def test_agents_get_404_and_strangers_the_login_page(app, as_user, store_engine: Engine) -> None:
    [pk] = add_messages(store_engine, 1, None, state="deleted")
    client, token = as_user("alice")
    for path in PAGES:
        assert client.get(path.format(pk=pk)).status_code == 404, path
    for path in ACTIONS:
        reply = client.post(path.format(pk=pk), data={"csrf_token": token, "agent": "alice"})
        assert reply.status_code == 404, path
    assert message(store_engine, pk).state == "deleted"
    assert "Supervise" not in client.get("/").get_data(as_text=True)
    stranger = app.test_client()
    assert stranger.get("/supervisor/").headers["Location"].startswith("/login")
    sue, _ = as_user("sue")
    assert "Supervise" in sue.get("/").get_data(as_text=True)
    for path in PAGES:
        assert sue.get(path.format(pk=pk)).status_code == 200, path


def test_queue_monitor_shows_counts_oldest_age_and_holders(as_user,
                                                           store_engine: Engine) -> None:
    now = datetime.now(UTC)
    add_messages(store_engine, 1, "billing", 3, start=now - timedelta(hours=3))
    add_messages(store_engine, 1, "billing", 2, state="assigned", user=1)  # alice
    add_messages(store_engine, 1, "billing", 1, state="draft", user=4)  # carl
    add_messages(store_engine, 2, None, 1, start=now - timedelta(minutes=5))
    sue, _ = as_user("sue")
    html = sue.get("/supervisor/monitor", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert html.startswith('<div id="monitor"') and "<html" not in html
    rows = {(a, q): body for a, q, body in re.findall(
        r'data-account="(\w+)" data-queue="(\w*)">(.*?)</tr>', html, re.S)}
    billing = rows[("support", "billing")]
    assert '<td class="num queued">3</td>' in billing and "3 h 0 min" in billing
    assert "alice: 2" in billing and "carl: 1" in billing
    sales = rows[("sales", "")]
    assert '<td class="num queued">1</td>' in sales and "5 min" in sales
    page = sue.get("/supervisor/").get_data(as_text=True)
    assert 'hx-trigger="every 5s"' in page and "<html" in page


def test_deleted_messages_review_and_restore(as_user, store_engine: Engine) -> None:
    [pk] = add_messages(store_engine, 1, "billing")
    alice, token = as_user("alice")
    alice.post(f"/messages/{pk}/delete", data={"csrf_token": token, "reason": "DUPLICATE"})
    assert message(store_engine, pk).state == "deleted"
    sue, sue_token = as_user("sue")
    html = sue.get("/supervisor/deleted").get_data(as_text=True)
    row = re.search(rf'<tr id="deleted-{pk}">(.*?)</tr>', html, re.S).group(1)
    assert '<td class="by">alice</td>' in row and '<td class="reason">DUPLICATE</td>' in row
    assert f"/supervisor/messages/{pk}" in row
    assert sue.post(f"/supervisor/deleted/{pk}/restore").status_code == 400  # no CSRF token
    done = sue.post(f"/supervisor/deleted/{pk}/restore", headers={"HX-Request": "true"},
                    data={"csrf_token": sue_token})
    assert "is back in its queue" in done.get_data(as_text=True)
    assert message(store_engine, pk).state == "queued"
    with Session(store_engine) as session:
        restored = session.scalars(select(History).where(History.action == "restored")).one()
        assert restored.resource == "sue"
    again = sue.post(f"/supervisor/deleted/{pk}/restore", data={"csrf_token": sue_token},
                     follow_redirects=True)
    assert "is queued, not deleted" in again.get_data(as_text=True)


def test_preview_is_read_only_and_assign_writes_history(as_user, store_engine: Engine) -> None:
    [pk] = add_messages(store_engine, 1, "billing")
    sue, token = as_user("sue")
    html = sue.get(f"/supervisor/messages/{pk}").get_data(as_text=True)
    assert "read-only preview" in html and 'id="reply-form"' not in html
    assert '<option value="alice"' in html and '<option value="carl"' in html
    assert '<option value="bob"' not in html  # bob works sales only
    with Session(store_engine) as session:
        assert session.scalars(select(WorkSession)).all() == []  # not "opened"
    assert sue.post(f"/supervisor/messages/{pk}/assign",
                    data={"agent": "carl"}).status_code == 400  # no CSRF token
    refused = sue.post(f"/supervisor/messages/{pk}/assign", follow_redirects=True,
                       data={"csrf_token": token, "agent": "bob"})
    assert "no active agent &#39;bob&#39; works this account" in refused.get_data(as_text=True)
    sue.post(f"/supervisor/messages/{pk}/assign", data={"csrf_token": token, "agent": "carl"})
    assigned = message(store_engine, pk)
    assert (assigned.state, assigned.assigned_user_id) == ("assigned", 4)
    with Session(store_engine) as session:
        row = session.scalars(select(History).where(History.action == "assigned")).one()
        assert (row.resource, row.user_id, row.detail["to_agent"]) == ("sue", 3, "carl")
    carl, _ = as_user("carl")
    assert f"/messages/{pk}" in carl.get("/").get_data(as_text=True)  # in carl's inbox
