"""Loop and flood safety for automatic mail (issue 5): may we answer this message automatically?

Sits between the rules and the outbox: when a Decision asks for an auto-acknowledge or an
auto-reply, the outbox asks ``suppression_reason`` first and, if it says None, checks the
per-sender ``RateLimit``; every automatic mail it sends carries ``loop_headers``. Pure: values
in, values out, no database.

Reason codes (stable: they are written to history and counters)
---------------------------------------------------------------
Checked in this order; the first that applies is returned (``SUPPRESSION_ORDER``). The order
puts the most telling diagnosis first: a loop of our own before a generic "automatic mail",
a bounce before "null sender" (a bounce has both).

``x-loop``               an ``X-Loop`` header names one of our addresses: our own automatic mail
                         came back (a forward, a redirect, another responder echoing it).
``own-address``          From, Reply-To or the envelope sender is one of our addresses.
``feedback-report``      ``multipart/report; report-type=feedback-report`` (ARF abuse report).
``delivery-report``      any other ``multipart/report`` (DSN, bounce, MDN read receipt), or a
                         top-level delivery-status/disposition part: never answered (RFC 3464,
                         RFC 8098).
``out-of-office``        ``is_out_of_office``: a vacation or other auto-reply.
``auto-submitted``       ``Auto-Submitted`` with any value but ``no`` (RFC 3834 section 2 MUST
                         NOT; parameters and comments ignored, an empty value counts as "yes").
``auto-reply-suppressed`` ``X-Auto-Response-Suppress`` lists All, AutoReply or OOF (MS-OXCMAIL
                         2.1.3.2.20).
``mailer-daemon``        envelope sender or From is MAILER-DAEMON or postmaster, or From is
                         named "Mail Delivery System/Subsystem".
``mailing-list``         ``List-Id``, ``List-Unsubscribe``, ``List-Post``, ``List-Help``,
                         ``List-Subscribe``, ``List-Owner``, ``List-Archive``, ``Mailing-List``
                         or ``X-Mailing-List`` present (RFC 2369, RFC 2919; RFC 3834 section 2).
``precedence``           ``Precedence: bulk | junk | list`` (RFC 3834 section 2).
``null-sender``          the envelope sender is empty (``<>``): RFC 3834 section 2 / RFC 5321
                         4.5.5 (no notification to a null reverse-path).
``noreply-sender``       the address a response would go to (every Reply-To, else From) has a
                         no-reply local part, see ``is_noreply_address``.

Own addresses are compared whole and without regard to case (``support+x@`` is not
``support@``): pass every address of every account, so two accounts never answer each other.

The envelope sender may be unknown (IMAP polling): pass None and the ``Return-Path`` header the
delivering MTA added is used instead; without one the null-sender test is skipped. Pass ""
or "<>" only when the envelope sender really was null.

The noreply test looks at the response's destination, not at the envelope sender: mail services
use VERP bounce addresses (``bounces+...@sendgrid.net``) as the return path of legitimate mail,
and web forms send ``From: noreply@shop`` with ``Reply-To: <the customer>``.

Known gap: a support address that is itself a Google Group (or any list) adds ``List-Id`` and
``Precedence: list`` to every customer mail, so nothing would be auto-acknowledged; such a
deployment must strip those headers upstream (or the integrator special-cases its own list id).
An ``X-MS-Exchange-Inbox-Rules-Loop`` header alone is not a reason: Exchange also adds it when a
mailbox rule forwards a customer's mail.

Headers of our own automatic mail (``loop_headers``)
----------------------------------------------------
* ``Auto-Submitted: auto-replied`` for acknowledgements and auto-replies (a response to a
  message, RFC 3834 section 5), ``auto-generated`` for everything else (redirects,
  notifications) - the standard signal every modern responder honours.
* ``X-Loop: <account address>``: ``suppression_reason`` recognises it when the mail returns.
* ``X-Auto-Response-Suppress: OOF, AutoReply``: asks Exchange/Outlook for no OOF and no
  auto-reply. Deliberately not ``All``: ``All`` also suppresses non-delivery reports (NDR bit,
  MS-OXCMAIL 2.1.3.2.20), and a bounce of our auto-ack is how we learn an address is dead.
* ``X-Postdesk-Auto: <kind>; host=<hostname>``: which Postdesk host made it and why (for
  operators untangling a loop between two installations).
* No ``Precedence`` header by default: RFC 3834 section 3.1.8 says responders SHOULD NOT use it
  (never standardised); ``Precedence: bulk`` also pushes mail into bulk/promotions folders.
  ``legacy_precedence=True`` adds ``Precedence: bulk`` for sites that must placate old
  responders which know no other signal.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from engine.mime import ParsedMessage

AUTO_SUBMITTED_REPLIED = "auto-replied"
AUTO_SUBMITTED_GENERATED = "auto-generated"
REPLY_KINDS = frozenset({"auto-acknowledge", "auto-reply"})
SUPPRESSION_ORDER = (
    "x-loop", "own-address", "feedback-report", "delivery-report", "out-of-office",
    "auto-submitted", "auto-reply-suppressed", "mailer-daemon", "mailing-list", "precedence",
    "null-sender", "noreply-sender",
)

LIST_HEADERS = frozenset({
    "list-id", "list-unsubscribe", "list-post", "list-help", "list-subscribe", "list-owner",
    "list-archive", "mailing-list", "x-mailing-list",
})
BULK_PRECEDENCE = frozenset({"bulk", "junk", "list"})
SUPPRESS_TOKENS = frozenset({"all", "autoreply", "oof"})
DAEMON_LOCALS = frozenset({"mailerdaemon", "postmaster"})
DAEMON_NAMES = frozenset({"mail delivery system", "mail delivery subsystem"})
# After removing . _ - from the local part (and any +detail): contained anywhere.
NOREPLY_WORDS = ("noreply", "donotreply", "dontreply", "donotrespond", "norespond")
# Whole words of the local part (split at . _ - =), e.g. bounces+x@, list-bounces@, bounce-7@.
NOREPLY_TOKENS = frozenset({"bounce", "bounces"})
# The whole local part.
NOREPLY_LOCALS = frozenset({"notification", "notifications"})
REPORT_PARTS = {
    "message/delivery-status": "delivery-report",
    "message/global-delivery-status": "delivery-report",
    "message/disposition-notification": "delivery-report",
    "message/global-disposition-notification": "delivery-report",
    "message/feedback-report": "feedback-report",
}
OOF_HEADERS = ("x-autoreply", "x-autorespond", "x-autoresponder")

# Subject phrases of vacation replies, matched at the start (after reply prefixes and an opening
# bracket) and only when followed by punctuation, the end, a reply prefix or "until": "Out of
# office: ...", "Automatic reply: Re: ...", "[Autoreply] ...", but not "Out of office hours?".
OOF_PHRASES = (
    # English
    "out of office autoreply", "out of (?:the )?office", "out-of-office",
    "away from (?:the )?office",
    "auto(?:matic|mated)?[- ]?(?:reply|response)", "autoresponder", "vacation (?:auto-?)?reply",
    "on vacation", "on leave",
    # German
    "abwesenheitsnotiz", "abwesend", "automatische (?:r[üu]ck)?antwort", "au(?:ß|ss)er haus",
    "nicht im b[üu]ro",
    # French
    "r[ée]ponse automatique", "absente?(?: du bureau)?", "absence(?: du bureau)?",
    "message d'absence",
    # Spanish, Portuguese, Italian
    "fuera de (?:la )?oficina", "respuesta autom[áa]tica", "mensaje de ausencia",
    "fora do escrit[óo]rio", "resposta autom[áa]tica", "aus[êe]ncia", "ausente",
    "risposta automatica", "fuori (?:ufficio|sede)", "assente",
    # Dutch, Scandinavian, Finnish
    "afwezig(?:heidsbericht)?", "automatisch antwoord", "fr[åa]nvaro(?:meddelande)?", "autosvar",
    "automatiskt svar", "automatisk svar", "frav[æa]r(?:ende)?", "automaattinen vastaus",
    # Polish, Czech, Turkish, Russian
    "odpowied[źz] automatyczna", "automatyczna odpowied[źz]", "poza biurem",
    "automatick[áa] odpov[ěe]d[ďd]", "mimo kancel[áa][řr]", "otomatik (?:yan[ıi]t|cevap)",
    "автоматический ответ", "автоответ",
    # Chinese, Japanese, Korean
    "自动回复", "自動回覆", "自動回復", "自動返信", "自動応答", "不在",
    "자동 회신", "자동 응답", "부재중",
)
_REPLY_PREFIX = r"(?:re|aw|sv|vs|antw|antwort|wg|fw|fwd|tr|rv|r|odp|ynt|res|ref)\s*(?:\[\d+\])?\s*:"
_OOF_SUBJECT = re.compile(
    rf"^(?:\s*{_REPLY_PREFIX})*\s*[\[(]?\s*(?:{'|'.join(OOF_PHRASES)})"
    rf"(?=\s*(?:$|[:：\-–—(\[\])|/.,;!]|{_REPLY_PREFIX}|(?:until|till|bis|jusqu|hasta|fino|tot)\b))",
    re.IGNORECASE,
)
# Lotus Notes style: "Jane Doe/ACME is out of the office." at the end of the subject.
_OOF_SENTENCE = re.compile(
    r"\b(?:is out of (?:the )?office|ist au(?:ß|ss)er haus)\.?\s*(?:\([^()]*\))?\s*$",
    re.IGNORECASE,
)
_COMMENT = re.compile(r"\([^()]*\)")
_ADDRESS = re.compile(r"[^\s<>\"',;:()]+@[^\s<>\"',;:()]+")
_TOKEN_SPLIT = re.compile(r"[._\-=]+")
_SEPARATORS = re.compile(r"[._\-]")
_UNSAFE = re.compile(r"[\r\n\x00]")


@dataclass
class RateLimit:
    """At most ``per_sender`` automatic mails to one address per ``window_seconds``."""

    per_sender: int = 1
    window_seconds: int = 86400


def over_limit(recent_sends: int, limit: RateLimit) -> bool:
    """True when ``recent_sends`` in the window already use up the limit (so do not send)."""
    return recent_sends >= limit.per_sender


def loop_headers(
    kind: str, hostname: str, account_address: str, *, legacy_precedence: bool = False
) -> list[tuple[str, str]]:
    """The headers Postdesk puts on its own automatic mail of ``kind`` (see module docstring)."""
    for label, value in (("kind", kind), ("hostname", hostname), ("account", account_address)):
        if not value or _UNSAFE.search(value):
            raise ValueError(f"loop_headers: {label} {value!r} is empty or has a line break")
    submitted = AUTO_SUBMITTED_REPLIED if kind in REPLY_KINDS else AUTO_SUBMITTED_GENERATED
    headers = [
        ("Auto-Submitted", submitted),
        ("X-Loop", account_address.strip().strip("<>")),
        ("X-Auto-Response-Suppress", "OOF, AutoReply"),
        ("X-Postdesk-Auto", f"{kind}; host={hostname}"),
    ]
    if legacy_precedence:
        headers.append(("Precedence", "bulk"))
    return headers


def suppression_reason(
    parsed: ParsedMessage, envelope_sender: str | None, own_addresses: Collection[str]
) -> str | None:
    """Why we must not auto-respond to ``parsed`` (a reason code), or None if we may."""
    headers = _header_map(parsed.headers)
    own = frozenset(b for a in own_addresses if isinstance(a, str) and (b := _bare(a)))
    if envelope_sender is None:  # unknown (IMAP): the Return-Path the delivering MTA wrote
        envelope_sender = headers.get("return-path", [None])[0]
    sender = None if envelope_sender is None else _bare(envelope_sender)
    facts = _Facts(parsed, headers, sender, own)
    for reason, check in _CHECKS:
        if check(facts):
            return _report_kind(parsed, headers) if reason == "report" else reason
    return None


def is_out_of_office(parsed: ParsedMessage) -> bool:
    """True for a vacation / out-of-office / other automatic reply (headers or subject)."""
    return _is_oof(parsed, _header_map(parsed.headers))


def is_noreply_address(address: str) -> bool:
    """True for addresses nobody reads replies to: noreply@, no.reply+x@, bounces@ and kin."""
    local = _bare(address).rpartition("@")[0] or _bare(address)
    local = local.split("+", 1)[0]
    compact = _SEPARATORS.sub("", local)
    return (any(word in compact for word in NOREPLY_WORDS)
            or any(token in NOREPLY_TOKENS for token in _TOKEN_SPLIT.split(local))
            or compact in NOREPLY_LOCALS)


def is_daemon_address(address: str) -> bool:
    """True for MAILER-DAEMON@ and postmaster@ (any case, any separators)."""
    local = _bare(address).rpartition("@")[0] or _bare(address)
    return _SEPARATORS.sub("", local.split("+", 1)[0]) in DAEMON_LOCALS


# --- the checks, in order ----------------------------------------------------------------------

_Headers = dict[str, list[str]]


@dataclass(frozen=True, slots=True)
class _Facts:
    """What the checks look at: the message, its headers by lower-case name, sender, own."""

    parsed: ParsedMessage
    headers: _Headers
    sender: str | None  # bare envelope sender; "" = null; None = unknown
    own: frozenset[str]


def _x_loop(f: _Facts) -> bool:
    return any(_bare(v) in f.own or not f.own.isdisjoint(_addresses(v))
               for v in f.headers.get("x-loop", []))


def _own(f: _Facts) -> bool:
    return not f.own.isdisjoint(_senders(f.parsed, f.sender))


def _report(f: _Facts) -> bool:
    return _report_kind(f.parsed, f.headers) is not None


def _oof(f: _Facts) -> bool:
    return _is_oof(f.parsed, f.headers)


def _auto_submitted(f: _Facts) -> bool:
    return any(_keyword(v) != "no" for v in f.headers.get("auto-submitted", []))


def _suppressed(f: _Facts) -> bool:
    values = f.headers.get("x-auto-response-suppress", [])
    return any(not SUPPRESS_TOKENS.isdisjoint(_words(v)) for v in values)


def _daemon(f: _Facts) -> bool:
    if f.sender and is_daemon_address(f.sender):
        return True
    author = f.parsed.from_
    return author is not None and (is_daemon_address(author.addr)
                                   or author.name.strip().lower() in DAEMON_NAMES)


def _listed(f: _Facts) -> bool:
    return not LIST_HEADERS.isdisjoint(f.headers)


def _bulk(f: _Facts) -> bool:
    return any(_keyword(v) in BULK_PRECEDENCE for v in f.headers.get("precedence", []))


def _null(f: _Facts) -> bool:
    return f.sender == ""


def _noreply(f: _Facts) -> bool:
    targets = [a.addr for a in f.parsed.reply_to if a.addr]
    if not targets and f.parsed.from_ is not None and f.parsed.from_.addr:
        targets = [f.parsed.from_.addr]
    return any(is_noreply_address(t) for t in targets)


_CHECKS = (
    ("x-loop", _x_loop), ("own-address", _own), ("report", _report), ("out-of-office", _oof),
    ("auto-submitted", _auto_submitted), ("auto-reply-suppressed", _suppressed),
    ("mailer-daemon", _daemon), ("mailing-list", _listed), ("precedence", _bulk),
    ("null-sender", _null), ("noreply-sender", _noreply),
)


# --- helpers -----------------------------------------------------------------------------------


def _header_map(pairs: Iterable[tuple[str, str]]) -> _Headers:
    found: _Headers = {}
    for name, value in pairs:
        found.setdefault(name.strip().lower(), []).append(value or "")
    return found


def _bare(address: str) -> str:
    """``<A@B>`` / `` a@b `` -> ``a@b``; "" for the null path ``<>``."""
    return address.strip().strip("<>").strip().lower()


def _addresses(text: str) -> set[str]:
    """Address-like words (split first: a regex over a long run would be quadratic)."""
    words = (word for word in text.split() if "@" in word)
    return {m.group(0).lower() for word in words if (m := _ADDRESS.search(word[:400]))}


def _senders(parsed: ParsedMessage, sender: str | None) -> set[str]:
    found = {a.addr for a in parsed.reply_to if a.addr}
    if parsed.from_ is not None and parsed.from_.addr:
        found.add(parsed.from_.addr)
    if sender:
        found.add(sender)
    return found


def _keyword(value: str) -> str:
    """The first token of a structured value, comments and parameters dropped, lower case."""
    text = value
    for _ in range(4):  # nested comments, innermost first
        text = _COMMENT.sub(" ", text)
    return text.split(";", 1)[0].strip().lower()


def _words(value: str) -> set[str]:
    return {w for w in re.split(r"[\s,;]+", _COMMENT.sub(" ", value).lower()) if w}


def _report_kind(parsed: ParsedMessage, headers: _Headers) -> str | None:
    ctype = headers.get("content-type", [""])[0].lower()
    media = _COMMENT.sub("", ctype).split(";", 1)[0].strip()
    if media == "multipart/report":
        match = re.search(r"report-type\s*=\s*\"?\s*([a-z0-9.\-]+)", ctype)
        kind = match.group(1) if match else ""
        return "feedback-report" if kind == "feedback-report" else "delivery-report"
    if media in REPORT_PARTS:
        return REPORT_PARTS[media]
    for attachment in parsed.attachments:
        if attachment.content_type.lower() in REPORT_PARTS:
            return REPORT_PARTS[attachment.content_type.lower()]
    return None


def _is_oof(parsed: ParsedMessage, headers: _Headers) -> bool:
    if any(_keyword(v) == AUTO_SUBMITTED_REPLIED for v in headers.get("auto-submitted", [])):
        return True
    if any(_keyword(v) not in ("no", "false", "0") for name in OOF_HEADERS
           for v in headers.get(name, [])):
        return True
    if any(_keyword(v) == "auto_reply" for v in headers.get("precedence", [])):
        return True
    if "x-auto-response-suppress" in headers and (
            "x-ms-exchange-inbox-rules-loop" in headers
            or any(_keyword(v) not in ("", "no") for v in headers.get("auto-submitted", []))):
        return True  # Exchange's own auto-replies and rule replies carry these together
    subject = unicodedata.normalize("NFC", parsed.subject or "")
    return bool(_OOF_SUBJECT.match(subject) or _OOF_SENTENCE.search(subject))
