"""console users: roles, breaks, account assignment, queue access, claims, priority

``users.role`` is agent|supervisor|admin (``is_admin`` users become admins; ``is_admin`` stays,
kept equal to role == admin). ``user_accounts`` lists the accounts an agent sees;
``queue_access`` the (account, classification) queues it may pull from: no row for an account
means all of its queues, "" is the unclassified queue. ``messages.priority`` (higher first,
then oldest received) and ``claimed_at`` serve "get next"; ``history.user_id`` names the
console user behind a row (None: the machine).

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

import engine.store.models

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

QUEUED = sa.text("state = 'queued'")


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("role", sa.String(length=20), nullable=False,
                                      server_default="agent"))
        batch_op.add_column(sa.Column("on_break", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
    op.execute(sa.text("UPDATE users SET role = 'admin' WHERE is_admin"))
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("priority", sa.Integer(), nullable=False,
                                      server_default="0"))
        batch_op.add_column(sa.Column("claimed_at", engine.store.models.UTCDateTime(),
                                      nullable=True))
        batch_op.create_index("ix_messages_queued",
                              ["account_id", "classification", "priority", "received_at"],
                              sqlite_where=QUEUED, postgresql_where=QUEUED)
    with op.batch_alter_table("history", schema=None) as batch_op:
        batch_op.add_column(sa.Column("user_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(batch_op.f("fk_history_user_id_users"), "users",
                                    ["user_id"], ["id"])
        batch_op.create_index("ix_history_user_created", ["user_id", "created_at"])
    op.create_table(
        "user_accounts",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"],
                                name=op.f("fk_user_accounts_user_id_users")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"],
                                name=op.f("fk_user_accounts_account_id_accounts")),
        sa.PrimaryKeyConstraint("user_id", "account_id", name=op.f("pk_user_accounts")),
        sqlite_with_rowid=False,
    )
    op.create_index(op.f("ix_user_accounts_account_id"), "user_accounts", ["account_id"])
    op.create_table(
        "queue_access",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("classification", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"],
                                name=op.f("fk_queue_access_user_id_users")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"],
                                name=op.f("fk_queue_access_account_id_accounts")),
        sa.PrimaryKeyConstraint("user_id", "account_id", "classification",
                                name=op.f("pk_queue_access")),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("queue_access")
    op.drop_index(op.f("ix_user_accounts_account_id"), table_name="user_accounts")
    op.drop_table("user_accounts")
    with op.batch_alter_table("history", schema=None) as batch_op:
        batch_op.drop_index("ix_history_user_created")
        batch_op.drop_constraint(batch_op.f("fk_history_user_id_users"), type_="foreignkey")
        batch_op.drop_column("user_id")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_queued")
        batch_op.drop_column("claimed_at")
        batch_op.drop_column("priority")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("on_break")
        batch_op.drop_column("role")
