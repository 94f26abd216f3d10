"""The gateway's block-wise DATA reader: the same results as reading line by line (RFC 5321
4.5.2 dot-stuffing, aiosmtpd's size and line limits), whatever the TCP segments look like."""

from __future__ import annotations

import asyncio

import pytest

from gateway.smtp import LINE_TOO_LONG, TOO_MUCH_DATA, read_data

LINE_LIMIT = 1001  # aiosmtpd's: 998 octets and CRLF (plus one)


def read(stream: bytes, *, pieces: int = 1, size_limit: int | None = 10_000,
         eof: bool = False) -> tuple[bytes | str | None, bytes]:
    """Feed ``stream`` in ``pieces`` parts; returns (result, what is left for the next
    command)."""

    async def run() -> tuple[bytes | str | None, bytes]:
        reader = asyncio.StreamReader(limit=LINE_LIMIT)
        step = max(1, -(-len(stream) // pieces))

        async def feed() -> None:
            for i in range(0, len(stream), step):
                reader.feed_data(stream[i:i + step])
                await asyncio.sleep(0)
            if eof:
                reader.feed_eof()

        feeder = asyncio.create_task(feed())
        result = await read_data(reader, size_limit, LINE_LIMIT)
        await feeder
        rest = b""
        while reader._buffer:  # what the next command would read
            rest += await reader.read(1 << 20)
        return result, rest

    return asyncio.run(run())


@pytest.mark.parametrize("pieces", [1, 3, 1000])
@pytest.mark.parametrize(("stream", "message"), [
    (b".\r\n", b""),
    (b"Subject: x\r\n\r\nbody\r\n.\r\n", b"Subject: x\r\n\r\nbody\r\n"),
    (b"..leading dot\r\nmid\r\n...\r\n.\r\n", b".leading dot\r\nmid\r\n..\r\n"),
    (b"a.\r\n. \r\n.x\r\n.\r\n", b"a.\r\n \r\nx\r\n"),
    (b"bare\nLF . \n.\nstill\r\n.\r\n", b"bare\nLF . \n.\nstill\r\n"),
    (b"x" * 999 + b"\r\n.\r\n", b"x" * 999 + b"\r\n"),
])
def test_messages_are_read_and_unstuffed(stream: bytes, message: bytes, pieces: int) -> None:
    assert read(stream, pieces=pieces) == (message, b"")


@pytest.mark.parametrize("pieces", [1, 7])
def test_what_the_client_pipelined_after_the_dot_stays_for_the_next_command(
        pieces: int) -> None:
    result, rest = read(b"hi\r\n.\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n", pieces=pieces)
    assert result == b"hi\r\n"
    assert rest == b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"


@pytest.mark.parametrize("pieces", [1, 50])
def test_a_message_over_the_limit_is_refused_after_the_dot(pieces: int) -> None:
    result, rest = read(b"y" * 90 + b"\r\n" + b"z" * 90 + b"\r\n.\r\nQUIT\r\n",
                        pieces=pieces, size_limit=100)
    assert (result, rest) == (TOO_MUCH_DATA, b"QUIT\r\n")
    assert read(b"y" * 98 + b"\r\n.\r\n", size_limit=100)[0] == b"y" * 98 + b"\r\n"
    assert read(b"y" * 99 + b"\r\n.\r\n", size_limit=100)[0] == TOO_MUCH_DATA


def test_a_line_over_the_limit_is_refused() -> None:
    assert read(b"ok\r\n" + b"x" * 1000 + b"\r\n.\r\n")[0] == LINE_TOO_LONG


def test_a_client_that_goes_away_mid_message_gets_nothing_stored() -> None:
    assert read(b"half a message\r\nno dot", eof=True) == (None, b"")


@pytest.mark.parametrize("arg", [
    "<a@b.c>", " <a@b.c> SIZE=100", "<a.b+c@ex-ample.com>  BODY=8BITMIME", "<a@b.c>SIZE=1",
    "<A@B.C>", "<>", "<.a@b>", "<a.@b>", "<a..b@c>", '<"q x"@b.c>', "<a@[1.2.3.4]>",
    "<jürgen@client.test>", "a@b.c", "<a@b.c", "<a@-b.c>", "<a@b-.c>", "<@route:a@b>",
    "<a(comment)@b.c>", "<a@b.c> (comment) SIZE=1", "<a@b..c>", "<a@b.c.>", "",
    "<" + "x" * 70 + "@b.c>",
])
@pytest.mark.parametrize("local_limit", [0, 64])
def test_mail_and_rcpt_addresses_read_as_aiosmtpd_reads_them(arg: str, local_limit: int) -> None:
    """The fast path for plain ``<local@domain>`` gives what aiosmtpd's parser gives."""
    from aiosmtpd.smtp import SMTP

    from gateway.smtp import GuardedSMTP

    ours, theirs = GuardedSMTP(object(), hostname="x"), SMTP(object(), hostname="x")
    ours.local_part_limit = theirs.local_part_limit = local_limit
    assert ours._getaddr(arg) == theirs._getaddr(arg)
