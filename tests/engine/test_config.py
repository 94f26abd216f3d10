"""Configuration: defaults, drivers/accounts, env overrides, located errors, exit before listen."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from helpers import POSTDESK, ROOT, free_port

from engine.config import ConfigError, ImapPollDriver, load_settings

GOOD = """\
database:
  url: sqlite:///{dir}/x.db
drivers:
  mailbox:
    type: imap-poll
    host: imap.example.test
    password: {{env: IMAP_PW}}
    PollingInterval: 120
  relay:
    type: outbound-relay
    host: smtp.example.test
accounts:
  - name: support
    addresses: [Support@Example.test]
    aliases: [help@example.test]
    from_name: Support
    inbound: [smtp, {{driver: mailbox, PollingInterval: 30, user: support}}]
    outbound: relay
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "postdesk.yaml"
    path.write_text(text)
    return path


def test_defaults_drivers_and_profile_overrides(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, GOOD.format(dir=tmp_path)), environ={"IMAP_PW": "s"})
    acc = settings.accounts[0]
    assert acc.addresses == ["support@example.test"]
    assert settings.account_for("HELP@example.test") is acc
    assert settings.gateway.smtp_listen == "127.0.0.1:2525"
    assert set(settings.drivers) == {"smtp", "lmtp", "mailbox", "relay"}
    imap = settings.effective_driver(acc.inbound[1])
    assert isinstance(imap, ImapPollDriver)
    assert (imap.polling_interval, imap.user, imap.host) == (30, "support", "imap.example.test")
    assert settings.drivers["mailbox"].polling_interval == 120  # the driver keeps its default
    assert settings.drivers["mailbox"].password.env == "IMAP_PW"


def test_a_secret_missing_from_the_environment_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, GOOD.format(dir=tmp_path)), environ={})
    [problem] = err.value.problems
    assert (problem.line, problem.key) == (7, "drivers.mailbox.password")
    assert problem.message == "environment variable IMAP_PW is not set"


def test_default_database_lives_in_the_instance_dir(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "accounts: []\n"), environ={})
    assert settings.database_url == f"sqlite:///{tmp_path.resolve() / 'postdesk.db'}"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.format(dir=tmp_path))
    settings = load_settings(environ={
        "POSTDESK_CONFIG": str(path), "POSTDESK_DATABASE_URL": "postgresql://pd@db/pd",
        "IMAP_PW": "secret",
        "POSTDESK_SMTP_LISTEN": "0.0.0.0:25", "POSTDESK_LMTP_LISTEN": "off",
        "POSTDESK_HTTP_LISTEN": "[::1]:8080",
    })
    assert settings.database_url == "postgresql://pd@db/pd"
    assert settings.gateway.smtp_listen == "0.0.0.0:25"
    assert settings.gateway.lmtp_listen == "off"
    assert settings.gateway.http_listen == "[::1]:8080"


BAD = """\
gateway:
  smtp_listen: localhost
  max_mesage_size: 10
drivers:
  mailbox:
    type: imap-poll
    PollingInterval: 0
accounts:
  - name: support
    addresses: [not-an-address]
"""


def test_errors_name_file_line_and_key_all_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, BAD)
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={})
    found = {(p.line, p.key) for p in err.value.problems}
    assert found == {(2, "gateway.smtp_listen"), (3, "gateway.max_mesage_size"),
                     (7, "drivers.mailbox.PollingInterval"), (10, "accounts[0].addresses")}
    assert str(err.value).startswith(f"{path}:2: gateway.smtp_listen: expected host:port")


def test_reference_errors(tmp_path: Path) -> None:
    text = ("accounts:\n  - name: a\n    addresses: [a@x.test]\n    inbound: [imap]\n"
            "  - name: b\n    addresses: [A@x.test]\n    outbound: smtp\n")
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text), environ={})
    messages = [str(p) for p in err.value.problems]
    assert any(":4: accounts[0].inbound[0]: no driver named 'imap'" in m for m in messages)
    assert any(":6: accounts[1].addresses: a@x.test already belongs to a" in m for m in messages)
    assert any(":7: accounts[1].outbound: no outbound-relay driver named 'smtp'" in m
               for m in messages)


def test_invalid_yaml_has_a_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, "gateway:\n  smtp_listen: [unclosed\n"), environ={})
    assert err.value.problems[0].line is not None and "invalid YAML" in str(err.value)


def test_serve_exits_non_zero_before_listening(tmp_path: Path) -> None:
    port = free_port()
    path = write(tmp_path, BAD.replace("localhost", f"127.0.0.1:{port}"))
    result = subprocess.run([*POSTDESK, "--config", str(path), "serve"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"{path}:3: gateway.max_mesage_size: unknown key" in result.stderr
    with socket.socket() as s:  # nothing was listening
        s.bind(("127.0.0.1", port))
