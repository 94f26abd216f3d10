"""Alembic environment: runs migrations with Postdesk's own engine setup (WAL, pragmas)."""

from alembic import context
from sqlalchemy import text

from engine.store.database import make_engine
from engine.store.models import Base

config = context.config


def run_migrations() -> None:
    url = config.get_main_option("sqlalchemy.url")
    connectable = config.attributes.get("connection")
    if connectable is not None:
        _run(connectable)
        return
    engine = make_engine(url)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite ALTER needs batch mode
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # several roles starting at once on one database: one migrates, the others
            # wait here and then find the schema current (released at commit)
            connection.execute(text("SELECT pg_advisory_xact_lock(5837001)"))
        context.run_migrations()


run_migrations()
