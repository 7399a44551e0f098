"""durable background work: a jobs table with leases; a reply answers one mention at most

Revision ID: 0022
Revises: 0021
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("run_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("kind", "key", name="uq_jobs_kind_key"),
    )
    op.create_index("ix_jobs_due", "jobs", ["kind", "state", "run_after"])
    with op.batch_alter_table("group_messages") as batch:
        batch.add_column(sa.Column("answers_id", sa.Integer(), nullable=True))
        batch.create_unique_constraint("uq_group_messages_answers", ["answers_id"])


def downgrade() -> None:
    with op.batch_alter_table("group_messages") as batch:
        batch.drop_constraint("uq_group_messages_answers", type_="unique")
        batch.drop_column("answers_id")
    op.drop_index("ix_jobs_due", "jobs")
    op.drop_table("jobs")
