"""Retired model versions: when an admin retired a version (never served again) and why.

Revision ID: 0003
Revises: 0002
Create Date: 2025-03-01 00:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Plain ADD COLUMN (nullable, no default) on both backends: no table copy on SQLite, so the partial unique
    # index on the active version stays exactly as 0001 made it.
    op.add_column("models", sa.Column("retired_at", TIMESTAMP, nullable=True))
    op.add_column("models", sa.Column("retired_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    # Forgets the retirements: an older service has no way to honour them.
    op.drop_column("models", "retired_reason")
    op.drop_column("models", "retired_at")
