"""Threading: In-Reply-To, References, subject fallback limited by participants and time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from helpers import deliver
from sqlalchemy import Engine, select

from engine.store.models import Message, Thread
from engine.threads import normalize_subject

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def mail(mid: str, subject: str = "Order 17 is late", *, sender: str = "ann@client.test",
         to: str = "support@example.test", cc: str = "", irt: str = "", refs: str = "",
         date: datetime = T0) -> bytes:
    lines = [f"From: {sender}", f"To: {to}", f"Subject: {subject}", f"Message-ID: {mid}",
             f"Date: {date.strftime('%a, %d %b %Y %H:%M:%S +0000')}"]
    lines += [f"Cc: {cc}"] * bool(cc) + [f"In-Reply-To: {irt}"] * bool(irt)
    lines += [f"References: {refs}"] * bool(refs)
    return ("\r\n".join(lines) + "\r\n\r\nbody of " + mid + "\r\n").encode()


def put(store: Engine, mid: str, *args: str, date: datetime = T0, **kw: str):
    """Deliver ``mail(...)`` as if it arrived at its Date (a future Date is not trusted)."""
    return deliver(store, mail(mid, *args, date=date, **kw), when=date)


def thread_of(engine: Engine, pk: int) -> tuple[int, str]:
    with engine.connect() as conn:
        row = conn.execute(select(Message.thread_id, Message.thread_reason)
                           .where(Message.id == pk)).one()
    return row.thread_id, row.thread_reason


def test_reply_prefixes_are_normalised() -> None:
    assert normalize_subject("AW: Re[2]: SV: Fwd: Order 17") == ("order 17", True)
    assert normalize_subject("[Support] Re:  Order   17") == ("order 17", True)
    assert normalize_subject("Order 17") == ("order 17", False)


def test_in_reply_to_joins_and_says_why(store: Engine) -> None:
    first = deliver(store, mail("<a1@c>"), when=T0)
    reply = deliver(store, mail("<a2@c>", "Something else", irt="<a1@c>"), when=T0)
    assert thread_of(store, reply.message_pk) == (thread_of(store, first.message_pk)[0],
                                                   "in-reply-to")
    assert thread_of(store, first.message_pk)[1] == "new"


def test_references_chain_with_a_missing_middle(store: Engine) -> None:
    """Two replies citing a root we never got still meet; the newest known reference wins."""
    a = put(store, "<b2@c>", "Re: x", refs="<b1-never-seen@c>")
    b = put(store, "<b3@c>", "Re: y", refs="<b1-never-seen@c> <b-unknown@c>",
                            irt="<b-unknown@c>")
    assert thread_of(store, b.message_pk) == (thread_of(store, a.message_pk)[0], "references")


def test_reply_from_someone_only_in_cc_joins(store: Engine) -> None:
    first = put(store, "<c1@c>", "Broken printer", cc="bob@client.test")
    reply = put(store, "<c2@c>", "Re: Broken printer", sender="bob@client.test",
                                date=T0 + timedelta(days=1))
    assert thread_of(store, reply.message_pk) == (thread_of(store, first.message_pk)[0],
                                                   "subject")


def test_subject_fallback_needs_a_participant_a_reply_and_a_recent_thread(store: Engine) -> None:
    first = put(store, "<d1@c>", "Invoice question")
    thread = thread_of(store, first.message_pk)[0]
    stranger = put(store, "<d2@c>", "Re: Invoice question", sender="eve@other.test")
    in_time = put(store, "<d5@c>", "AW: Invoice question", date=T0 + timedelta(days=3))
    too_late = put(store, "<d4@c>", "Re: Invoice question", date=T0 + timedelta(days=60))
    not_reply = put(store, "<d3@c>", "Invoice question", date=T0 + timedelta(days=61))
    assert thread_of(store, stranger.message_pk) == (thread + 1, "new")
    assert thread_of(store, in_time.message_pk) == (thread, "subject")
    assert thread_of(store, too_late.message_pk) == (thread + 2, "new")
    assert thread_of(store, not_reply.message_pk) == (thread + 3, "new")


def test_thread_counts_and_activity(store: Engine) -> None:
    first = put(store, "<e1@c>")
    put(store, "<e2@c>", irt="<e1@c>", date=T0 + timedelta(hours=5))
    with store.connect() as conn:
        thread = conn.execute(select(Thread).where(
            Thread.id == thread_of(store, first.message_pk)[0])).one()
    assert thread.message_count == 2
    assert thread.last_message_at == T0 + timedelta(hours=5)
