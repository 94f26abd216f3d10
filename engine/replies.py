"""An agent's reply: fill a template into it, then send it through the outbox.

Sending writes an outbox row (``kind`` "agent-reply", ``automatic`` False) composed at once
exactly like the automatic answers (``engine.compose.answer``: Message-ID, In-Reply-To and
References, the account's From/Reply-To/signature, the sealed reference tag in the subject,
a VERP return path), so the outbox worker only sends those bytes, archives them in the
thread and records the delivery; agent mail goes out even while automatic mail is paused.
The message is settled as resolved with a ``replied`` history row and the wrap-up reason.

Before anything is written, the collision check: when the customer or a colleague wrote
to the thread since the agent's page was drawn (``Seen``), ``Collision`` carries the new
mail and nothing is sent until the agent confirms.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from inscriptis import get_text
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from engine import compose, sanitize
from engine.bounces import verp_address
from engine.config import AccountSettings, Settings, tag_keys
from engine.drafts import File
from engine.mergefields import AckInfo, AgentInfo, InboundFields, merge_context
from engine.mime import parse_message
from engine.outbox import reply_address
from engine.queues import Viewer
from engine.store.models import (
    Message,
    MessageState,
    Outbox,
    OutboxState,
    TagValue,
    TemplateSource,
    User,
)
from engine.tags import TagKeys, seal
from engine.templates import Rendered, TemplateFields, Templates
from engine.threadview import News, Seen, news_since
from engine.work import WorkError, check_reason, ensure_workable, settle

KIND = "agent-reply"
TEMPLATE_SUFFIXES = (".txt", ".html", ".htm")


class Collision(WorkError):
    """New mail reached the thread since the agent looked: confirm before sending."""

    def __init__(self, news: list[News]):
        self.news = news
        super().__init__(f"{len(news)} new message(s) in the thread since you opened it")


@dataclass(frozen=True)
class Outgoing:
    """What composing needs from the configuration, for one account."""

    account: AccountSettings
    hostname: str
    keys: TagKeys | None = None
    bounce_local: str = "bounces"

    @classmethod
    def from_settings(cls, settings: Settings, account: str) -> Outgoing:
        found = settings.account(account)
        if found is None:
            raise WorkError(f"account {account!r} is not configured: cannot send from it")
        return cls(found, settings.gateway.hostname, tag_keys(settings),
                   settings.outbox.bounce_local)


@dataclass(frozen=True)
class Reply:
    body: str
    html: bool = False
    files: list[File] = field(default_factory=list)


def send(session: Session, message: Message, viewer: Viewer, reply: Reply,
         reason: str | None, outgoing: Outgoing, now: datetime, *,
         seen: Seen | None = None, confirmed: bool = False) -> int:
    """Queue the agent's reply to ``message`` and settle it; returns the outbox row id.

    Raises ``Collision`` (new mail since ``seen``, unless ``confirmed``), ``ReasonRequired``,
    ``NotActive``/``Taken`` or ``WorkError`` (empty reply, no address to answer)."""
    ensure_workable(session, message, viewer)
    code = check_reason(session, reason)
    if not reply.body.strip():
        raise WorkError("the reply is empty")
    if seen is not None and not confirmed:
        news = news_since(session, message, seen)
        if news:
            raise Collision(news)
    inbound = parse_message(message.raw, message.received_at)
    rcpt = reply_address(inbound)
    if not rcpt:
        raise WorkError("the message has no From or Reply-To address to answer")
    row = Outbox(cause_message_id=message.id, account_id=message.account_id,
                 thread_id=message.thread_id, kind=KIND, rcpt=rcpt, automatic=False,
                 state=OutboxState.PENDING.value, rcpt_to=[rcpt], created_at=now,
                 next_attempt_at=now, mail_from="", attempts=0)
    session.add(row)
    session.flush()
    marker = _tag(session, outgoing, row, viewer, now)
    text, html = _bodies(reply)
    made = compose.answer(account=outgoing.account, inbound=inbound, rcpt=rcpt, text=text,
                          html=html, marker=marker, hostname=outgoing.hostname, now=now,
                          headers=[], attachments=[(f.filename, f.content_type, f.data)
                                                   for f in reply.files])
    session.execute(update(Outbox).where(Outbox.id == row.id).values(
        raw=made.raw, message_id_header=made.message_id, mail_from=_return_path(outgoing, row.id)))
    settle(session, message, viewer, "replied", MessageState.RESOLVED.value, code, now,
           {"outbox": row.id, "to": rcpt, "html": reply.html, "attachments": len(reply.files)})
    return int(row.id)


def _bodies(reply: Reply) -> tuple[str, str | None]:
    if not reply.html:
        return reply.body, None
    html = sanitize.for_sending(reply.body)
    return get_text(html).strip() + "\n", html


def _tag(session: Session, outgoing: Outgoing, row: Outbox, viewer: Viewer,
         now: datetime) -> str | None:
    if outgoing.keys is None:
        return None
    values: dict[str, str | int] = {"interaction": row.id, "account": outgoing.account.name,
                                    "agent": viewer.username}
    if row.thread_id is not None:
        values["thread"] = row.thread_id
    tag = seal(values, outgoing.keys)
    session.add(TagValue(reference=tag.reference, blob=tag.blob, created_at=now))
    return tag.marker


def _return_path(outgoing: Outgoing, pk: int) -> str:
    """VERP, as the worker does for automatic mail: a bounce names this row."""
    address = outgoing.account.addresses[0]
    if outgoing.keys is None:
        return address
    return verp_address(pk, address.rpartition("@")[2],
                        outgoing.keys.keys[outgoing.keys.current], local=outgoing.bounce_local)


# --- templates and documents ------------------------------------------------------------------


def template_source(session: Session, directory: Path | None) -> Any:
    """A template loader for ``Templates``: the database first, then ``directory``."""
    def source(name: str) -> str | None:
        stored = session.scalar(select(TemplateSource.source).where(
            TemplateSource.name == name))
        if stored is not None:
            return str(stored)
        if directory is None:
            return None
        path = directory / name
        inside = path.resolve().is_relative_to(directory.resolve())
        return path.read_text(encoding="utf-8") if inside and path.is_file() else None

    return source


def template_names(session: Session, directory: Path | None) -> list[str]:
    """Every template an agent can insert: stored ones and the directory's files."""
    names = set(session.scalars(select(TemplateSource.name)))
    if directory is not None and directory.is_dir():
        names |= {p.name for p in directory.iterdir()
                  if p.is_file() and p.suffix.lower() in TEMPLATE_SUFFIXES}
    return sorted(names)


def merge_values(session: Session, message: Message, viewer: Viewer,
                 account: AccountSettings | None, now: datetime,
                 defaults: Mapping[str, str] | None = None) -> dict[str, str]:
    """The standard merge fields for a reply to ``message`` written by ``viewer``."""
    user = session.get(User, viewer.id)
    agent = AgentInfo.from_display_name(user.display_name or user.username if user else "",
                                        user_name=viewer.username)
    return merge_context(account=account, inbound=InboundFields.from_stored(message),
                         agent=agent, ack=AckInfo(reference=str(message.id)),
                         defaults=defaults, now=now)


def prompts(templates: Templates, name: str) -> TemplateFields:
    """The custom fields the agent is asked for (``required`` must be filled)."""
    return templates.fields(name)


def fill(templates: Templates, name: str, context: Mapping[str, str],
         custom: Mapping[str, str]) -> Rendered:
    """The template rendered for insertion into the reply. Empty custom values count as
    missing, so a required field is never sent blank (``MissingField`` names them)."""
    given = {k: v for k, v in custom.items() if v.strip()}
    return templates.render(name, context, custom=given)
