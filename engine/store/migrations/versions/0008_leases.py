"""leases: one poller per mailbox across processes and machines

``leases`` holds, per job that must run once at a time (``imap:<account>/<driver>``), the
process holding it and when its claim expires (``engine.leases``).

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


def downgrade() -> None:
    op.drop_table("leases")
