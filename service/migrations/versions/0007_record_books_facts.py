"""The books' version of a record as a fact of its own, and which content went into which push.

`synced_hash`/`synced_version`: the version the accounting platform's books hold, set once by the
sync that took it; a later Complete dataset (`accepted_*`) never erases it. `push_records.content_hash`
keeps the content of each version sent, so a sync learnt of late still finds which version Codat held
when it started, even after a newer version has been accepted since. Existing rows that were synced
take their accepted version as the books' (what the previous code assumed).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("records") as batch:
        batch.add_column(sa.Column("synced_hash", sa.String(32)))
        batch.add_column(sa.Column("synced_version", sa.Integer))
    op.execute(
        "UPDATE records SET synced_hash = accepted_hash, synced_version = accepted_version "
        "WHERE synced_at IS NOT NULL"
    )
    with op.batch_alter_table("push_records") as batch:
        batch.add_column(sa.Column("content_hash", sa.String(32)))
    op.create_index("ix_push_records_record_id", "push_records", ["record_id"])


def downgrade() -> None:
    op.drop_index("ix_push_records_record_id", table_name="push_records")
    with op.batch_alter_table("push_records") as batch:
        batch.drop_column("content_hash")
    with op.batch_alter_table("records") as batch:
        batch.drop_column("synced_version")
        batch.drop_column("synced_hash")
