"""provenance registry of watermarked images

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "provenance",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("payload", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("generation_id", sa.Integer(), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("prompt_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("payload"),
    )
    op.create_index("ix_provenance_generation_id", "provenance", ["generation_id"])
    op.create_index("ix_provenance_user_id", "provenance", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_provenance_user_id", table_name="provenance")
    op.drop_index("ix_provenance_generation_id", table_name="provenance")
    op.drop_table("provenance")
