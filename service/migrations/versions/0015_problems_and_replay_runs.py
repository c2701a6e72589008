"""Problems that open and resolve (issue 17), and bulk replay runs with their cursor.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

OPEN_PROBLEM = sa.text("resolved_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "problems",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("company_id", sa.String(255)),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("data_type", sa.String(64)),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("opened_at", sa.Double, nullable=False),
        sa.Column("last_seen_at", sa.Double, nullable=False),
        sa.Column("acknowledged_at", sa.Double),
        sa.Column("acknowledged_by", sa.String(255)),
        sa.Column("resolved_at", sa.Double),
        sa.Column("count", sa.Integer, nullable=False, server_default="1"),
        sa.PrimaryKeyConstraint("id", name="pk_problems"),
    )
    op.create_index("ix_problems_open_key", "problems", ["key"], unique=True,
                    postgresql_where=OPEN_PROBLEM, sqlite_where=OPEN_PROBLEM)  # fmt: skip
    op.create_index("ix_problems_key_resolved_at", "problems", ["key", "resolved_at"])
    op.create_index("ix_problems_company_id_kind", "problems", ["company_id", "kind"])
    op.create_index("ix_problems_kind_subject", "problems", ["kind", "subject"])
    op.create_index("ix_problems_opened_at", "problems", ["opened_at"])
    op.create_table(
        "replay_runs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("target", sa.String(16), nullable=False),
        sa.Column("filters", sa.JSON, nullable=False),
        sa.Column("cursor_at", sa.Double),
        sa.Column("cursor_id", sa.String(255)),
        sa.Column("done", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Column("finished_at", sa.Double),
        sa.PrimaryKeyConstraint("id", name="pk_replay_runs"),
    )
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(sa.Column("problem_id", sa.String(32)))
        batch.add_column(sa.Column("event", sa.String(16), nullable=False, server_default="opened"))


def downgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.drop_column("event")
        batch.drop_column("problem_id")
    op.drop_table("replay_runs")
    op.drop_table("problems")
