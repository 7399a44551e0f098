"""Alembic environment: the engine comes from ``townsquare.storage.db`` (config.attributes)."""

from alembic import context

from townsquare.storage import social_tables  # noqa: F401  (registers its tables)
from townsquare.storage.tables import Base

config = context.config
engine = config.attributes["engine"]

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
