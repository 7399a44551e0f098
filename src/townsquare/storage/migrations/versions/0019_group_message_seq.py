"""group chats: messages numbered per group in commit order (event streams resume by it)

Revision ID: 0019
Revises: 0018
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("groups") as batch:
        batch.add_column(sa.Column("message_seq", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("group_messages") as batch:
        batch.add_column(sa.Column("seq", sa.Integer(), nullable=True))
    # the messages already stored keep their order: numbered by id within each group
    op.execute(
        "UPDATE group_messages SET seq = (SELECT r.n FROM (SELECT id, ROW_NUMBER() OVER "
        "(PARTITION BY group_id ORDER BY id) AS n FROM group_messages) AS r "
        "WHERE r.id = group_messages.id)"
    )
    op.execute(
        "UPDATE groups SET message_seq = (SELECT COALESCE(MAX(m.seq), 0) FROM group_messages "
        "AS m WHERE m.group_id = groups.id)"
    )
    with op.batch_alter_table("group_messages") as batch:
        batch.alter_column("seq", existing_type=sa.Integer(), nullable=False)
        batch.create_unique_constraint("uq_group_messages_seq", ["group_id", "seq"])


def downgrade() -> None:
    with op.batch_alter_table("group_messages") as batch:
        batch.drop_constraint("uq_group_messages_seq", type_="unique")
        batch.drop_column("seq")
    with op.batch_alter_table("groups") as batch:
        batch.drop_column("message_seq")
