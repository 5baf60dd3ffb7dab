"""Image size on usage records.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the nullable `size` column: the image size asked for (or received)."""
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("size", sa.String(length=32), nullable=True))


def downgrade() -> None:
    """Drop the `size` column again."""
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("size")
