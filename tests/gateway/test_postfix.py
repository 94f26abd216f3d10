"""A real Postfix in front: it relays the support domains to the gateway over SMTP and LMTP.

``tests/fixtures/start-postfix.sh`` runs a throwaway Postfix (own config, queue and log dirs)
whose transport map sends ``example.test`` to our SMTP port and ``lmtp.test`` to our LMTP port,
exactly the setup the README's "Behind Postfix" section describes. Needs root and Debian's
postfix package (``make test`` installs it).
"""

from __future__ import annotations

import shutil
import smtplib
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Instance, free_port, make_mail

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture(scope="module")
def postfix(gateway: Instance) -> Iterator[tuple[int, Path]]:
    if not Path("/usr/sbin/postfix").exists():
        pytest.fail("Debian's postfix is not installed (make test installs it as root)")
    workdir = tempfile.mkdtemp(prefix="postfix-")  # not tmp_path: postfix needs a 0755 path
    port = free_port()
    subprocess.run([FIXTURES / "start-postfix.sh", workdir, str(port), str(gateway.smtp),
                    str(gateway.lmtp)], check=True, capture_output=True, timeout=60)
    yield port, Path(workdir)
    subprocess.run([FIXTURES / "stop-postfix.sh", workdir], capture_output=True, timeout=60)
    shutil.rmtree(workdir, ignore_errors=True)


def wait_for(inst: Instance, message_id: str, timeout: float = 30.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [m for m in inst.messages() if m.message_id_header == message_id]
        if found:
            return found
        time.sleep(0.1)
    return []


@pytest.mark.parametrize("domain", ["example.test", "lmtp.test"])
def test_mail_sent_into_postfix_is_stored(gateway: Instance, postfix: tuple[int, Path],
                                          domain: str) -> None:
    mid = f"<via-postfix-{domain}@client.test>"
    raw = make_mail(f"Through Postfix to {domain}", to=f"support@{domain}", message_id=mid)
    with smtplib.SMTP("127.0.0.1", postfix[0], timeout=30) as smtp:
        smtp.sendmail("customer@client.test", [f"support@{domain}"], raw)
    [msg] = wait_for(gateway, mid)
    assert msg.subject == f"Through Postfix to {domain}"
    assert msg.envelope_from == "customer@client.test"
    assert b"postfix-test.localdomain" in msg.raw  # Postfix's own Received line came along
    protocol = "ESMTP" if domain == "example.test" else "LMTP"
    assert f"with {protocol}" in msg.received_header


def test_unknown_recipient_is_bounced_by_postfix(gateway: Instance,
                                                 postfix: tuple[int, Path]) -> None:
    """Our 550 5.1.1 reaches Postfix, which bounces instead of retrying; nothing is stored."""
    mid = "<via-postfix-unknown@client.test>"
    with smtplib.SMTP("127.0.0.1", postfix[0], timeout=30) as smtp:
        smtp.sendmail("customer@client.test", ["nobody@example.test"],
                      make_mail("nobody", to="nobody@example.test", message_id=mid))
    log = postfix[1] / "postfix.log"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "status=bounced" not in log.read_text():
        time.sleep(0.1)
    bounced = [line for line in log.read_text().splitlines() if "nobody@example.test" in line
               and "status=bounced" in line]
    assert bounced and "550 5.1.1" in bounced[0]
    assert not [m for m in gateway.messages() if m.message_id_header == mid]
