"""Seeded reason codes: every automated action's history row names one (with the default
resource ``system``), so reports and threads say why the machine did what it did. The
console's wrap-up codes for agents extend this set."""

from __future__ import annotations

DEFAULT_RESOURCE = "system"

SEEDED: dict[str, str] = {
    "RECEIVED": "Received and stored",
    "AUTO_DELETED": "Deleted by an auto-delete rule",
    "AUTO_ACKNOWLEDGED": "Acknowledged automatically",
    "AUTO_REPLIED": "Answered automatically",
    "AUTO_REDIRECTED": "Redirected by a rule",
    "AUTO_PROCESSED": "Processed by a rule (service request or custom procedure)",
    "AUTO_WITHHELD": "Automatic response withheld (loop, rate limit or suppression)",
    "OUT_OF_OFFICE": "Out-of-office reply, settled in its thread without a case",
    "DELIVERY_FAILED": "A mail we sent could not be delivered",
    "DELIVERY_REPORT": "A delivery report for a mail we sent",
    "ADMIN": "Changed by an administrator",
    "AGENT_REPLY_SENT": "An agent's reply was handed to the relay",
    "AGENT_MAIL_SENT": "An agent's new message was handed to the relay",
}

# Wrap-up codes an agent picks when finishing a message (send, resolve, transfer, delete,
# reroute); seeded into ``reason_codes`` with kind "wrap-up", admins may add more.
WRAPUP: dict[str, str] = {
    "RESOLVED_ANSWERED": "Answered the customer",
    "RESOLVED_NO_ACTION": "Resolved: no reply needed",
    "RESOLVED_OTHER_CHANNEL": "Resolved by phone or another channel",
    "DUPLICATE": "Duplicate of another message",
    "SPAM": "Spam, abuse or junk",
    "TRANSFERRED": "Handed to a colleague or group",
    "ESCALATED": "Escalated",
    "WRONG_QUEUE": "Wrong account or classification",
}

_BY_ACTION = {
    "received": "RECEIVED", "reprocessed": "RECEIVED",
    "auto-delete": "AUTO_DELETED", "auto-acknowledge": "AUTO_ACKNOWLEDGED",
    "auto-reply": "AUTO_REPLIED", "auto-redirect": "AUTO_REDIRECTED",
    "redirect": "AUTO_REDIRECTED", "redirected": "AUTO_REDIRECTED",
    "redirect-account": "AUTO_REDIRECTED", "auto-process": "AUTO_PROCESSED",
    "auto-skipped": "AUTO_WITHHELD", "address-suppressed": "AUTO_WITHHELD",
    "out-of-office": "OUT_OF_OFFICE", "send-failed": "DELIVERY_FAILED",
    "delivery-report": "DELIVERY_REPORT", "untrusted-bounce": "DELIVERY_REPORT",
    "send-interrupted": "AUTO_WITHHELD", "retry": "ADMIN", "cancelled": "ADMIN",
    "agent-reply": "AGENT_REPLY_SENT", "agent-new": "AGENT_MAIL_SENT",
}


def reason_for(action: str, kind: str | None = None) -> str | None:
    """The seeded reason code of a history ``action`` (``sent`` takes its outbox ``kind``)."""
    if action == "sent" and kind is not None:
        return _BY_ACTION.get(kind)
    return _BY_ACTION.get(action)
