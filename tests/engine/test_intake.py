"""The intake pipeline in-process: group commit, idempotency, faults stored for attention."""

from __future__ import annotations

import asyncio

import pytest
from helpers import make_mail, write_lock_held
from rolekit import wait_until
from sqlalchemy import Engine, func, select

import engine.deliveries as deliveries
import engine.intakewriter as intakewriter
from engine.deliveries import Envelope, reprocess
from engine.intake import Intake, StoreUnavailable
from engine.store.models import History, Message, MessageAccount


def envelope(account: int = 1) -> Envelope:
    return Envelope("customer@client.test", [(account, "support@example.test")])


def count(engine: Engine, model: type = Message) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(model)).scalar_one()


async def receive_all(engine: Engine, raws: list[bytes], **kw: object) -> list[object]:
    intake = Intake(engine.url.render_as_string(hide_password=False), **kw)
    await intake.start()
    try:
        return await asyncio.gather(*(intake.receive(r, envelope()) for r in raws),
                                    return_exceptions=True)
    finally:
        await intake.stop()


def test_many_concurrent_messages_commit_in_groups(store: Engine) -> None:
    raws = [make_mail(f"m{i}", message_id=f"<g{i}@c>") for i in range(200)]
    receipts = asyncio.run(receive_all(store, raws, max_batch=32))
    assert all(not isinstance(r, Exception) for r in receipts)
    assert len({r.message_pk for r in receipts}) == 200 == count(store)


def test_redelivery_inside_one_group_is_stored_once(store: Engine) -> None:
    raw = make_mail("dup", message_id="<dup@c>")
    receipts = asyncio.run(receive_all(store, [raw, raw, raw]))
    assert len({r.message_pk for r in receipts}) == 1
    assert [r.duplicate for r in receipts] == [False, True, True]
    assert count(store) == 1 and count(store, MessageAccount) == 1


