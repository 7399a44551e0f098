"""Storage: SQLAlchemy tables, Alembic migrations, the engine."""
