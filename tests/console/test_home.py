"""The agent's home page: queues and counts, get next, my inbox, break, today's activity,
and that an agent never reaches another account by URL or fragment."""

from __future__ import annotations

import re
import threading

from conftest import T0, add_messages, login
from flask import Flask
from sqlalchemy import Engine, insert, select

from engine.store.models import History, Message


def _queue_rows(html: str) -> dict[str, str]:
    return dict(re.findall(r'data-queue="([^"]*)">\s*<td>[^<]*</td>\s*<td class="count">(\d+)',
                           html))


def test_home_shows_my_accounts_queues_with_counts_and_hides_empty_ones(
        as_user, store_engine: Engine) -> None:
    add_messages(store_engine, 1, "billing", 3)
    add_messages(store_engine, 1, None, 2)
    add_messages(store_engine, 1, "returns", 1, state="resolved")  # not queued: no queue
    add_messages(store_engine, 2, "leads", 4)
    client, _ = as_user("alice")
    html = client.get("/").get_data(as_text=True)
    assert 'data-account="support"' in html and 'data-account="sales"' not in html
    assert _queue_rows(html) == {"billing": "3", "": "2"}
    assert "returns" not in html and "leads" not in html
    assert 'hx-trigger="every 3s"' in html  # counts refresh live
    add_messages(store_engine, 1, "billing", 1)
    fragment = client.get("/queues", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert "<html" not in fragment and _queue_rows(fragment)["billing"] == "4"


def test_supervisor_sees_every_account(as_user, store_engine: Engine) -> None:
    add_messages(store_engine, 2, "leads", 1)
    client, _ = as_user("sue")
    html = client.get("/").get_data(as_text=True)
    assert 'data-account="support"' in html and 'data-account="sales"' in html


def test_queue_access_limits_the_queues_an_agent_sees_and_pulls(
        as_user, store_engine: Engine) -> None:
    from engine.store.models import QueueAccess

    add_messages(store_engine, 1, "billing", 1)
    add_messages(store_engine, 1, "legal", 1)
    with store_engine.begin() as conn:
        conn.execute(insert(QueueAccess).values(user_id=1, account_id=1, classification="billing"))
    client, token = as_user("alice")
    assert _queue_rows(client.get("/queues").get_data(as_text=True)) == {"billing": "1"}
    refused = client.post("/next", data={"account": "1", "classification": "legal",
                                         "csrf_token": token})
    assert refused.status_code == 303 and refused.headers["Location"] == "/"


def test_get_next_assigns_the_highest_priority_then_oldest_and_opens_it(
        as_user, store_engine: Engine) -> None:
    older, newer = add_messages(store_engine, 1, "billing", 2)
    [urgent] = add_messages(store_engine, 1, "billing", 1, priority=5,
                            start=T0.replace(hour=12))
    client, token = as_user("alice")
    form = {"account": "1", "classification": "billing", "csrf_token": token}
    opened = []
    for _ in range(3):
        reply = client.post("/next", data=form)
        assert reply.status_code == 303
        opened.append(int(reply.headers["Location"].rsplit("/", 1)[1]))
    assert opened == [urgent, older, newer]
    empty = client.post("/next", data=form, follow_redirects=True)
    assert "Nothing left for you in billing" in empty.get_data(as_text=True)
    with store_engine.connect() as conn:
        rows = conn.execute(select(Message.state, Message.assigned_user_id)).all()
        claims = conn.scalar(select(History.id).where(History.action == "claimed",
                                                      History.user_id == 1).limit(1))
    assert set(rows) == {("assigned", 1)} and claims is not None
    page = client.get(f"/messages/{urgent}")
    assert page.status_code == 200 and "Question" in page.get_data(as_text=True)


def test_get_next_by_htmx_redirects_with_a_header(as_user, store_engine: Engine) -> None:
    [mid] = add_messages(store_engine, 1, None, 1)
    client, token = as_user("alice")
    reply = client.post("/next", data={"account": "1", "classification": ""},
                        headers={"HX-Request": "true", "X-CSRFToken": token})
    assert reply.status_code == 204 and reply.headers["HX-Redirect"] == f"/messages/{mid}"


def test_get_next_skips_messages_i_rerouted_away(as_user, store_engine: Engine) -> None:
    first, second = add_messages(store_engine, 1, "billing", 2)
    with store_engine.begin() as conn:
        conn.execute(insert(History).values(message_id=first, action="rerouted", user_id=1,
                                            resource="alice"))
    client, token = as_user("alice")
    reply = client.post("/next", data={"account": "1", "classification": "billing",
                                       "csrf_token": token})
    assert reply.headers["Location"] == f"/messages/{second}"
    other, token = as_user("carl")  # someone else still gets the rerouted one
    reply = other.post("/next", data={"account": "1", "classification": "billing",
                                      "csrf_token": token})
    assert reply.headers["Location"] == f"/messages/{first}"


def test_an_agent_on_a_break_gets_nothing(as_user, store_engine: Engine) -> None:
    add_messages(store_engine, 1, "billing", 1)
    client, token = as_user("alice")
    client.post("/break", data={"on_break": "1", "csrf_token": token})
    assert "Back to work" in client.get("/").get_data(as_text=True)
    reply = client.post("/next", data={"account": "1", "classification": "billing",
                                       "csrf_token": token}, follow_redirects=True)
    assert "You are on a break" in reply.get_data(as_text=True)
    client.post("/break", data={"on_break": "0", "csrf_token": token})
    reply = client.post("/next", data={"account": "1", "classification": "billing",
                                       "csrf_token": token})
    assert reply.headers["Location"].startswith("/messages/")


def test_my_inbox_lists_what_is_assigned_to_me(as_user, store_engine: Engine) -> None:
    [mine] = add_messages(store_engine, 1, "billing", 1, state="assigned", user=1)
    add_messages(store_engine, 1, "billing", 1, state="draft", user=4)  # carl's
    add_messages(store_engine, 1, "billing", 1, state="resolved", user=1)  # settled
    client, _ = as_user("alice")
    fragment = client.get("/accounts/1/inbox", headers={"HX-Request": "true"})
    html = fragment.get_data(as_text=True)
    assert f'href="/messages/{mine}"' in html and html.count("/messages/") == 1
    assert "Customer" in html and "assigned" in html
    assert 'href="/compose?account=1"' in client.get("/").get_data(as_text=True)


def test_today_activity_counts_my_history_rows(as_user, store_engine: Engine) -> None:
    from datetime import UTC, datetime, timedelta

    a, b, c = add_messages(store_engine, 1, "billing", 3, state="assigned", user=1)
    now = datetime.now(UTC)
    rows = [(a, "claimed", now), (a, "sent", now), (a, "resolved", now), (b, "resolved", now),
            (c, "sent", now - timedelta(days=1))]
    with store_engine.begin() as conn:
        conn.execute(insert(History), [{"message_id": m, "action": act, "user_id": 1,
                                        "created_at": at} for m, act, at in rows])
        conn.execute(insert(History).values(message_id=c, action="resolved", user_id=4))
    client, _ = as_user("alice")
    html = client.get("/activity").get_data(as_text=True)
    numbers = {k: int(v) for k, v in re.findall(r'<b class="(\w+)">(\d+)</b>', html)}
    assert numbers == {"handled": 2, "sent": 1, "resolved": 2}


def test_another_accounts_pages_and_fragments_answer_404(as_user, store_engine: Engine) -> None:
    [sales_msg] = add_messages(store_engine, 2, "leads", 1)
    [assigned] = add_messages(store_engine, 2, "leads", 1, state="assigned", user=2)
    client, token = as_user("alice")  # works support only
    for path in (f"/messages/{sales_msg}", f"/messages/{assigned}", "/accounts/2/inbox",
                 "/compose?account=2", "/messages/999999", "/accounts/99/inbox"):
        assert client.get(path).status_code == 404, path
        assert client.get(path, headers={"HX-Request": "true"}).status_code == 404, path
    reply = client.post("/next", data={"account": "2", "classification": "leads",
                                       "csrf_token": token})
    assert reply.status_code == 404
    with store_engine.connect() as conn:
        assert conn.scalar(select(Message.state).where(Message.id == sales_msg)) == "queued"
    owner, _ = as_user("bob")
    assert owner.get(f"/messages/{assigned}").status_code == 200


def test_two_agents_clicking_get_next_at_once_never_get_the_same_message(
        app: Flask, store_engine: Engine) -> None:
    add_messages(store_engine, 1, "billing", 40)
    agents = []
    for name in ("alice", "carl") * 3:  # six clients, two users, separate sessions
        client = app.test_client()
        agents.append((client, login(client, name)))
    got: list[int] = []
    barrier = threading.Barrier(len(agents))

    def work(client, token) -> None:  # type: ignore[no-untyped-def]
        barrier.wait()
        for _ in range(8):
            reply = client.post("/next", data={"account": "1", "classification": "billing",
                                               "csrf_token": token})
            location = reply.headers["Location"]
            if location.startswith("/messages/"):
                got.append(int(location.rsplit("/", 1)[1]))

    threads = [threading.Thread(target=work, args=agent) for agent in agents]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(got) == 40 and len(set(got)) == 40
    with store_engine.connect() as conn:
        owners = conn.execute(select(Message.id, Message.assigned_user_id)).all()
        claims = conn.execute(select(History.message_id).where(
            History.action == "claimed")).scalars().all()
    assert all(owner in (1, 4) for _, owner in owners) and sorted(claims) == sorted(got)