def test_a_pipeline_fault_stores_raw_for_attention_and_others_pass(
        store: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    real = deliveries.message_columns

    def flaky(parsed):  # a bug that hits one message only
        if parsed.subject == "poison":
            raise ZeroDivisionError("rule bug")
        return real(parsed)

    monkeypatch.setattr(deliveries, "message_columns", flaky)
    raws = [make_mail("ok1", message_id="<f1@c>"), make_mail("poison", message_id="<f2@c>"),
            make_mail("ok2", message_id="<f3@c>")]
    receipts = asyncio.run(receive_all(store, raws))
    assert [r.needs_attention for r in receipts] == [False, True, False]
    with store.connect() as conn:
        poison = conn.execute(select(Message).where(Message.id == receipts[1].message_pk)).one()
    assert poison.raw == raws[1] and "ZeroDivisionError: rule bug" in poison.error
    assert poison.thread_id is None and poison.state == "queued"

    monkeypatch.setattr(deliveries, "message_columns", real)  # the bug is fixed
    with store.begin() as conn:
        reprocess(conn, receipts[1].message_pk)
    with store.connect() as conn:
        fixed = conn.execute(select(Message).where(Message.id == receipts[1].message_pk)).one()
        actions = conn.scalars(select(History.action).where(
            History.message_id == fixed.id)).all()
    assert not fixed.needs_attention and fixed.error is None and fixed.thread_id is not None
    assert actions == ["received", "reprocessed"]
    # a redelivery of the once-poisoned message is still recognised
    again = asyncio.run(receive_all(store, [raws[1]]))
    assert again[0].duplicate and again[0].message_pk == fixed.id


def test_store_failure_raises_store_unavailable(store: Engine) -> None:
    with write_lock_held(store):
        store.pool.dispose()
        [result] = asyncio.run(receive_all(store, [make_mail("x", message_id="<l@c>")],
                                           busy_timeout_ms=100))
    assert isinstance(result, StoreUnavailable)
    assert count(store) == 0


def test_missing_message_id_gets_a_stable_one_so_retries_dedupe(store: Engine) -> None:
    raw = b"From: a@c\r\nTo: support@example.test\r\nSubject: no id\r\n\r\nbody\r\n"
    first, second = asyncio.run(receive_all(store, [raw, raw]))
    assert first.message_pk == second.message_pk and second.duplicate
    with store.connect() as conn:
        mid = conn.execute(select(Message.message_id_header)).scalar_one()
    assert mid.endswith("@postdesk.invalid>")


def test_attachments_are_content_addressed(store: Engine) -> None:
    from engine.store.models import Attachment, Blob

    def with_attachment(mid: str) -> bytes:
        return (f"From: a@c\r\nTo: support@example.test\r\nSubject: att\r\nMessage-ID: {mid}\r\n"
                "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
                "--XX\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--XX\r\n"
                "Content-Type: application/pdf\r\nContent-Disposition: attachment; "
                "filename=\"report.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                "JVBERi0xLjQKJcfsj6IKMSAwIG9iago=\r\n--XX--\r\n").encode()

    asyncio.run(receive_all(store, [with_attachment("<at1@c>"), with_attachment("<at2@c>")]))
    assert count(store, Attachment) == 2 and count(store, Blob) == 1
    with store.connect() as conn:
        names = conn.scalars(select(Attachment.filename)).all()
    assert names == ["report.pdf", "report.pdf"]


def test_big_mail_is_stored_with_its_attachment(store: Engine) -> None:
    import base64

    from engine.store.models import Attachment

    payload = bytes(range(256)) * 4096  # 1 MB
    raw = (b"From: a@c\r\nTo: support@example.test\r\nSubject: big\r\nMessage-ID: <big@c>\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
           b"Content-Type: text/plain\r\n\r\nsee attached\r\n--B\r\n"
           b"Content-Type: application/octet-stream; name=blob.bin\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n")
    raw += base64.encodebytes(payload).replace(b"\n", b"\r\n") + b"--B--\r\n"
    [receipt] = asyncio.run(receive_all(store, [raw]))
    with store.connect() as conn:
        att = conn.execute(select(Attachment)).one()
    assert (att.filename, att.size) == ("blob.bin", len(payload))
    assert not receipt.needs_attention


def test_receive_after_stop_is_a_temporary_failure(store: Engine) -> None:
    async def scenario() -> None:
        intake = Intake(store.url.render_as_string(hide_password=False))
        await intake.start()
        await intake.stop()
        with pytest.raises(StoreUnavailable):
            await intake.receive(make_mail("late", message_id="<late@c>"), envelope())

    asyncio.run(scenario())


def test_isolated_writer_process_commits_and_is_replaced_when_it_dies(store: Engine) -> None:
    import os
    import signal

    async def scenario() -> list[object]:
        intake = Intake(store.url.render_as_string(hide_password=False), isolate=True)
        await intake.start()
        try:
            first = await intake.receive(make_mail("one", message_id="<iso1@c>"), envelope())
            child = intake.writer_pid
            assert child is not None and child != os.getpid()
            os.kill(child, signal.SIGKILL)
            await asyncio.sleep(0.2)
            lost = await asyncio.gather(
                intake.receive(make_mail("two", message_id="<iso2@c>"), envelope()),
                return_exceptions=True)
            again = await intake.receive(make_mail("two", message_id="<iso2@c>"), envelope())
            return [first, *lost, again]
        finally:
            await intake.stop()

    first, lost, again = asyncio.run(scenario())
    assert not first.duplicate and not again.needs_attention
    assert isinstance(lost, StoreUnavailable) or lost.message_pk == again.message_pk
    assert count(store) == 2


def test_groups_waiting_for_the_writer_share_one_transaction(store: Engine) -> None:
    """While a transaction waits (here on a lock another client holds; normally on the disk),
    the groups handed in meanwhile are parsed and then committed together in ONE
    transaction, each group still answered with its own outcomes."""
    import threading

    from engine.intakewriter import ThreadWriter

    url = store.url.render_as_string(hide_password=False)
    answered: dict[int, list[object]] = {}
    done = threading.Event()
    sizes: list[int] = []

    def on_done(answers: list[tuple[int, list[object]]]) -> None:
        sizes.append(sum(len(outcomes) for _, outcomes in answers))
        answered.update(answers)
        if len(answered) == 4:
            done.set()

    writer = ThreadWriter(url, 10_000, None, 64, on_done)
    committing = threading.Event()  # the real commit, told when it is first entered
    real_commit = writer._host.writer.commit

    def commit(jobs: list[object]) -> list[object]:
        committing.set()
        return real_commit(jobs)

    writer._host.writer.commit = commit  # type: ignore[method-assign]
    groups = {1: 1, 2: 3, 3: 5, 4: 2}  # ident -> messages
    try:
        with write_lock_held(store):
            writer.send("commit", 1, [(make_mail("first", message_id="<w1@c>"), envelope())])
            assert committing.wait(30)  # the commit thread holds group 1 until the lock goes
            waiting = writer._host._parsed  # parsed groups the commit thread has not taken
            n = 0
            for ident in (2, 3, 4):
                writer.send("commit", ident, [
                    (make_mail(f"m{n + i}", message_id=f"<w{ident}.{i}@c>"), envelope())
                    for i in range(groups[ident])])
                n += groups[ident]
            wait_until(lambda: waiting.qsize() == 3, what="three groups parsed and waiting")
        assert done.wait(30)
    finally:
        writer.stop()
    assert sizes == [1, 10]  # the three waiting groups went in as one transaction
    assert {ident: len(outcomes) for ident, outcomes in answered.items()} == groups
    receipts = [r for outcomes in answered.values() for r in outcomes]
    assert all(not isinstance(r, Exception) and not r.duplicate for r in receipts)
    assert count(store) == 11


def test_the_gateway_parses_what_it_hands_the_writer_but_large_mail() -> None:
    """Parsing moves to the gateway process for mail up to PARSE_HERE_MAX; the writer takes
    the result as it is, and parses the rest itself, to the same ParsedMessage."""
    small = make_mail("Small one", message_id="<p-small@c>")
    large = make_mail("Large one", body="x" * (intakewriter.PARSE_HERE_MAX + 10),
                      message_id="<p-large@c>")
    items = [(small, envelope()), (large, envelope())]
    parsed = intakewriter.parse_here(items)
    assert parsed[0] is not None and parsed[0].subject == "Small one"
    assert parsed[1] is None
    jobs = intakewriter.parse_jobs(items, parsed)
    assert jobs[0].parsed is parsed[0]  # taken as handed in, not parsed again
    assert jobs[1].parsed is not None and jobs[1].parsed.message_id == "<p-large@c>"
    assert [j.parsed for j in jobs] == [j.parsed for j in intakewriter.parse_jobs(items)]
