"""Fixtures for the gateway tests: a real Dovecot shared by the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dovecot import Dovecot


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    """One Dovecot for the session; each test logs in as its own fresh user."""
    try:
        server = Dovecot()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield server
    server.close()
