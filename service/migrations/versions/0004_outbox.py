"""The push outbox: companies, records (latest version of each), datasets, pushes and their records.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "companies",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("pause_reason", sa.String(64)),
        sa.Column("connection_id", sa.String(255)),
        sa.Column("connection_status", sa.String(64)),
        sa.Column("connection_deleted_at", sa.Double),
        sa.Column("last_sync_code", sa.Integer),
        sa.Column("last_sync_at", sa.Double),
        sa.Column("last_sync_success_at", sa.Double),
        sa.Column("last_sync_checked_at", sa.Double),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_companies"),
    )
    op.create_table(
        "records",
        sa.Column("company_id", sa.String(255), nullable=False),
        sa.Column("data_type", sa.String(32), nullable=False),
        sa.Column("record_id", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("content_hash", sa.String(32), nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("is_delete", sa.Boolean, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("inflight", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("push_id", sa.String(36)),
        sa.Column("pushed_version", sa.Integer),
        sa.Column("pushed_hash", sa.String(32)),
        sa.Column("dataset_id", sa.String(255)),
        sa.Column("accepted_version", sa.Integer),
        sa.Column("accepted_hash", sa.String(32)),
        sa.Column("accepted_at", sa.Double),
        sa.Column("synced_at", sa.Double),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("company_id", "data_type", "record_id", name="pk_records"),
    )
    op.create_index(
        "ix_records_pending",
        "records",
        ["company_id", "data_type", "record_id"],
        postgresql_where=sa.text("state = 'pending'"),
        sqlite_where=sa.text("state = 'pending'"),
    )
    op.create_index("ix_records_push_id", "records", ["push_id"])
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("company_id", sa.String(255), nullable=False),
        sa.Column("data_type", sa.String(32), nullable=False),
        sa.Column("push_id", sa.String(36)),
        sa.Column("record_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("error_message", sa.Text),
        sa.Column("terminal", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("requested_at", sa.Double, nullable=False),
        sa.Column("completed_at", sa.Double),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Column("polls", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_poll_at", sa.Double),
        sa.Column("repush_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("repush_of", sa.String(255)),
        sa.PrimaryKeyConstraint("id", name="pk_datasets"),
    )
    op.create_index("ix_datasets_company_id_requested_at", "datasets", ["company_id", "requested_at"])
    op.create_index("ix_datasets_terminal_next_poll_at", "datasets", ["terminal", "next_poll_at"])
    op.create_table(
        "pushes",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("company_id", sa.String(255), nullable=False),
        sa.Column("data_type", sa.String(32), nullable=False),
        sa.Column("dataset_id", sa.String(255)),
        sa.Column("record_count", sa.Integer, nullable=False),
        sa.Column("payload", sa.LargeBinary),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("started_at", sa.Double, nullable=False),
        sa.Column("finished_at", sa.Double),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_pushes"),
    )
    op.create_index(
        "ix_pushes_company_id_data_type_started_at", "pushes", ["company_id", "data_type", "started_at"]
    )
    op.create_table(
        "push_records",
        sa.Column("push_id", sa.String(36), nullable=False),
        sa.Column("record_id", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("push_id", "record_id", name="pk_push_records"),
    )


def downgrade() -> None:
    for table in ("push_records", "pushes", "datasets", "records", "companies"):
        op.drop_table(table)
