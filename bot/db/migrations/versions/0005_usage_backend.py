"""Which backend answered, on usage records.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the nullable `backend` column: the backend's name (NULL: before there were several)."""
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("backend", sa.String(length=128), nullable=True))


def downgrade() -> None:
    """Drop the `backend` column again."""
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("backend")
