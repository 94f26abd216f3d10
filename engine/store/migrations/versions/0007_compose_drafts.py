"""new mail from the console: compose drafts, and the reason code of its sending

``compose_drafts`` keeps one unsent new message per user and account (To, Cc, Subject,
body, attachments as blob references, like ``drafts``). ``AGENT_MAIL_SENT`` names the
history row the outbox worker writes when such a mail reached the relay.

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

import engine.store.models

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "compose_drafts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("to", sa.Text(), nullable=False),
        sa.Column("cc", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("html", sa.Boolean(), nullable=False),
        sa.Column("attachments", sa.JSON(), nullable=False),
        sa.Column("created_at", engine.store.models.UTCDateTime(), nullable=False),
        sa.Column("updated_at", engine.store.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"],
                                name=op.f("fk_compose_drafts_account_id_accounts")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"],
                                name=op.f("fk_compose_drafts_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_compose_drafts")),
    )
    op.create_index("ix_compose_drafts_user_account", "compose_drafts",
                    ["user_id", "account_id"], unique=True)
    codes = sa.table("reason_codes", sa.column("code", sa.String), sa.column("description",
                     sa.Text), sa.column("kind", sa.String), sa.column("active", sa.Boolean))
    op.bulk_insert(codes, [{"code": "AGENT_MAIL_SENT", "kind": "system", "active": True,
                            "description": "An agent's new message was handed to the relay"}])


def downgrade() -> None:
    op.execute("DELETE FROM reason_codes WHERE code = 'AGENT_MAIL_SENT'")
    op.drop_index("ix_compose_drafts_user_account", table_name="compose_drafts")
    op.drop_table("compose_drafts")
