"""Retention and company purges: the audit table, the prune's indexes, and space given back.

`purges` keeps one line per purged company (who, when, counts) and nothing else of its data. The
retention prune (service/retention.py) scans old finished datasets and old pushes by time: two indexes.

SQLite gives freed pages back to the file system only in `auto_vacuum` mode, which must be set before
the first table exists or be followed by one VACUUM: done here once (on a large database it takes a
while and holds the write lock, as any migration may); afterwards the prune runs `PRAGMA
incremental_vacuum(N)` in small steps. PostgreSQL: the tables the prune deletes from are vacuumed after
1 % of their rows changed (plus 1,000), not the default 20 %, so a steady prune of a big table never
waits for a fifth of it to be dead before its space is reused.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
PRUNED_TABLES = ("alerts", "jobs", "pushes", "push_records", "datasets", "notifications", "notification_dedupe")
AUTOVACUUM = "autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000"
SQLITE_INCREMENTAL = 2  # `PRAGMA auto_vacuum` answers 0 none, 1 full, 2 incremental


def upgrade() -> None:
    op.create_table(
        "purges",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("company_id", sa.String(255), nullable=False),
        sa.Column("requested_by", sa.String(255), nullable=False),
        sa.Column("requested_at", sa.Double, nullable=False),
        sa.Column("finished_at", sa.Double, nullable=False),
        sa.Column("counts", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_purges"),
    )
    op.create_index("ix_purges_company_id", "purges", ["company_id"])
    op.create_index("ix_datasets_terminal_updated_at", "datasets", ["terminal", "updated_at"])
    op.create_index("ix_pushes_started_at", "pushes", ["started_at"])
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for table in PRUNED_TABLES:
            op.execute(f"ALTER TABLE {table} SET ({AUTOVACUUM})")
    elif bind.exec_driver_sql("PRAGMA auto_vacuum").scalar() != SQLITE_INCREMENTAL:
        with op.get_context().autocommit_block():  # VACUUM cannot run inside a transaction
            op.execute("PRAGMA auto_vacuum = INCREMENTAL")
            # VACUUM may renumber the rowids of a table without an INTEGER PRIMARY KEY (`alerts`: its key
            # is text). Alert search's FTS5 index (migration 0013) is keyed by `alert_texts.id`, an INTEGER
            # PRIMARY KEY, which VACUUM keeps: nothing to rebuild (test_retention.py checks it).
            op.execute("VACUUM")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in PRUNED_TABLES:
            op.execute(f"ALTER TABLE {table} RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold)")
    op.drop_index("ix_pushes_started_at", table_name="pushes")
    op.drop_index("ix_datasets_terminal_updated_at", table_name="datasets")
    op.drop_index("ix_purges_company_id", table_name="purges")
    op.drop_table("purges")
