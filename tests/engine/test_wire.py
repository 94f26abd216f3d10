"""What crosses the pipe to the writer process comes back equal (``engine.wire``)."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta, timezone

import pytest

from engine.deliveries import Envelope
from engine.mime import Address, Attachment, ParsedMessage, parse_message

MAIL = (b"From: =?utf-8?q?J=C3=BCrgen?= <j@client.test>\r\nTo: a@x.test, B <b@x.test>\r\n"
        b"Subject: Hello\r\nDate: Sun, 22 Nov 2026 10:00:05 +0200\r\nMessage-ID: <m@x>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
        b"--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; "
        b"filename=a.pdf\r\n\r\n%PDF\r\n--b--\r\n")


def _round_trip(value: object) -> object:
    return pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def test_a_parsed_message_comes_back_equal() -> None:
    parsed = parse_message(MAIL, datetime(2026, 11, 22, 9, tzinfo=UTC))
    assert parsed.attachments and parsed.from_ and len(parsed.to) == 2
    back = _round_trip(parsed)
    assert back == parsed and type(back) is ParsedMessage
    assert back.date.tzinfo is UTC and back.date == parsed.date
    assert isinstance(back.from_, Address) and isinstance(back.attachments[0], Attachment)


@pytest.mark.parametrize("when", [
    datetime(2026, 11, 22, 10, 0, 5, 123456, tzinfo=UTC),
    datetime(2026, 11, 22, 10, 0, 5, tzinfo=UTC),  # no microseconds: ISO text omits them
    datetime(2026, 11, 22, 10, 0, 5),  # naive
    datetime(2026, 11, 22, 10, 0, 5, tzinfo=timezone(timedelta(hours=2), "CEST")),  # named
])
def test_an_envelope_keeps_its_moment_and_zone_exactly(when: datetime) -> None:
    envelope = Envelope("<a@client.test>", [(1, "support@example.test")], when,
                        "Received: from x", "LMTP")
    back = _round_trip(envelope)
    assert back == envelope
    assert back.received_at.tzinfo is when.tzinfo or (
        back.received_at.tzname() == when.tzname() and back.received_at.utcoffset()
        == when.utcoffset())
    assert type(back.received_at) is datetime
