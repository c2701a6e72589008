"""Sync coverage: the range every sync covers, the record date it is matched on, late records told once.

`syncs` keeps each sync the relay knows of with its date range; `records.record_date` is the latest
version's `createdDate` (Unix seconds; NULL counts as covered, so rows stored before this migration keep
the previous behaviour); `records.late_told_at` marks a record staff were told reached Codat too late for
any `latest` sync; `companies.synced_through` is where the company's successful syncs reach. The partial
index `ix_records_unbooked` serves the sync's marking and the late-record query.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "syncs",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("company_id", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("range_start", sa.Double),
        sa.Column("range_finish", sa.Double, nullable=False),
        sa.Column("sync_utc", sa.Double),
        sa.Column("code", sa.Integer),
        sa.Column("requested_at", sa.Double, nullable=False),
        sa.Column("applied_at", sa.Double),
        sa.PrimaryKeyConstraint("id", name="pk_syncs"),
    )
    op.create_index("ix_syncs_company_id_sync_utc", "syncs", ["company_id", "sync_utc"])
    with op.batch_alter_table("companies") as batch:
        batch.add_column(sa.Column("synced_through", sa.Double))
    with op.batch_alter_table("records") as batch:
        batch.add_column(sa.Column("record_date", sa.Double))
        batch.add_column(sa.Column("late_told_at", sa.Double))
    unbooked = sa.text("synced_hash IS NULL")
    op.create_index("ix_records_unbooked", "records", ["company_id", "data_type", "record_date"],
                    postgresql_where=unbooked, sqlite_where=unbooked)  # fmt: skip


def downgrade() -> None:
    op.drop_index("ix_records_unbooked", table_name="records")
    with op.batch_alter_table("records") as batch:
        batch.drop_column("late_told_at")
        batch.drop_column("record_date")
    with op.batch_alter_table("companies") as batch:
        batch.drop_column("synced_through")
    op.drop_index("ix_syncs_company_id_sync_utc", table_name="syncs")
    op.drop_table("syncs")
