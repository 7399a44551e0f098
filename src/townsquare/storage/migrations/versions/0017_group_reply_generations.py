"""group chats: the assistant's reply points at its generation (the asker's thumbs)

Revision ID: 0017
Revises: 0016
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("group_messages") as batch:
        batch.add_column(sa.Column("generation_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("group_messages") as batch:
        batch.drop_column("generation_id")
