"""trust and privacy: web sessions tied to the key that opened them; generations record whose
words their prompt holds; corrections carry their moderation verdict

Revision ID: 0018
Revises: 0017
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # sessions opened before this cannot be tied to a key: they end (members log in again)
    op.execute("DELETE FROM web_sessions")
    with op.batch_alter_table("web_sessions") as batch:
        batch.add_column(sa.Column("api_key_id", sa.Integer(), nullable=True))
        batch.create_index("ix_web_sessions_api_key_id", ["api_key_id"])
        batch.create_foreign_key(
            "fk_web_sessions_api_key_id", "api_keys", ["api_key_id"], ["id"], ondelete="CASCADE"
        )
    op.create_table(
        "generation_contributors",
        sa.Column(
            "generation_id",
            sa.Integer(),
            sa.ForeignKey("generations.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("user_id", sa.Integer(), primary_key=True),
    )
    op.create_index("ix_generation_contributors_user_id", "generation_contributors", ["user_id"])
    with op.batch_alter_table("feedback") as batch:
        batch.add_column(
            sa.Column("correction_status", sa.String(16), nullable=False, server_default="ok")
        )
        batch.add_column(
            sa.Column("correction_hazards", sa.String(64), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("correction_hazards")
        batch.drop_column("correction_status")
    op.drop_index("ix_generation_contributors_user_id", "generation_contributors")
    op.drop_table("generation_contributors")
    with op.batch_alter_table("web_sessions") as batch:
        batch.drop_constraint("fk_web_sessions_api_key_id", type_="foreignkey")
        batch.drop_index("ix_web_sessions_api_key_id")
        batch.drop_column("api_key_id")
