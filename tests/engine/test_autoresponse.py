"""Loop and flood safety: every suppression reason fires on its case and stays quiet otherwise."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from engine.autoresponse import (
    AUTO_SUBMITTED_GENERATED,
    AUTO_SUBMITTED_REPLIED,
    SUPPRESSION_ORDER,
    RateLimit,
    is_daemon_address,
    is_noreply_address,
    is_out_of_office,
    loop_headers,
    over_limit,
    suppression_reason,
)
from engine.mime import ParsedMessage, parse_message

OWN = ["support@example.com", "Sales@Example.com"]
CUSTOMER = "jane@example.net"
BOUNCES = Path(__file__).resolve().parent.parent / "fixtures" / "bounces"
NOW = datetime(2026, 3, 1, tzinfo=UTC)


def mail(*headers: str, subject: str = "Question about order 1042",
         sender: str = f"Jane Customer <{CUSTOMER}>", body: str = "Hello, where is my parcel?"
         ) -> ParsedMessage:
    """A customer mail with extra header lines (``"Name: value"``)."""
    lines = [f"From: {sender}", "To: support@example.com", f"Subject: {subject}",
             "Date: Sun, 01 Mar 2026 09:00:00 +0000", "Message-ID: <c1@example.net>",
             *headers, "Content-Type: text/plain; charset=utf-8", "", body, ""]
    return parse_message("\r\n".join(lines).encode(), NOW)


def reason(parsed: ParsedMessage, envelope: str | None = CUSTOMER) -> str | None:
    return suppression_reason(parsed, envelope, OWN)


# --- suppression: one positive and one negative per reason code --------------------------------

POSITIVE = [
    ("x-loop", mail("X-Loop: support@example.com"), CUSTOMER),
    ("x-loop", mail("X-Loop: <SALES@example.com>"), CUSTOMER),
    ("own-address", mail(sender="Support <support@example.com>"), CUSTOMER),
    ("own-address", mail("Reply-To: sales@example.com"), CUSTOMER),
    ("own-address", mail(), "<Support@Example.com>"),
    ("feedback-report", parse_message((BOUNCES / "arf_feedback.eml").read_bytes(), NOW), ""),
    ("delivery-report", parse_message((BOUNCES / "postfix_user_unknown.eml").read_bytes(), NOW),
     ""),
    ("delivery-report", parse_message((BOUNCES / "mdn_read_receipt.eml").read_bytes(), NOW), ""),
    ("out-of-office", mail("Auto-Submitted: auto-replied"), ""),
    ("out-of-office", mail(subject="Automatic reply: Question about order 1042"), CUSTOMER),
    ("auto-submitted", mail("Auto-Submitted: auto-generated"), CUSTOMER),
    ("auto-submitted", mail("Auto-Submitted: Auto-Notified; owner-email=x@y (sieve)"), CUSTOMER),
    ("auto-submitted", mail("Auto-Submitted: (no comment) auto-generated"), CUSTOMER),
    ("auto-reply-suppressed", mail("X-Auto-Response-Suppress: All"), CUSTOMER),
    ("auto-reply-suppressed", mail("X-Auto-Response-Suppress: DR, OOF"), CUSTOMER),
    ("auto-reply-suppressed", mail("X-Auto-Response-Suppress: autoreply"), CUSTOMER),
    ("mailer-daemon", mail(sender="MAILER-DAEMON@mx.example.net"), CUSTOMER),
    ("mailer-daemon", mail(), "postmaster@example.net"),
    ("mailer-daemon", mail(sender="Mail Delivery System <mdaemon@example.net>"), CUSTOMER),
    ("mailing-list", mail("List-Id: Friends <friends.lists.example.net>"), CUSTOMER),
    ("mailing-list", mail("List-Unsubscribe: <mailto:leave@example.net>"), CUSTOMER),
    ("mailing-list", mail("List-Post: <mailto:friends@example.net>"), CUSTOMER),
    ("mailing-list", mail("Mailing-List: contact friends-help@example.net"), CUSTOMER),
    ("precedence", mail("Precedence: bulk"), CUSTOMER),
    ("precedence", mail("Precedence: JUNK"), CUSTOMER),
    ("precedence", mail("Precedence: list (mailman)"), CUSTOMER),
    ("null-sender", mail(), ""),
    ("null-sender", mail(), "<>"),
    ("null-sender", mail("Return-Path: <>"), None),
    ("noreply-sender", mail(sender="Shop <noreply@shop.example>"), CUSTOMER),
    ("noreply-sender", mail(sender="no.reply+orders@shop.example"), CUSTOMER),
    ("noreply-sender", mail(sender="Do-Not-Reply@bank.example"), CUSTOMER),
    ("noreply-sender", mail("Reply-To: donotreply@shop.example"), CUSTOMER),
    ("noreply-sender", mail(sender="bounces+123@mailer.example"), CUSTOMER),
]

NEGATIVE = [  # (the reason that must NOT come out, message, envelope sender)
    ("x-loop", mail("X-Loop: somebody-else@example.org"), CUSTOMER),
    ("own-address", mail(sender="Support <support@example.org>"), CUSTOMER),
    ("feedback-report", mail("Content-Type: multipart/mixed; boundary=x"), CUSTOMER),
    ("delivery-report", mail(body="Your report about my delivery status?"), CUSTOMER),
    ("out-of-office", mail(subject="My order was out of office hours"), CUSTOMER),
    ("auto-submitted", mail("Auto-Submitted: no"), CUSTOMER),
    ("auto-submitted", mail("Auto-Submitted: No (human)"), CUSTOMER),
    ("auto-reply-suppressed", mail("X-Auto-Response-Suppress: DR, NDR, RN, NRN"), CUSTOMER),
    ("mailer-daemon", mail(sender="daemon.fan@example.net"), CUSTOMER),
    ("mailing-list", mail("X-Listing: real estate"), CUSTOMER),
    ("precedence", mail("Precedence: first-class"), CUSTOMER),
    ("null-sender", mail(), None),
    ("null-sender", mail(), "jane@example.net"),
    ("noreply-sender", mail(sender="Nora Reply <nora.reply@example.net>"), CUSTOMER),
    ("noreply-sender", mail("Reply-To: jane@example.net", sender="noreply@form.example"),
     "bounces+abc@sendgrid.example"),
]


@pytest.mark.parametrize(("expected", "parsed", "envelope"), POSITIVE,
                         ids=[f"{p[0]}-{i}" for i, p in enumerate(POSITIVE)])
def test_reason_fires(expected: str, parsed: ParsedMessage, envelope: str | None) -> None:
    assert reason(parsed, envelope) == expected


@pytest.mark.parametrize(("absent", "parsed", "envelope"), NEGATIVE,
                         ids=[f"not-{n[0]}-{i}" for i, n in enumerate(NEGATIVE)])
def test_reason_stays_quiet(absent: str, parsed: ParsedMessage, envelope: str | None) -> None:
    assert reason(parsed, envelope) is None


def test_every_reason_code_is_covered_both_ways() -> None:
    assert {p[0] for p in POSITIVE} == set(SUPPRESSION_ORDER)
    assert {n[0] for n in NEGATIVE} == set(SUPPRESSION_ORDER)


def test_plain_customer_mail_may_be_answered() -> None:
    assert reason(mail()) is None
    assert suppression_reason(mail(), "", []) == "null-sender"
    assert suppression_reason(mail(), CUSTOMER, []) is None


def test_first_reason_in_order_wins() -> None:
    everything = mail("X-Loop: support@example.com", "Auto-Submitted: auto-generated",
                      "Precedence: bulk", "List-Id: <x.example.net>",
                      sender="noreply@example.net")
    assert reason(everything, "") == "x-loop"
    assert reason(mail("Precedence: bulk", "List-Id: <x.example.net>"), "") == "mailing-list"
    bounce = parse_message((BOUNCES / "qmail.eml").read_bytes(), NOW)
    assert reason(bounce, "") == "mailer-daemon"  # not a multipart/report, but MAILER-DAEMON
    assert reason(bounce, None) == "mailer-daemon"


def test_return_path_stands_in_for_an_unknown_envelope() -> None:
    assert reason(mail("Return-Path: <support@example.com>"), None) == "own-address"
    assert reason(mail("Return-Path: <jane@example.net>"), None) is None
    assert reason(mail(), None) is None  # unknown and no header: not a null sender


def test_own_addresses_are_compared_without_case_or_brackets() -> None:
    assert suppression_reason(mail(sender="SALES@example.COM"), CUSTOMER,
                              ["<sales@example.com>"]) == "own-address"
    assert suppression_reason(mail("X-Loop: Postdesk <SUPPORT@example.com>"), CUSTOMER,
                              ["support@example.com"]) == "x-loop"


def test_our_own_automatic_mail_is_never_answered() -> None:
    headers = loop_headers("auto-acknowledge", "pd1.example.com", "support@example.com")
    echoed = mail(*(f"{name}: {value}" for name, value in headers))
    assert reason(echoed) == "x-loop"
    assert suppression_reason(echoed, CUSTOMER, ["other@example.org"]) == "out-of-office"
    generated = mail(*(f"{n}: {v}" for n, v in loop_headers("redirect", "h", "s@example.com")))
    assert suppression_reason(generated, CUSTOMER, []) in ("out-of-office", "auto-submitted")


# --- out of office -----------------------------------------------------------------------------

OOF_SUBJECTS = [
    "Out of Office: Question about order 1042",
    "Out of Office AutoReply: Question",
    "Out of the office until 16 March",
    "Automatic reply: RE: Question about order 1042",
    "Auto-Reply: Question",
    "Autoreply",
    "[Auto-Reply] Question",
    "AW: Abwesenheitsnotiz: Frage",
    "Automatische Antwort: Frage zur Bestellung",
    "Réponse automatique : Question",
    "Absence",
    "Fuera de la oficina: Pregunta",
    "Respuesta automática: Pregunta",
    "Risposta automatica: Domanda",
    "Fora do escritório: Pergunta",
    "Afwezig: Vraag",
    "Frånvaro: Fråga",
    "Autosvar: Spørgsmål",
    "Automaattinen vastaus: Kysymys",
    "Odpowiedź automatyczna: Pytanie",
    "自动回复：您的问题",
    "自動返信: ご質問",
    "Jane Doe/ACME is out of the office.",
]
NOT_OOF_SUBJECTS = [
    "My order was out of office hours",
    "Out of office hours support?",
    "Question about automatic reply settings",
    "Automatic replies do not work in your app",
    "Absence of a refund",
    "Absence from work next week",
    "Re: invoice 2026-113",
    "Why is out of office not working for me",
    "",
]


@pytest.mark.parametrize("subject", OOF_SUBJECTS)
def test_vacation_subjects(subject: str) -> None:
    assert is_out_of_office(mail(subject=subject))


@pytest.mark.parametrize("subject", NOT_OOF_SUBJECTS)
def test_customer_subjects_are_not_vacation(subject: str) -> None:
    assert not is_out_of_office(mail(subject=subject))


@pytest.mark.parametrize("header", [
    "Auto-Submitted: auto-replied",
    "Auto-Submitted: Auto-Replied (vacation)",
    "X-Autoreply: yes",
    "X-Autorespond: Out of office",
    "Precedence: auto_reply",
])
def test_vacation_headers(header: str) -> None:
    assert is_out_of_office(mail(header))


def test_exchange_auto_reply_shape() -> None:
    exchange = mail("X-Auto-Response-Suppress: All", "Auto-Submitted: auto-generated",
                    "X-MS-Exchange-Inbox-Rules-Loop: buildings@example.org", subject="Selwyn")
    assert is_out_of_office(exchange)
    rule_reply = mail("X-Auto-Response-Suppress: All",
                      "X-MS-Exchange-Inbox-Rules-Loop: buildings@example.org", subject="Selwyn")
    assert is_out_of_office(rule_reply)


@pytest.mark.parametrize("header", [
    "Auto-Submitted: auto-generated",  # automatic, but not a vacation reply
    "Auto-Submitted: no",
    "X-Autoreply: no",
    "X-Auto-Response-Suppress: All",  # Outlook meeting mail sets it too
    "X-MS-Exchange-Inbox-Rules-Loop: jane@example.net",  # a mailbox rule forwarded it
])
def test_not_vacation_headers(header: str) -> None:
    assert not is_out_of_office(mail(header))


def test_forwarded_by_an_exchange_rule_is_still_answered() -> None:
    assert reason(mail("X-MS-Exchange-Inbox-Rules-Loop: sales@customer.example")) is None


# --- addresses ---------------------------------------------------------------------------------

@pytest.mark.parametrize("address", [
    "noreply@x.example", "no-reply@x.example", "No_Reply@x.example", "no.reply@x.example",
    "noreply+tag@x.example", "do-not-reply@x.example", "donotreply@x.example",
    "dont-reply@x.example", "account-noreply@x.example", "bounce@x.example",
    "bounces+abc=def@x.example", "list-bounces@x.example", "bounce-mc.us1_123@x.example",
    "notifications@x.example", "<NoReply@X.Example>",
])
def test_noreply_addresses(address: str) -> None:
    assert is_noreply_address(address)


@pytest.mark.parametrize("address", [
    "jane@x.example", "nora.reply@x.example", "bouncer@x.example", "reply@x.example",
    "notification.team.lead@x.example", "jane+bounces@x.example", "bouncy.castle@x.example",
])
def test_people_are_not_noreply(address: str) -> None:
    assert not is_noreply_address(address)


@pytest.mark.parametrize(("address", "expected"), [
    ("MAILER-DAEMON@x.example", True), ("mailer_daemon@x.example", True),
    ("postmaster@x.example", True), ("<Postmaster@X.example>", True),
    ("postmistress@x.example", False), ("daemon@x.example", False), ("", False),
])
def test_daemon_addresses(address: str, expected: bool) -> None:
    assert is_daemon_address(address) is expected


# --- headers on our automatic mail -------------------------------------------------------------

@pytest.mark.parametrize(("kind", "submitted"), [
    ("auto-acknowledge", AUTO_SUBMITTED_REPLIED), ("auto-reply", AUTO_SUBMITTED_REPLIED),
    ("redirect", AUTO_SUBMITTED_GENERATED), ("notification", AUTO_SUBMITTED_GENERATED),
])
def test_loop_headers(kind: str, submitted: str) -> None:
    headers = dict(loop_headers(kind, "pd1.example.com", "support@example.com"))
    assert headers == {
        "Auto-Submitted": submitted,
        "X-Loop": "support@example.com",
        "X-Auto-Response-Suppress": "OOF, AutoReply",
        "X-Postdesk-Auto": f"{kind}; host=pd1.example.com",
    }


def test_precedence_only_on_request() -> None:
    assert "Precedence" not in dict(loop_headers("auto-reply", "h", "s@example.com"))
    legacy = dict(loop_headers("auto-reply", "h", "s@example.com", legacy_precedence=True))
    assert legacy["Precedence"] == "bulk"


@pytest.mark.parametrize(("kind", "host", "account"), [
    ("auto-reply", "h", "s@example.com\r\nBcc: victim@example.org"),
    ("auto-reply", "h\n", "s@example.com"),
    ("", "h", "s@example.com"),
])
def test_loop_headers_refuse_header_injection(kind: str, host: str, account: str) -> None:
    with pytest.raises(ValueError):
        loop_headers(kind, host, account)


# --- rate limit --------------------------------------------------------------------------------

@pytest.mark.parametrize(("sent", "limit", "over"), [
    (0, RateLimit(), False), (1, RateLimit(), True), (2, RateLimit(per_sender=3), False),
    (3, RateLimit(per_sender=3), True), (0, RateLimit(per_sender=0), True),
])
def test_over_limit(sent: int, limit: RateLimit, over: bool) -> None:
    assert over_limit(sent, limit) is over


def test_rate_limit_defaults() -> None:
    assert RateLimit() == RateLimit(per_sender=1, window_seconds=86400)
