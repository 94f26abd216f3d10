"""Bounces: VERP tokens resist forgery, and real-world delivery reports read correctly."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from engine.bounces import (
    MAC_CHARS,
    Bounce,
    BounceRecipient,
    parse_bounce,
    read_verp,
    verp_address,
)

SECRET = bytes(range(32))
OTHER = bytes(range(1, 33))
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "bounces"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def token_of(address: str) -> tuple[str, str]:
    """(id part, MAC part) of a ``bounces+...@`` address."""
    token = address.partition("@")[0].removeprefix("bounces+")
    return token[:-MAC_CHARS], token[-MAC_CHARS:]


# --- VERP --------------------------------------------------------------------------------------

@pytest.mark.parametrize("outbox_id", [0, 1, 31, 32, 4711, 10**9, 2**63, 2**64 - 1])
def test_verp_roundtrip(outbox_id: int) -> None:
    address = verp_address(outbox_id, "Support.Example.com", SECRET)
    local, _, domain = address.partition("@")
    assert domain == "support.example.com"
    assert local.startswith("bounces+") and local == local.lower() and len(local) <= 64
    assert read_verp(address, SECRET) == outbox_id


def test_verp_survives_case_folding_and_brackets() -> None:
    address = verp_address(4711, "example.com", SECRET)
    assert read_verp(address.upper(), SECRET) == 4711
    assert read_verp(f" <{address.upper()}> ", SECRET) == 4711


def test_verp_reads_confusable_characters_like_tags() -> None:
    address = verp_address(4711, "example.com", SECRET)
    local, _, domain = address.partition("@")
    retyped = local.replace("1", "l").replace("0", "O")
    assert read_verp(f"{retyped}@{domain}", SECRET) == 4711


def test_verp_token_is_at_least_64_bits_of_mac() -> None:
    assert MAC_CHARS * 5 >= 64
    ident, mac = token_of(verp_address(1, "example.com", SECRET))
    assert (ident, len(mac)) == ("1", MAC_CHARS)


@pytest.mark.parametrize("address", [
    "bounces@example.com",
    "bounces+@example.com",
    "bounces+12345@example.com",
    "bounces+zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz@example.com",
    "bounces+u0000000000000000@example.com",  # U is not a Crockford symbol
    "support@example.com",
    "someone+bounces@example.com",
    "",
    "<>",
    "no at sign",
])
def test_verp_rejects_other_and_garbled_addresses(address: str) -> None:
    assert read_verp(address, SECRET) is None


def test_verp_rejects_forged_tokens() -> None:
    rng = random.Random(5)
    alphabet = "0123456789abcdefghjkmnpqrstvwxyz"
    forged = ["".join(rng.choice(alphabet) for _ in range(3 + MAC_CHARS)) for _ in range(500)]
    assert all(read_verp(f"bounces+{t}@example.com", SECRET) is None for t in forged)


def test_verp_rejects_wrong_secret_and_accepts_rotation() -> None:
    address = verp_address(4711, "example.com", SECRET)
    assert read_verp(address, OTHER) is None
    assert read_verp(address, [OTHER, SECRET]) == 4711
    assert read_verp(address, []) is None


def test_verp_rejects_tampered_id_and_mac() -> None:
    domain = "example.com"
    ident, mac = token_of(verp_address(4711, domain, SECRET))
    other_ident, _ = token_of(verp_address(4712, domain, SECRET))
    assert other_ident != ident
    assert read_verp(f"bounces+{other_ident}{mac}@{domain}", SECRET) is None
    flipped = ("1" if mac[0] != "1" else "2") + mac[1:]
    assert read_verp(f"bounces+{ident}{flipped}@{domain}", SECRET) is None
    assert read_verp(f"bounces+0{ident}{mac}@{domain}", SECRET) is None  # non-canonical id
    assert read_verp(f"bounces+{ident}{mac}x@{domain}", SECRET) is None


def test_verp_tokens_differ_per_secret_and_id() -> None:
    tokens = {verp_address(i, "example.com", s) for i in range(50) for s in (SECRET, OTHER)}
    assert len(tokens) == 100


def test_verp_custom_local_part_and_delimiter() -> None:
    address = verp_address(99, "example.com", SECRET, "pd-bounce", delimiter="=")
    assert address.startswith("pd-bounce=")
    assert read_verp(address, SECRET, "pd-bounce", delimiter="=") == 99
    assert read_verp(address, SECRET) is None
    qmail = verp_address(99, "example.com", SECRET, "bounces", delimiter="-")
    assert read_verp(qmail, SECRET, delimiter="-") == 99


@pytest.mark.parametrize(("args", "kwargs"), [
    ((-1, "example.com", SECRET), {}),
    ((2**64, "example.com", SECRET), {}),
    ((True, "example.com", SECRET), {}),
    (("7", "example.com", SECRET), {}),
    ((1, "exa mple.com", SECRET), {}),
    ((1, "a@example.com", SECRET), {}),
    ((1, "example.com", b"short"), {}),
    ((1, "example.com", SECRET, "b+x"), {}),
    ((1, "example.com", SECRET, "bounces"), {"delimiter": "/"}),
])
def test_verp_address_refuses_bad_arguments(args: tuple, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        verp_address(*args, **kwargs)


def test_verp_read_needs_a_real_secret() -> None:
    with pytest.raises(ValueError):
        read_verp("bounces+x@example.com", b"short")


# --- delivery reports --------------------------------------------------------------------------

# file, kind, permanent, original Message-ID, [(address, status, action)]
REPORTS = [
    ("postfix_user_unknown.eml", "dsn", True, "<20260301091500.4711@support.example.com>",
     [("nobody@example.com", "5.1.1", "failed")]),
    ("postfix_delayed.eml", "dsn", False, "<20260302090542.4712@support.example.com>",
     [("slow@example.net", "4.4.1", "delayed")]),
    ("exim_dsn.eml", "dsn", True, "<20260303080110.4713@support.example.com>",
     [("gone@example.co.uk", "5.0.0", "failed")]),
    ("exim_legacy.eml", "heuristic", True, "<20260304102959.4714@support.example.com>",
     [("old.customer@example.info", "5.1.1", "failed")]),
    ("qmail.eml", "heuristic", True, "<20260305071243.4715@support.example.com>",
     [("ghost@example.biz", "5.1.1", "failed"), ("full@example.biz", "5.2.2", "failed")]),
    ("exchange_o365.eml", "dsn", True, "<20260306094400.4716@support.example.com>",
     [("j.doe@contoso.com", "5.1.10", "failed")]),
    ("gmail.eml", "dsn", True, "<20260307110100.4717@support.example.com>",
     [("not.a.user@gmail.com", "5.1.1", "failed")]),
    ("sendmail_two_recipients.eml", "dsn", True, "<20260308210230.4718@support.example.com>",
     [("prof.x@example.edu", "5.1.1", "failed"), ("dean.y@example.edu", "4.2.2", "delayed")]),
    ("gmail_legacy_text.eml", "heuristic", True, "<20260311095959.4720@support.example.com>",
     [("someone@example.org", "5.1.1", "failed")]),
    ("gmail_legacy_delay.eml", "heuristic", False, "<20260311100000.4721@support.example.com>",
     [("late@example.org", "4.7.1", "delayed")]),
    ("success_dsn.eml", "dsn", False, None, [("happy@example.org", "2.0.0", "relayed")]),
    ("malformed_status_base64.eml", "dsn", True, "<20260311000000.4719@support.example.com>",
     [("taro@example.jp", "5.1.1", "failed")]),
    ("malformed_truncated.eml", "heuristic", True, None,
     [("lost@example.com", "5.1.1", "failed")]),
]


@pytest.mark.parametrize(("name", "kind", "permanent", "message_id", "recipients"), REPORTS,
                         ids=[r[0] for r in REPORTS])
def test_delivery_reports(name: str, kind: str, permanent: bool, message_id: str | None,
                          recipients: list[tuple[str, str, str]]) -> None:
    bounce = parse_bounce(fixture(name))
    assert bounce is not None
    assert bounce.kind == kind
    assert bounce.permanent is permanent
    assert bounce.original_message_id == message_id
    assert [(r.address, r.status, r.action) for r in bounce.recipients] == recipients


@pytest.mark.parametrize("name", ["mdn_read_receipt.eml", "arf_feedback.eml",
                                  "customer_undelivered.eml"])
def test_not_delivery_reports(name: str) -> None:
    assert parse_bounce(fixture(name)) is None


def test_dsn_details() -> None:
    bounce = parse_bounce(fixture("sendmail_two_recipients.eml"))
    assert bounce is not None
    assert bounce.original_envelope_id == "PD-4718"
    assert bounce.reporting_mta == "relay.example.edu"
    assert [r.address for r in bounce.failed] == ["prof.x@example.edu"]
    assert [r.address for r in bounce.delayed] == ["dean.y@example.edu"]
    assert bounce.recipients[1].original_recipient == "dean.y@example.edu"
    assert bounce.recipients[0].diagnostic == "550 5.1.1 <prof.x@example.edu>... User unknown"
    gmail = parse_bounce(fixture("gmail.eml"))
    assert gmail is not None and "does not exist" in gmail.recipients[0].diagnostic
    assert gmail.subject == "Delivery Status Notification (Failure)"


def test_heuristic_diagnostics_name_the_reason() -> None:
    qmail = parse_bounce(fixture("qmail.eml"))
    assert qmail is not None
    assert "no mailbox here" in qmail.recipients[0].diagnostic
    assert "Mailbox full" in qmail.recipients[1].diagnostic
    exim = parse_bounce(fixture("exim_legacy.eml"))
    assert exim is not None and "User unknown" in exim.recipients[0].diagnostic


def test_failed_but_transient_is_not_permanent() -> None:
    bounce = Bounce([BounceRecipient("a@example.com", "4.4.7", "failed", "expired")], None, "dsn")
    assert bounce.failed and not bounce.permanent
    assert not Bounce([], None, "dsn").permanent


RAW_DSN = b"""From: MAILER-DAEMON@mx.example.org
To: bounces+x@example.com
Subject: Undelivered Mail Returned to Sender
Content-Type: multipart/report; report-type=delivery-status; boundary="b"

