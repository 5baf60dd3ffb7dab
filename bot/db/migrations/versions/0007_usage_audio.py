"""Seconds of audio on usage records, and transcription records.

Voice messages are transcribed by the backend's /audio/transcriptions, priced per minute of
audio: each transcription is a usage record of kind 'transcription' whose `audio_seconds` is
the length of what was transcribed (and whose token and image counts are 0).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 12:00:00
"""

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KIND = "ck_usage_records_kind"


def _created_at() -> sa.Column[datetime]:
    """`created_at` as the models define it, for SQLite's rebuild of the table.

    The rebuild copies the table from its reflection, which reads this default back as a string
    and writes it as `DEFAULT (CURRENT_TIMESTAMP)`; restated, it is written as the models do.
    """
    return sa.Column(
        "created_at",
        sa.DateTime(timezone=True),
        server_default=sa.text("CURRENT_TIMESTAMP"),
        nullable=False,
    )


def upgrade() -> None:
    """Add `audio_seconds` (0 on every existing row) and admit the kind 'transcription'.

    On SQLite the table is copied with its rows, indexes and other constraints (Alembic's batch
    mode); on PostgreSQL the constraint is replaced in place.
    """
    with op.batch_alter_table("usage_records", reflect_args=(_created_at(),)) as batch:
        batch.add_column(
            sa.Column("audio_seconds", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch.drop_constraint(op.f(KIND), type_="check")
        batch.create_check_constraint(
            op.f(KIND), sa.text("kind IN ('chat', 'image', 'transcription')")
        )


def downgrade() -> None:
    """Delete the transcription records, then drop `audio_seconds` and the kind again.

    The older schema has no place for them: its kinds are 'chat' and 'image', and without
    `audio_seconds` their cost is gone. Deleting them takes their cost out of the reports and
    budgets of the older bot, which could not count it anyway.
    """
    usage = sa.table("usage_records", sa.column("kind", sa.String()))
    op.execute(usage.delete().where(usage.c.kind == "transcription"))
    with op.batch_alter_table("usage_records", reflect_args=(_created_at(),)) as batch:
        batch.drop_constraint(op.f(KIND), type_="check")
        batch.create_check_constraint(op.f(KIND), sa.text("kind IN ('chat', 'image')"))
        batch.drop_column("audio_seconds")
