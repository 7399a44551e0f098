"""scale-out: quota counters shared by replicas; PostgreSQL full text weighted like FTS5's

Revision ID: 0015
Revises: 0014
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# title weight A, body weight B: ts_rank's weights {D, C, B, A} = {0.1, 0.2, 0.25, 1.0} then
# rank a title word 4x a body word, as SQLite's bm25(title 4.0, body 1.0) does
DOCUMENT = (
    "setweight(to_tsvector('english', title), 'A') || setweight(to_tsvector('english', body), 'B')"
)


def upgrade() -> None:
    op.create_table(
        "quota_counters",
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("window_start", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("expires", sa.BigInteger(), nullable=False, index=True),
        sa.PrimaryKeyConstraint("key", "window_start"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_search_fts_tsv")
        op.execute(
            f"ALTER TABLE search_fts ADD COLUMN document tsvector GENERATED ALWAYS AS ({DOCUMENT}) "
            "STORED"
        )
        op.execute("CREATE INDEX ix_search_fts_document ON search_fts USING gin (document)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_search_fts_document")
        op.execute("ALTER TABLE search_fts DROP COLUMN document")
        op.execute(
            "CREATE INDEX ix_search_fts_tsv ON search_fts USING gin "
            "(to_tsvector('english', title || ' ' || body))"
        )
    op.drop_table("quota_counters")
