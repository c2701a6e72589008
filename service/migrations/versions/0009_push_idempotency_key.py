"""The Idempotency-Key of a push's current attempt, apart from the push's id.

Codat caches every answer to a keyed write but a 429 (docs/using-the-api/write-data/idempotency.md):
after an answered 5xx the same key only replays that 5xx, so the next attempt needs a new key, recorded
before it is sent so a crash still resends the same key and body. NULL (rows written before this
revision) means the push's id, the key every push's first attempt uses.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pushes") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(36)))


def downgrade() -> None:
    with op.batch_alter_table("pushes") as batch:
        batch.drop_column("idempotency_key")
