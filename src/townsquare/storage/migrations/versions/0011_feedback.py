"""feedback on generations; the prompt and raw answer of each generation; training opt-out;
the group of a moderation decision

Revision ID: 0011
Revises: 0010
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        batch.add_column(sa.Column("prompt", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("answer", sa.Text(), nullable=True))
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("training_opt_out", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("safety_events") as batch:
        batch.add_column(sa.Column("group_id", sa.Integer(), nullable=True))
        batch.create_index("ix_safety_events_group_id", ["group_id"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "generation_id",
            sa.Integer(),
            sa.ForeignKey("generations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("rating", sa.String(8), nullable=False),
        sa.Column("reason", sa.String(32), nullable=True),
        sa.Column("correction", sa.Text(), nullable=True),
        sa.Column("source", sa.String(16), nullable=False, server_default="member"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.UniqueConstraint("generation_id", "user_id", name="uq_feedback_generation_user"),
    )


def downgrade() -> None:
    op.drop_table("feedback")
    with op.batch_alter_table("safety_events") as batch:
        batch.drop_index("ix_safety_events_group_id")
        batch.drop_column("group_id")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("training_opt_out")
    with op.batch_alter_table("generations") as batch:
        batch.drop_column("answer")
        batch.drop_column("prompt")