--b
Content-Type: text/plain

Notice.

--b
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org

Final-Recipient: rfc822; <A@Example.org>
Status: 5.7.1
Diagnostic-Code: smtp; 550 5.7.1 Rejected by policy

Final-Recipient: x400; weird-address
Action: delivered

Original-Recipient: rfc822; only-original@example.org
Action: failed

--b--
"""


def test_missing_fields_are_inferred() -> None:
    bounce = parse_bounce(RAW_DSN)
    assert bounce is not None
    assert [(r.address, r.status, r.action) for r in bounce.recipients] == [
        ("a@example.org", "5.7.1", "failed"),  # action from the status class
        ("weird-address", "2.0.0", "delivered"),  # status from the action
        ("only-original@example.org", "5.0.0", "failed"),
    ]


@pytest.mark.parametrize("raw", [
    b"",
    b"\x00\xff" * 500,
    b"not a mail at all",
    b"Content-Type: multipart/report; report-type=delivery-status\n\nno boundary",
    b"Content-Type: multipart/report; boundary=x\n\n"
    + b"--x\nContent-Type: multipart/mixed; boundary=x\n\n" * 3000,
    b"From: MAILER-DAEMON@x\nSubject: =?bogus?Q?x?=\n"
    b"Content-Type: text/plain; charset=nope\n\n\xff",
    RAW_DSN.replace(b"--b--", b""),
    RAW_DSN[:300],
    # long runs that made naive address regexes quadratic (minutes instead of milliseconds)
    b"From: MAILER-DAEMON@x\nSubject: failure notice\n\n" + b"a" * 200_000,
    b"From: MAILER-DAEMON@x\nSubject: failure notice\n\n<" + b"@" * 200_000,
    b"From: MAILER-DAEMON@x\nSubject: failure notice\nContent-Type: text/html\n\n"
    + b"<" * 200_000,
])
def test_malformed_input_never_raises(raw: bytes) -> None:
    result = parse_bounce(raw)
    assert result is None or isinstance(result, Bounce)


def test_wrong_types_give_none() -> None:
    assert parse_bounce(None) is None  # type: ignore[arg-type]
    assert parse_bounce(bytearray(fixture("qmail.eml"))) is not None


CUSTOMER_MAILS = [
    # a customer forwarding a bounce they got: not from a mail daemon
    b"From: jane@example.net\nSubject: Fwd: Undelivered Mail Returned to Sender\n\n"
    b"This is the mail system at host mail.example.net.\n<x@example.com>: 550 5.1.1 unknown\n",
    # an out-of-office reply about a parcel, null return path
    b"Return-Path: <>\nFrom: bob@example.net\nAuto-Submitted: auto-replied\n"
    b"Subject: Undeliverable parcel - I am away\n\nBack Monday.\n",
    # a postmaster writing as a person, no bounce wording
    b"From: postmaster@example.net\nSubject: DNS change tonight\n\nWe move MX at 22:00.\n",
]


@pytest.mark.parametrize("raw", CUSTOMER_MAILS)
def test_people_writing_about_bounces_are_not_bounces(raw: bytes) -> None:
    assert parse_bounce(raw) is None


def test_nonstandard_bounce_without_recipients_is_still_a_bounce() -> None:
    raw = (b"From: MAILER-DAEMON@x.example\nSubject: failure notice\n\n"
           b"Hi. This is the qmail-send program at x.example.\nSomething broke.\n")
    bounce = parse_bounce(raw)
    assert bounce is not None and bounce.recipients == [] and not bounce.permanent
