"""Alembic environment: the engine comes from ``townsquare.storage.db`` (config.attributes).

On PostgreSQL the migration runs under a transaction-scoped advisory lock, so replicas that
start together migrate one at a time: the first brings the schema to head, the others wait,
then find nothing left to do.
"""

from alembic import context
from sqlalchemy import text

from townsquare.storage import social_tables  # noqa: F401  (registers its tables)
from townsquare.storage.db import MIGRATION_LOCK
from townsquare.storage.tables import Base

config = context.config
engine = config.attributes["engine"]

with engine.begin() as connection:
    if connection.dialect.name == "postgresql":
        # held until this transaction ends; taken before alembic reads the current revision
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
