"""Console fixtures: a store with two accounts, three users, a Flask app and test clients."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from databases import Backend
from flask import Flask
from flask.testing import FlaskClient
from helpers import accounts_added
from playwright.sync_api import Browser, sync_playwright
from sqlalchemy import Engine, insert
from sqlalchemy.orm import Session

from console.app import create_app
from engine.config import DatabaseSettings, Settings
from engine.store.database import make_engine
from engine.store.models import Message
from engine.users import assign_accounts, create_user

PASSWORD = "correct horse battery"
# Debian's chromium, driven by Playwright through executable_path (never `playwright install`)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
OUTPUT = Path(__file__).resolve().parent.parent / "output"  # screenshots of a test run
T0 = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
_seq = iter(range(1, 10**9))


def add_messages(engine: Engine, account: int, classification: str | None, n: int = 1, *,
                 priority: int = 0, start: datetime = T0, state: str = "queued",
                 user: int | None = None) -> list[int]:
    """Insert ``n`` queued messages directly (no parsing): received a minute apart."""
    rows = []
    for i in range(n):
        k, when = next(_seq), start + timedelta(minutes=i)
        rows.append({"dedupe_key": f"k{k}", "message_id_header": f"<m{k}@client.test>",
                     "account_id": account, "classification": classification, "state": state,
                     "priority": priority, "subject": f"Question {k}",
                     "from_addr": f"c{k}@client.test", "from_name": f"Customer {k}",
                     "date": when, "received_at": when,
                     "raw": b"x", "assigned_user_id": user})
    with engine.begin() as conn:
        return list(conn.execute(insert(Message).returning(Message.id), rows).scalars())


def console_store(url: str) -> None:
    """Accounts 1 support, 2 sales; users 1 alice (agent: support), 2 bob (agent: sales),
    3 sue (supervisor), 4 carl (agent: support and sales). A database recipe: built once
    per backend (migrations and scrypt hashes take a second), copied for each test."""
    accounts_added(url)
    engine = make_engine(url)
    with Session(engine) as session, session.begin():
        for name, role in (("alice", "agent"), ("bob", "agent"), ("sue", "supervisor"),
                           ("carl", "agent")):
            create_user(session, name, PASSWORD, role=role)
        assign_accounts(session, "alice", ["support"])
        assign_accounts(session, "bob", ["sales"])
        assign_accounts(session, "carl", ["support", "sales"])
    engine.dispose()  # the last connection checkpoints SQLite's WAL into the file


@pytest.fixture
def store_engine(database: Backend, tmp_path: Path) -> Iterator[Engine]:
    url = database.fresh(tmp_path, console_store)
    engine = make_engine(url)
    yield engine
    engine.dispose()
    database.drop(url)


@pytest.fixture
def app(store_engine: Engine, tmp_path: Path) -> Flask:
    settings = Settings(instance_dir=tmp_path,
                        database=DatabaseSettings(url=str(store_engine.url)))
    return create_app(settings)


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def login(client: FlaskClient, username: str, password: str = PASSWORD) -> str:
    """Log in; returns a CSRF token for later POSTs."""
    token = csrf_of(client.get("/login").get_data(as_text=True))
    reply = client.post("/login", data={"username": username, "password": password,
                                        "csrf_token": token})
    assert reply.status_code == 302, reply.get_data(as_text=True)
    return csrf_of(client.get("/").get_data(as_text=True))


@pytest.fixture
def as_user(app: Flask) -> Any:
    """``as_user("alice")`` → (client, csrf token), logged in."""
    def make(username: str) -> tuple[FlaskClient, str]:
        client = app.test_client()
        return client, login(client, username)
    return make


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium for a test module's end-to-end tests."""
    assert Path(CHROMIUM).exists(), "install chromium (.ci/system-deps.sh test)"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()
