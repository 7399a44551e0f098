"""the vector change log numbered in commit order (indexes follow it by number)

Revision ID: 0020
Revises: 0019
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "log_counters",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("value", sa.Integer(), nullable=False),
    )
    with op.batch_alter_table("vector_items") as batch:
        batch.add_column(sa.Column("seq", sa.Integer(), nullable=True))
    op.execute("UPDATE vector_items SET seq = id")  # the rows already stored keep their order
    op.execute(
        "INSERT INTO log_counters (name, value) "
        "SELECT 'vector_items', COALESCE(MAX(seq), 0) FROM vector_items"
    )
    with op.batch_alter_table("vector_items") as batch:
        batch.alter_column("seq", existing_type=sa.Integer(), nullable=False)
        batch.create_unique_constraint("uq_vector_items_seq", ["seq"])


def downgrade() -> None:
    with op.batch_alter_table("vector_items") as batch:
        batch.drop_constraint("uq_vector_items_seq", type_="unique")
        batch.drop_column("seq")
    op.drop_table("log_counters")
