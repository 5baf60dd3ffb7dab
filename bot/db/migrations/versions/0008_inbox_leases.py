"""Webhook mode: inbox updates are claimed by one replica at a time, in order within a chat.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 06:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the chat an update is ordered in and the lease of the replica handling it."""
    with op.batch_alter_table("inbox") as batch:
        batch.add_column(sa.Column("chat_key", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("lease_owner", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
    op.create_index(op.f("ix_inbox_chat_key_update_id"), "inbox", ["chat_key", "update_id"])


def downgrade() -> None:
    """Drop the ordering and lease columns (updates still waiting stay)."""
    op.drop_index(op.f("ix_inbox_chat_key_update_id"), table_name="inbox")
    with op.batch_alter_table("inbox") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("lease_owner")
        batch.drop_column("chat_key")
