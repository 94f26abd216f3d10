"""the message component: reason codes, work sessions, drafts, notes, site dictionary

``reason_codes`` is seeded with the machine's codes (kind "system", ``engine.reasons.SEEDED``)
and the agents' wrap-up codes (kind "wrap-up", ``engine.reasons.WRAPUP``) as they were when
this revision was written; admins add more later. ``work_sessions`` says who has a message
open and since when; ``drafts`` keeps one unsent reply per message and user; ``notes`` are
annotations; ``site_words`` the spell checker's company dictionary.

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

import engine.store.models

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SYSTEM = {
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
}
WRAPUP = {
    "RESOLVED_ANSWERED": "Answered the customer",
    "RESOLVED_NO_ACTION": "Resolved: no reply needed",
    "RESOLVED_OTHER_CHANNEL": "Resolved by phone or another channel",
    "DUPLICATE": "Duplicate of another message",
    "SPAM": "Spam, abuse or junk",
    "TRANSFERRED": "Handed to a colleague or group",
    "ESCALATED": "Escalated",
    "WRONG_QUEUE": "Wrong account or classification",
}


def upgrade() -> None:
    codes = op.create_table(
        "reason_codes",
        sa.Column("code", sa.String(length=60), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_reason_codes")),
    )
    op.bulk_insert(codes, [
        *({"code": c, "description": d, "kind": "system", "active": True}
          for c, d in SYSTEM.items()),
        *({"code": c, "description": d, "kind": "wrap-up", "active": True}
          for c, d in WRAPUP.items()),
    ])
    op.create_table(
        "work_sessions",
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("opened_at", engine.store.models.UTCDateTime(), nullable=False),
        sa.Column("seen_at", engine.store.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"],
                                name=op.f("fk_work_sessions_message_id_messages")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"],
                                name=op.f("fk_work_sessions_user_id_users")),
        sa.PrimaryKeyConstraint("message_id", "user_id", name=op.f("pk_work_sessions")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "drafts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("html", sa.Boolean(), nullable=False),
        sa.Column("attachments", sa.JSON(), nullable=False),
        sa.Column("created_at", engine.store.models.UTCDateTime(), nullable=False),
        sa.Column("updated_at", engine.store.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"],
                                name=op.f("fk_drafts_message_id_messages")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_drafts_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drafts")),
    )
    op.create_index("ix_drafts_message_user", "drafts", ["message_id", "user_id"], unique=True)
    op.create_table(
        "notes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", engine.store.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"],
                                name=op.f("fk_notes_message_id_messages")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_notes_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notes")),
    )
    op.create_index("ix_notes_message_created", "notes", ["message_id", "created_at"])
    op.create_table(
        "site_words",
        sa.Column("word", sa.String(length=100), nullable=False),
        sa.Column("created_at", engine.store.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("word", name=op.f("pk_site_words")),
    )


def downgrade() -> None:
    op.drop_table("site_words")
    op.drop_index("ix_notes_message_created", table_name="notes")
    op.drop_table("notes")
    op.drop_index("ix_drafts_message_user", table_name="drafts")
    op.drop_table("drafts")
    op.drop_table("work_sessions")
    op.drop_table("reason_codes")
