"""outbox: composed on first attempt, per-recipient index, suppressions, switches, flags

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

import engine.store.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("thread_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("rule", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("template", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("rcpt", sa.String(length=320), nullable=False,
                                      server_default=""))
        batch_op.add_column(sa.Column("automatic", sa.Boolean(), nullable=False,
                                      server_default=sa.true()))
        batch_op.add_column(sa.Column("status", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("archived_message_id", sa.Integer(), nullable=True))
        batch_op.alter_column("message_id_header", existing_type=sa.String(length=998),
                              nullable=True)
        batch_op.alter_column("raw", existing_type=sa.LargeBinary(), nullable=True)
        batch_op.create_foreign_key(batch_op.f("fk_outbox_thread_id_threads"), "threads",
                                    ["thread_id"], ["id"])
        batch_op.create_foreign_key(batch_op.f("fk_outbox_archived_message_id_messages"),
                                    "messages", ["archived_message_id"], ["id"])
        batch_op.create_index("ix_outbox_auto_rcpt", ["account_id", "rcpt", "created_at"])
    with op.batch_alter_table("threads", schema=None) as batch_op:
        batch_op.add_column(sa.Column("flagged", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
    op.create_table(
        "suppressions",
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=True),
        sa.Column("created_at", engine.store.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("address", name=op.f("pk_suppressions")),
    )
    op.create_table(
        "switches",
        sa.Column("name", sa.String(length=60), nullable=False),
        sa.Column("on", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("changed_at", engine.store.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_switches")),
    )


def downgrade() -> None:
    with op.batch_alter_table("threads", schema=None) as batch_op:
        batch_op.drop_column("flagged")
    op.drop_table("switches")
    op.drop_table("suppressions")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_auto_rcpt")
        batch_op.drop_constraint(batch_op.f("fk_outbox_archived_message_id_messages"),
                                 type_="foreignkey")
        batch_op.drop_constraint(batch_op.f("fk_outbox_thread_id_threads"), type_="foreignkey")
        for column in ("archived_message_id", "status", "automatic", "rcpt", "template",
                       "rule", "thread_id"):
            batch_op.drop_column(column)
