"""The message store's tables (SQLAlchemy 2 declarative), shared by async and sync code.

The store knows no pipeline: it holds accounts, messages (raw MIME byte-exact plus parsed
columns and state), content-addressed attachments, threads and the references that bind
them, interaction history, users/groups and the outbox. Alembic owns the schema
(``engine/store/migrations``); a test checks that the migrations match these models.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names so Alembic migrations are portable between SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every engine (SQLite keeps no offset by itself)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class MessageState(enum.StrEnum):
    """Seeded message states: active ones wait for work, settled ones are done."""

    QUEUED = "queued"
    ASSIGNED = "assigned"
    DRAFT = "draft"
    RESOLVED = "resolved"
    SENT = "sent"
    DELETED = "deleted"
    REDIRECTED = "redirected"
    AUTO_REPLIED = "auto_replied"
    BOUNCE = "bounce"  # a delivery report: linked to what we sent, never customer mail

    @property
    def active(self) -> bool:
        return self in ACTIVE_STATES


ACTIVE_STATES = frozenset({MessageState.QUEUED, MessageState.ASSIGNED, MessageState.DRAFT})
SETTLED_STATES = frozenset(set(MessageState) - ACTIVE_STATES)


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    addresses: Mapped[list[str]] = mapped_column(JSON, default=list)
    from_name: Mapped[str | None] = mapped_column(String(200))
    reply_to: Mapped[str | None] = mapped_column(String(320))
    signature: Mapped[str] = mapped_column(Text, default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Thread(Base):
    __tablename__ = "threads"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject: Mapped[str] = mapped_column(Text, default="")
    subject_key: Mapped[str] = mapped_column(String(255), default="", index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_message_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    # something needs an agent's eye (a mail we sent bounced)
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)


class ThreadRef(Base):
    """A Message-ID known to belong to a thread: its own messages' ids and every id they cite.

    Keeping cited ids too lets two replies to a message we never received still meet (JWZ).
    """

    __tablename__ = "thread_refs"
    __table_args__ = {"sqlite_with_rowid": False}  # one b-tree per insert, not two

    ref: Mapped[str] = mapped_column(String(998), primary_key=True)
    thread_id: Mapped[int] = mapped_column(ForeignKey("threads.id"))


class ThreadParticipant(Base):
    __tablename__ = "thread_participants"
    __table_args__ = {"sqlite_with_rowid": False}

    thread_id: Mapped[int] = mapped_column(ForeignKey("threads.id"), primary_key=True)
    address: Mapped[str] = mapped_column(String(320), primary_key=True, index=True)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_queue", "account_id", "state", "received_at"),
        Index("ix_messages_class_queue", "account_id", "classification", "state", "received_at"),
        # partial indexes: only the few rows concerned are in them, inserts don't touch them
        Index("ix_messages_tagged", "message_id_header",
              sqlite_where=text("tag_reference IS NOT NULL"),
              postgresql_where=text("tag_reference IS NOT NULL")),
        Index("ix_messages_attention", "id", sqlite_where=text("needs_attention"),
              postgresql_where=text("needs_attention")),
        # the console's queues: counts per (account, classification) and "get next" read only
        # the queued rows, oldest first within a priority
        Index("ix_messages_queued", "account_id", "classification", "priority", "received_at",
              sqlite_where=text("state = 'queued'"),
              postgresql_where=text("state = 'queued'")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # sha256(Message-ID, body hash): the same mail delivered again maps to the same row
    dedupe_key: Mapped[str] = mapped_column(String(64), unique=True)
    message_id_header: Mapped[str] = mapped_column(String(998))
    direction: Mapped[str] = mapped_column(String(10), default="inbound")
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    thread_id: Mapped[int | None] = mapped_column(ForeignKey("threads.id"), index=True)
    thread_reason: Mapped[str | None] = mapped_column(String(40))
    state: Mapped[str] = mapped_column(String(20), default=MessageState.QUEUED.value)
    classification: Mapped[str | None] = mapped_column(String(100))
    # where routing sent it (names from the rules; resolved to ids when agents exist)
    route_group: Mapped[str | None] = mapped_column(String(100))
    route_agent: Mapped[str | None] = mapped_column(String(100))
    rule_version: Mapped[str | None] = mapped_column(String(20))
    # the reference tag an outbound message carried: a reply that lost the subject marker
    # still finds its tag through In-Reply-To/References
    tag_reference: Mapped[str | None] = mapped_column(String(16))
    decision: Mapped[dict | None] = mapped_column(JSON)  # the rules' Decision, with trace
    assigned_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    group_id: Mapped[int | None] = mapped_column(ForeignKey("groups.id"))
    needs_attention: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(Text, default="")
    from_addr: Mapped[str] = mapped_column(String(320), default="", index=True)
    from_name: Mapped[str] = mapped_column(String(320), default="")
    to_addrs: Mapped[list[str]] = mapped_column(JSON, default=list)
    cc_addrs: Mapped[list[str]] = mapped_column(JSON, default=list)
    in_reply_to: Mapped[str | None] = mapped_column(String(998))
    date: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    charset: Mapped[str | None] = mapped_column(String(40))
    body_text: Mapped[str] = mapped_column(Text, default="")
    body_html: Mapped[str | None] = mapped_column(Text)
    envelope_from: Mapped[str] = mapped_column(String(998), default="")
    received_header: Mapped[str] = mapped_column(Text, default="")
    defects: Mapped[list[str]] = mapped_column(JSON, default=list)
    # the Local Message Store: exactly the bytes the client sent
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # higher first; then oldest received first (engine.queues.claim_next)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class MessageAccount(Base):
    """Every account a message was addressed to (one mail to two support addresses)."""

    __tablename__ = "message_accounts"
    __table_args__ = {"sqlite_with_rowid": False}

    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    recipient: Mapped[str] = mapped_column(String(998), default="")


class Blob(Base):
    """Attachment content, stored once however many messages carry it."""

    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Attachment(Base):
    __tablename__ = "attachments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), index=True)
    blob_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"), index=True)
    filename: Mapped[str | None] = mapped_column(Text)
    content_type: Mapped[str] = mapped_column(String(255))
    disposition: Mapped[str] = mapped_column(String(20))
    content_id: Mapped[str | None] = mapped_column(String(998))
    size: Mapped[int] = mapped_column(BigInteger)


class History(Base):
    """Interaction history: one row per thing a person or the machine did."""

    __tablename__ = "history"
    __table_args__ = (Index("ix_history_message_created", "message_id", "created_at"),
                      Index("ix_history_user_created", "user_id", "created_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id"))
    thread_id: Mapped[int | None] = mapped_column(ForeignKey("threads.id"))
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"))
    action: Mapped[str] = mapped_column(String(40))
    resource: Mapped[str] = mapped_column(String(100), default="system")
    reason_code: Mapped[str | None] = mapped_column(String(60))
    detail: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    # the console user who did it (None: the machine); resource keeps the display name
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))


class TagValue(Base):
    """Key/values behind a reference tag (AES-GCM sealed by ``engine.tags``)."""

    __tablename__ = "tag_values"

    reference: Mapped[str] = mapped_column(String(16), primary_key=True)
    blob: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RuleStat(Base):
    """How often each rule matched, and when last (``postdesk rules stats``)."""

    __tablename__ = "rule_stats"

    rule: Mapped[str] = mapped_column(String(200), primary_key=True)
    hits: Mapped[int] = mapped_column(BigInteger, default=0)
    last_matched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    display_name: Mapped[str] = mapped_column(String(200), default="")
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)  # kept equal to role=admin
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    role: Mapped[str] = mapped_column(String(20), default="agent")
    on_break: Mapped[bool] = mapped_column(Boolean, default=False)


class Group(Base):
    __tablename__ = "groups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)


class UserGroup(Base):
    __tablename__ = "user_groups"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id"), primary_key=True)


class OutboxState(enum.StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    CANCELLED = "cancelled"
    HELD = "held"
    SKIPPED = "skipped"  # loop, rate or suppression policy: recorded, never sent


class Outbox(Base):
    """Mail the system will send; rows are written in the transaction that caused them.

    A row is composed (``raw`` and ``message_id_header`` filled) once, before its first
    attempt; every later attempt sends those same bytes, so a resend after a crash keeps
    its Message-ID.
    """

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "state", "next_attempt_at"),
                      Index("ix_outbox_auto_rcpt", "account_id", "rcpt", "created_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cause_message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    thread_id: Mapped[int | None] = mapped_column(ForeignKey("threads.id"))
    kind: Mapped[str] = mapped_column(String(30))  # auto-acknowledge, auto-reply, redirect...
    rule: Mapped[str | None] = mapped_column(String(200))
    template: Mapped[str | None] = mapped_column(String(200))
    rcpt: Mapped[str] = mapped_column(String(320), default="")  # the one addressee, lower case
    automatic: Mapped[bool] = mapped_column(Boolean, default=True)
    state: Mapped[str] = mapped_column(String(20), default=OutboxState.PENDING.value)
    mail_from: Mapped[str] = mapped_column(String(998), default="")
    rcpt_to: Mapped[list[str]] = mapped_column(JSON, default=list)
    message_id_header: Mapped[str | None] = mapped_column(String(998))
    raw: Mapped[bytes | None] = mapped_column(LargeBinary)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # the worker sending it (``engine.leases.process_id``); while ``sending``,
    # ``next_attempt_at`` is when its claim runs out (another worker then sends it again)
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    last_error: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str | None] = mapped_column(String(20))  # last SMTP / DSN status code
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    archived_message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id"))


class Suppression(Base):
    """Addresses automatic mail is not sent to (a permanent delivery failure); agents see
    the mark and can clear it."""

    __tablename__ = "suppressions"

    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str | None] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Switch(Base):
    """Named on/off switches shared by every process (``outbox pause|resume``)."""

    __tablename__ = "switches"

    name: Mapped[str] = mapped_column(String(60), primary_key=True)
    on: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str] = mapped_column(Text, default="")
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TemplateSource(Base):
    """A template stored in the database (``postdesk template import``); a name found here
    wins over a file of the same name in the templates directory."""

    __tablename__ = "templates"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)  # with suffix: ack.txt
    source: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Role(enum.StrEnum):
    """Console roles, each including the one before: agent < supervisor < admin."""

    AGENT = "agent"
    SUPERVISOR = "supervisor"
    ADMIN = "admin"


class UserAccount(Base):
    """An account a user works: an agent sees only the accounts listed here."""

    __tablename__ = "user_accounts"
    __table_args__ = {"sqlite_with_rowid": False}

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), primary_key=True,
                                            index=True)


class QueueAccess(Base):
    """A queue (account, classification) a user may pull from.

    No row for a (user, account) means every queue of that account; once there is one, only
    the listed classifications. ``classification == ""`` stands for unclassified messages.
    """

    __tablename__ = "queue_access"
    __table_args__ = {"sqlite_with_rowid": False}

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    classification: Mapped[str] = mapped_column(String(100), primary_key=True)


# --- the message component (console): wrap-up codes, work in progress, drafts, notes --------


class ReasonCode(Base):
    """Reason codes history rows name: the machine's seeded ones (``engine.reasons.SEEDED``)
    and the wrap-up codes agents pick when they finish a message (``kind == "wrap-up"``)."""

    __tablename__ = "reason_codes"

    code: Mapped[str] = mapped_column(String(60), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    kind: Mapped[str] = mapped_column(String(20), default="wrap-up")  # system | wrap-up
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class WorkSession(Base):
    """A user has a message open: who is working it, since when (the wrap-up duration)."""

    __tablename__ = "work_sessions"
    __table_args__ = {"sqlite_with_rowid": False}

    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Draft(Base):
    """An agent's unsent reply to a message (one per message and user)."""

    __tablename__ = "drafts"
    __table_args__ = (Index("ix_drafts_message_user", "message_id", "user_id", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    body: Mapped[str] = mapped_column(Text, default="")
    html: Mapped[bool] = mapped_column(Boolean, default=False)
    # [{sha256, filename, content_type, size}]: contents are blobs, stored once
    attachments: Mapped[list[dict]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ComposeDraft(Base):
    """An agent's unsent new message from an account (one per user and account)."""

    __tablename__ = "compose_drafts"
    __table_args__ = (Index("ix_compose_drafts_user_account", "user_id", "account_id",
                            unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    to: Mapped[str] = mapped_column(Text, default="")  # as typed: validated at Send
    cc: Mapped[str] = mapped_column(Text, default="")
    subject: Mapped[str] = mapped_column(Text, default="")
    body: Mapped[str] = mapped_column(Text, default="")
    html: Mapped[bool] = mapped_column(Boolean, default=False)
    attachments: Mapped[list[dict]] = mapped_column(JSON, default=list)  # as Draft's
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Note(Base):
    """An annotation on a message (``engine.notes.NOTE_TYPES``); never sent to the customer."""

    __tablename__ = "notes"
    __table_args__ = (Index("ix_notes_message_created", "message_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(20), default="general")
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SiteWord(Base):
    """The site dictionary: company and product words the spell checker accepts."""

    __tablename__ = "site_words"

    word: Mapped[str] = mapped_column(String(100), primary_key=True)  # lower case
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Lease(Base):
    """Who does a job that must run once at a time (polling one mailbox), until when.

    Taken and renewed with single conditional statements (``engine.leases``); a holder that
    dies simply stops renewing, and the row is free again once ``expires_at`` has passed.
    """

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)  # e.g. imap:support/mailbox
    holder: Mapped[str] = mapped_column(String(200))  # host:pid:nonce of the holding process
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
