"""one full-text table per collection (SQLite)

A single FTS5 table filtered on an unindexed ``collection`` column made a query visit the
matches of every collection before keeping its own: work that grew with the other
collections. One table per collection keeps each query to its own rows.

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLLECTIONS = ("listings", "posts", "reels")
TOKENIZE = "tokenize='porter unicode61 remove_diacritics 2'"


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return  # PostgreSQL keeps one table with a GIN index
    for collection in COLLECTIONS:
        op.execute(
            f"CREATE VIRTUAL TABLE search_fts_{collection} USING fts5(title, body, {TOKENIZE})"
        )
        op.execute(
            f"INSERT INTO search_fts_{collection} (rowid, title, body) "
            f"SELECT item_id, title, body FROM search_fts WHERE collection = '{collection}'"
        )
    op.execute("DROP TABLE search_fts")


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute(
        "CREATE VIRTUAL TABLE search_fts USING fts5("
        f"collection UNINDEXED, item_id UNINDEXED, title, body, {TOKENIZE})"
    )
    for index, collection in enumerate(COLLECTIONS):
        op.execute(
            "INSERT INTO search_fts (rowid, collection, item_id, title, body) "
            f"SELECT rowid * {len(COLLECTIONS)} + {index}, '{collection}', rowid, title, body "
            f"FROM search_fts_{collection}"
        )
        op.execute(f"DROP TABLE search_fts_{collection}")
