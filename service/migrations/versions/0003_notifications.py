"""Staff notifications and their deduplication windows.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notifications",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("company_id", sa.String(255)),
        sa.Column("data_type", sa.String(64)),
        sa.Column("dataset_id", sa.String(255)),
        sa.Column("dedupe_key", sa.String(255), nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("details", sa.JSON, nullable=False),
        sa.Column("occurred_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_notifications"),
    )
    op.create_index("ix_notifications_company_id_occurred_at", "notifications", ["company_id", "occurred_at"])
    op.create_index("ix_notifications_occurred_at", "notifications", ["occurred_at"])
    op.create_table(
        "notification_dedupe",
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("last_sent_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_notification_dedupe"),
    )


def downgrade() -> None:
    op.drop_table("notification_dedupe")
    op.drop_table("notifications")
