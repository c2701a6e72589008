"""The inbox of alerts and the job queue.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("type", sa.String(255), nullable=False),
        sa.Column("shape", sa.String(16), nullable=False),
        sa.Column("company_id", sa.String(255)),
        sa.Column("connection_id", sa.String(255)),
        sa.Column("dataset_id", sa.String(255)),
        sa.Column("dataset_status", sa.String(64)),
        sa.Column("data_types", sa.JSON, nullable=False),
        sa.Column("generated_at", sa.Double),
        sa.Column("received_at", sa.Double, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_alerts"),
    )
    op.create_index("ix_alerts_received_at", "alerts", ["received_at"])
    op.create_index("ix_alerts_company_id_received_at", "alerts", ["company_id", "received_at"])
    op.create_index("ix_alerts_status_received_at", "alerts", ["status", "received_at"])

    op.create_table(
        "jobs",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("lock_key", sa.String(255)),
        sa.Column("queueing_lock", sa.String(255)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("run_at", sa.Double, nullable=False),
        sa.Column("lease_expires_at", sa.Double),
        sa.Column("worker_id", sa.String(128)),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("started_at", sa.Double),
        sa.Column("finished_at", sa.Double),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
    )
    op.create_index("ix_jobs_status_run_at", "jobs", ["status", "run_at"])
    op.create_index("ix_jobs_lock_key_id", "jobs", ["lock_key", "id"])
    op.create_index(
        "uq_jobs_waiting_queueing_lock",
        "jobs",
        ["queueing_lock"],
        unique=True,
        postgresql_where=sa.text("status = 'waiting'"),
        sqlite_where=sa.text("status = 'waiting'"),
    )


def downgrade() -> None:
    op.drop_table("jobs")
    op.drop_table("alerts")
