"""templates stored in the database

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

import engine.store.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "templates",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("updated_at", engine.store.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_templates")),
    )


def downgrade() -> None:
    op.drop_table("templates")
