"""Room for what the receiver admits: 255-character dataset statuses and lock keys built from them.

The receiver keeps any field string up to 255 characters; a 64-character status column and a
255-character lock key ('company:' + a 255-character id) turned such deliveries into a 503 on
PostgreSQL on every retry — an alert Codat would finally drop.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.alter_column("dataset_status", type_=sa.String(255), existing_type=sa.String(64))
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("lock_key", type_=sa.String(512), existing_type=sa.String(255))
        batch.alter_column("queueing_lock", type_=sa.String(512), existing_type=sa.String(255))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("queueing_lock", type_=sa.String(255), existing_type=sa.String(512))
        batch.alter_column("lock_key", type_=sa.String(255), existing_type=sa.String(512))
    with op.batch_alter_table("alerts") as batch:
        batch.alter_column("dataset_status", type_=sa.String(64), existing_type=sa.String(255))
