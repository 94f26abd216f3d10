"""leases: one poller per mailbox across processes and machines; outbox claims by worker

``leases`` holds, per job that must run once at a time (``imap:<account>/<driver>``), the
process holding it and when its claim expires (``engine.leases``). ``outbox.claimed_by``
names the worker sending a row, so a worker starting elsewhere no longer takes back rows
that a live worker is sending.

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

import engine.store.models

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("acquired_at", engine.store.models.UTCDateTime(), nullable=False),
        sa.Column("expires_at", engine.store.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )
    op.add_column("outbox", sa.Column("claimed_by", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("claimed_by")
    op.drop_table("leases")
