"""Login, logout, sessions, CSRF and role checks of the console (Flask test client)."""

from __future__ import annotations

from conftest import PASSWORD, csrf_of, login
from flask import Flask
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from engine.users import set_password


def test_pages_need_a_login(app: Flask) -> None:
    client = app.test_client()
    for path in ("/", "/queues", "/activity", "/accounts/1/inbox", "/messages/1",
                 "/compose?account=1"):
        reply = client.get(path)
        assert reply.status_code == 302, path
        assert reply.headers["Location"].startswith("/login?next="), path


def test_login_with_the_right_password_only(app: Flask) -> None:
    client = app.test_client()
    token = csrf_of(client.get("/login").get_data(as_text=True))
    wrong = client.post("/login", data={"username": "alice", "password": "nope",
                                        "csrf_token": token})
    assert wrong.status_code == 401 and "wrong password" in wrong.get_data(as_text=True)
    unknown = client.post("/login", data={"username": "mallory", "password": PASSWORD,
                                          "csrf_token": token})
    assert unknown.status_code == 401
    assert client.get("/").status_code == 302
    login(client, "alice")
    home = client.get("/")
    assert home.status_code == 200 and "alice" in home.get_data(as_text=True)


def test_login_returns_to_the_page_asked_for_but_never_off_site(app: Flask) -> None:
    client = app.test_client()
    token = csrf_of(client.get("/login").get_data(as_text=True))
    form = {"username": "alice", "password": PASSWORD, "csrf_token": token}
    assert client.post("/login?next=/activity", data=form).headers["Location"] == "/activity"
    client.post("/logout", data={"csrf_token": csrf_of(client.get("/").get_data(as_text=True))})
    token = csrf_of(client.get("/login").get_data(as_text=True))
    form["csrf_token"] = token
    assert client.post("/login?next=//evil.test/x", data=form).headers["Location"] == "/"


def test_posts_without_csrf_token_are_refused(as_user) -> None:
    client, token = as_user("alice")
    assert client.post("/next", data={"account": "1", "classification": ""}).status_code == 400
    assert client.post("/break", data={"on_break": "1"}).status_code == 400
    assert client.post("/logout").status_code == 400
    other = client.application.test_client()
    assert other.post("/login", data={"username": "alice",
                                      "password": PASSWORD}).status_code == 400
    # htmx sends the token in a header (hx-headers on <body>)
    ok = client.post("/break", data={"on_break": "1"},
                     headers={"X-CSRFToken": token, "HX-Request": "true"})
    assert ok.status_code == 200 and "Back to work" in ok.get_data(as_text=True)


def test_logout_ends_the_session(as_user) -> None:
    client, token = as_user("alice")
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/").status_code == 302


def test_a_new_password_ends_existing_sessions(as_user, store_engine: Engine) -> None:
    client, _ = as_user("alice")
    with Session(store_engine) as session, session.begin():
        set_password(session, "alice", "another password")
    assert client.get("/").status_code == 302


def test_the_session_cookie_is_signed_and_http_only(app: Flask) -> None:
    client = app.test_client()
    token = csrf_of(client.get("/login").get_data(as_text=True))
    reply = client.post("/login", data={"username": "alice", "password": PASSWORD,
                                        "csrf_token": token})
    cookie = next(c for c in reply.headers.getlist("Set-Cookie")
                  if c.startswith("postdesk_session="))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    client.set_cookie("postdesk_session", "forged.value.here")
    assert client.get("/").status_code == 302


def test_healthz_answers_without_login(app: Flask) -> None:
    reply = app.test_client().get("/healthz")
    assert reply.status_code == 200 and reply.json["status"] == "ok"
    assert reply.json["database"] == "ok"
