"""Indexes over active jobs only, so a claim's cost follows the backlog, not the history of done jobs.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ACTIVE = "status IN ('waiting', 'running')"


def upgrade() -> None:
    # The claim walks active jobs in id order...
    op.create_index(
        "ix_jobs_active_id", "jobs", ["id"], postgresql_where=sa.text(ACTIVE), sqlite_where=sa.text(ACTIVE)
    )
    # ...and checks each one's key for an older or running job.
    op.create_index(
        "ix_jobs_active_lock_key",
        "jobs",
        ["lock_key", "id"],
        postgresql_where=sa.text(ACTIVE),
        sqlite_where=sa.text(ACTIVE),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_active_lock_key", "jobs")
    op.drop_index("ix_jobs_active_id", "jobs")
