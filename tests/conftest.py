"""Shared pytest fixtures; the helpers they use live in ``helpers.py``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Instance, store_with_accounts
from relay import Relay
from sqlalchemy import Engine


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Engine]:
    """A migrated SQLite store with accounts 1 (support) and 2 (sales); no network."""
    engine = store_with_accounts(f"sqlite:///{tmp_path / 'store.db'}")
    yield engine
    engine.dispose()


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[Instance]:
    """A fresh, not yet started instance; stopped and disposed after the test."""
    inst = Instance(tmp_path / "instance")
    yield inst
    inst.stop()
    if inst._engine is not None:
        inst._engine.dispose()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    """One running gateway shared by a test module (default settings, 1 MB size limit)."""
    inst = Instance(tmp_path_factory.mktemp("gateway")).write().start()
    yield inst
    code = inst.stop()
    if inst._engine is not None:
        inst._engine.dispose()
    assert code == 0, f"serve exited with {code}:\n{inst.log()[-3000:]}"


@pytest.fixture
def relay() -> Iterator[Relay]:
    """A test relay on loopback that accepts mail (``relay.mode`` makes it refuse)."""
    r = Relay().up()
    yield r
    r.down()
