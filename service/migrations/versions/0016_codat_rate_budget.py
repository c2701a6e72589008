"""Codat's rate-limit budget shared by every process: per-company request slots, the daily quota, 429 waits.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "codat_slots",
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("slot", sa.Integer, nullable=False),
        sa.Column("holder", sa.String(64)),
        sa.Column("expires_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("key", "slot", name="pk_codat_slots"),
    )
    quota = op.create_table(
        "codat_quota",
        sa.Column("id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("daily_limit", sa.Integer),
        sa.Column("remaining", sa.Integer),
        sa.Column("reset_at", sa.Double),
        sa.Column("updated_at", sa.Double),
        sa.Column("probe_until", sa.Double),
        sa.Column("routine_after", sa.Double),
        sa.PrimaryKeyConstraint("id", name="pk_codat_quota"),
    )
    op.bulk_insert(quota, [{"id": 1}])  # the one row every process updates; nothing known yet
    op.create_table(
        "codat_company_waits",
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("not_before", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_codat_company_waits"),
    )


def downgrade() -> None:
    op.drop_table("codat_company_waits")
    op.drop_table("codat_quota")
    op.drop_table("codat_slots")
