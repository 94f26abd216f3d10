"""The intake's prepared statements bind values exactly as SQLAlchemy would."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy.dialects import sqlite

from engine.store.database import json_text
from engine.store.models import UTCDateTime
from engine.store.prepared import sqlite_utc

DIALECT = sqlite.dialect()
OWN = UTCDateTime().dialect_impl(DIALECT).bind_processor(DIALECT)


@pytest.mark.parametrize("value", [
    datetime(2026, 11, 23, 8, 0),  # naive: taken as UTC
    datetime(2026, 11, 23, 8, 0, 0, 123, tzinfo=UTC),
    datetime(2026, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=2))),  # across a year
    datetime(2026, 3, 29, 1, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-9, minutes=-30))),
    datetime(1, 1, 1, 0, 0, 0, 1),
])
def test_utc_datetimes_bind_as_sqlalchemy_writes_them_on_sqlite(value: datetime) -> None:
    assert OWN is not None
    assert sqlite_utc(value) == OWN(value)
    assert sqlite_utc(value) == OWN(value)  # again: from the cache, the same text
    assert sqlite_utc(value.replace(microsecond=7)) == OWN(value.replace(microsecond=7))


def test_a_datetime_out_of_range_in_utc_fails_alike() -> None:
    value = datetime(9999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-5)))
    with pytest.raises(OverflowError):
        sqlite_utc(value)
    with pytest.raises(OverflowError):
        OWN(value)  # type: ignore[misc]


@pytest.mark.parametrize("value", [
    {"trace": [["subject", "contains", "'x'", "Grüße 日本", True]], "route": None},
    ["a@example.test", "b@example.test"],
    {"count": 2**70, "nested": {"1": [1.5, None, False]}},  # past 64 bits: json.dumps
    {1: "int key"},  # written as "1", as json.dumps does
])
def test_json_columns_read_back_as_json_dumps_would_have_them(value: Any) -> None:
    assert json.loads(json_text(value)) == json.loads(json.dumps(value))
