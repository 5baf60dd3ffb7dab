"""Usage counts within [0, ten million]: repair rows a backend's absurd figures wrote.

A backend once reported `prompt_tokens` = 2**63 - 1 in a stream's usage; stored as is, it made
every SUM over usage overflow, so /usage and the budget checks failed for good. The bot now
refuses such figures and the repository clamps what it stores; this repairs older rows.

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The ceiling as of this revision (bot.db.repositories.MAX_USAGE_COUNT); written out rather than
# imported, so that a later change to the constant cannot change what this migration did.
MAX_COUNT = 10_000_000
COUNT_COLUMNS = ("prompt_tokens", "completion_tokens", "images")


def upgrade() -> None:
    """Clamp the token and image counts: negatives to 0, figures above the ceiling to it."""
    usage = sa.table("usage_records", *(sa.column(name, sa.Integer()) for name in COUNT_COLUMNS))
    columns = [usage.c[name] for name in COUNT_COLUMNS]
    # One UPDATE, so the table (no index covers these columns) is scanned once; the same
    # portable CASE on SQLite and PostgreSQL.
    op.execute(
        usage.update()
        .where(sa.or_(*(sa.not_(column.between(0, MAX_COUNT)) for column in columns)))
        .values(
            {
                column.name: sa.case(
                    (column < 0, 0), (column > MAX_COUNT, MAX_COUNT), else_=column
                )
                for column in columns
            }
        )
    )


def downgrade() -> None:
    """Nothing to undo: the absurd figures were garbage, and revision 0002 accepts the clamped.

    The original values cannot be restored (they were overwritten), and putting back figures
    that overflow every sum would only break the older schema's queries again.
    """
