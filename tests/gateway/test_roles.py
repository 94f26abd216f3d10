"""Process roles: ``postdesk gateway`` takes mail in (pre-forking as ``serve`` does) but sends
nothing and serves no console; ``postdesk outbox`` alone sends what it stored."""

from __future__ import annotations

import json
import smtplib
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import Instance, make_mail
from outboxkit import history, outbox_config, prepare, rows, send
from relay import Relay
from rolekit import Role, wait_until

RULES = """\
version: 1
rules:
  - name: ack-everything
    type: auto-acknowledge
    template: ack
"""


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _send_many(instance: Instance, count: int, connections: int) -> None:
    def one_connection(c: int) -> None:
        with smtplib.SMTP("127.0.0.1", instance.smtp, timeout=30) as client:
            for i in range(c, count, connections):
                client.sendmail("customer@client.test", ["support@example.test"],
                                make_mail(f"role {i}", message_id=f"<role-{i}@client.test>"))

    with ThreadPoolExecutor(connections) as pool:
        list(pool.map(one_connection, range(connections)))


def test_gateway_role_takes_mail_in_and_the_outbox_role_sends_it(instance: Instance,
                                                               relay: Relay) -> None:
    prepare(instance, relay, RULES)
    instance.write(extra=outbox_config(relay), gateway_extra="  workers: 2\n")
    # /healthz is worker 0's: its port listens once that worker is up, which may be after
    # worker 1 has started taking mail
    gateway = Role(instance, "gateway", name="gateway").wait_port(instance.smtp) \
        .wait_port(instance.http)
    outbox: Role | None = None
    try:
        instance.proc = gateway.proc  # stopped by the fixture if the test fails
        _send_many(instance, 20, connections=4)
        assert len(instance.messages()) == 20  # every 250 is a stored message
        status, body = _get(instance.http, "/healthz")
        health = json.loads(body)
        assert status == 200 and health["database"] == "ok"
        assert "smtp" in health["listeners"] and "http" in health["listeners"]
        assert health["imap"] == []
        assert _get(instance.http, "/login")[0] == 404  # no console in this role
        time.sleep(1.5)
        assert relay.received == [] and {r.state for r in rows(instance)} == {"pending"}

        outbox = Role(instance, "outbox", name="outbox")
        relay.wait_for(20)
        wait_until(lambda: {r.state for r in rows(instance)} == {"sent"}, 30, "all sent")
        send(instance, make_mail("one more", message_id="<role-last@client.test>"))
        relay.wait_for(21)
        assert outbox.stop() == 0
        assert gateway.stop() == 0
        instance.proc = None
    finally:
        for role in (gateway, outbox):
            if role is not None:
                role.kill()


def test_a_second_outbox_worker_leaves_rows_the_first_is_sending_alone(
        instance: Instance, relay: Relay) -> None:
    prepare(instance, relay, RULES)
    gateway = Role(instance, "gateway", name="gateway").wait_port(instance.smtp)
    first = Role(instance, "outbox", name="outbox-slow",
                 env={"POSTDESK_TEST_HOLD_AFTER_SEND": "10"})
    second: Role | None = None
    try:
        send(instance, make_mail("slow", message_id="<slow@client.test>"))
        relay.wait_for(1, timeout=60)  # sent; the first worker holds on before recording it
        second = Role(instance, "outbox", name="outbox-second")
        time.sleep(5)  # the second worker has started and looked for interrupted rows
        assert [r.state for r in rows(instance)] == ["sending"]
        wait_until(lambda: [r.state for r in rows(instance)] == ["sent"], 30, "recorded")
        time.sleep(1)
        assert len(relay.received) == 1  # never taken back and sent twice
        assert history(instance, "send-interrupted") == []
        assert gateway.stop() == 0
    finally:
        for role in (gateway, first, second):
            if role is not None:
                role.kill()


@pytest.mark.parametrize("command", [["gateway"], ["outbox"]])
def test_roles_refuse_a_broken_configuration(instance: Instance, command: list[str]) -> None:
    instance.write()
    config = instance.config.read_text()
    instance.config.write_text(config.replace("database:\n", "database:\n  pool_size: 0\n"))
    result = instance.cli(*command, check=False)
    assert result.returncode == 2
    assert "database.pool_size" in result.stderr
