"""When Codat was last asked about each dataset, so that alerts waiting about it share one answer.

A storm of alerts about the same datasets cost one Codat call per alert; an alert that arrived before
the dataset was last asked about is answered by that call (handlers/dataset_status.py).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("checked_at", sa.Double))


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("checked_at")
