"""Each company's Codat name and sync schedule, and when the relay expects its next sync.

Sync for Commerce's `GET /config/companies/{companyId}/sync/commerce` (`Configuration.schedule`) says when
Codat syncs a company; the relay pushes before then (service/schedules.py). `at_risk_sync_at` is the sync
staff were last told `sync_at_risk` about, so they hear of it once per sync.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

COLUMNS = (
    ("name", sa.String(255)),
    ("sync_frequency", sa.String(16)),
    ("sync_hour", sa.Integer),
    ("sync_time_zone", sa.String(64)),
    ("sync_start_date", sa.Double),
    ("schedule_fetched_at", sa.Double),
    ("schedule_error", sa.Text),
    ("next_sync_at", sa.Double),
    ("at_risk_sync_at", sa.Double),
)


def upgrade() -> None:
    with op.batch_alter_table("companies") as batch:
        for name, type_ in COLUMNS:
            batch.add_column(sa.Column(name, type_))


def downgrade() -> None:
    with op.batch_alter_table("companies") as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
