"""Batch jobs that survive their process: parameters, a lease, takeovers; the `cancelled` status; retention index.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01 00:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
OLD_STATUSES = "status IN ('queued', 'running', 'succeeded', 'failed')"
NEW_STATUSES = "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')"


def upgrade() -> None:
    # batch mode: SQLite cannot alter a table's constraints in place (Alembic copies the table there).
    with op.batch_alter_table("batch_jobs") as batch:
        batch.add_column(sa.Column("parameters", sa.JSON(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("lease_owner", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", TIMESTAMP, nullable=True))
        batch.add_column(sa.Column("takeovers", sa.Integer(), nullable=False, server_default="0"))
        batch.drop_constraint(op.f("ck_batch_jobs_status_valid"), type_="check")
        batch.create_check_constraint("status_valid", NEW_STATUSES)
    # The server defaults only filled the existing rows; the ORM sets every value from now on.
    with op.batch_alter_table("batch_jobs") as batch:
        batch.alter_column("parameters", server_default=None)
        batch.alter_column("takeovers", server_default=None)
    op.create_index("ix_batch_jobs_finished_at", "batch_jobs", ["finished_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_batch_jobs_finished_at", table_name="batch_jobs")
    op.execute("UPDATE batch_jobs SET status = 'failed' WHERE status = 'cancelled'")
    with op.batch_alter_table("batch_jobs") as batch:
        batch.drop_constraint(op.f("ck_batch_jobs_status_valid"), type_="check")
        batch.create_check_constraint("status_valid", OLD_STATUSES)
        batch.drop_column("takeovers")
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
        batch.drop_column("parameters")
