"""Connection event ordering per company, and re-push counts per record.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("companies") as batch:
        batch.add_column(sa.Column("connection_event_at", sa.Double))
    with op.batch_alter_table("records") as batch:
        batch.add_column(sa.Column("repush_count", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("records") as batch:
        batch.drop_column("repush_count")
    with op.batch_alter_table("companies") as batch:
        batch.drop_column("connection_event_at")
