"""Alert search (issue 17): exact filters by dataset and event type, and text in the body.

Company and delivery id already have their indexes (`ix_alerts_company_id_received_at`, the primary key).
The text search is a substring search (a dataset or delivery id, a record id, an error message), so:

- PostgreSQL: a trigram GIN index (pg_trgm) over the body as text. The text is `encode(body, 'escape')`,
  which is IMMUTABLE and cannot fail on any bytes (`convert_from` is only STABLE, and raises on bytes that
  are not UTF-8 — an index expression that raises would fail the webhook's insert). When the extension
  cannot be created (a managed database that does not allow it), the migration goes on without the index
  and search scans (README: Alert search).
- SQLite: an FTS5 table with the trigram tokenizer over `alerts.body` (external content: the text is not
  stored twice), kept by triggers, so every writer of `alerts` — the webhook's raw batch insert included —
  keeps it without knowing it.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# Spelled here, not imported: a migration must keep building what it built when later code changes.
PG_TRGM_INDEX = "ix_alerts_body_trgm"


def upgrade() -> None:
    op.create_index("ix_alerts_dataset_id_received_at", "alerts", ["dataset_id", "received_at"])
    op.create_index("ix_alerts_type_received_at", "alerts", ["type", "received_at"])
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        _postgresql(bind)
    else:
        _sqlite()


def _postgresql(bind: sa.Connection) -> None:
    try:
        with bind.begin_nested():  # a savepoint: a refused CREATE EXTENSION must not end the migration
            bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except sa.exc.DBAPIError:
        return  # no trigram index: search still answers, by scanning (README: Alert search)
    # IF NOT EXISTS: an operator may have built it beforehand with CREATE INDEX CONCURRENTLY (README).
    bind.exec_driver_sql(
        f"CREATE INDEX IF NOT EXISTS {PG_TRGM_INDEX} ON alerts USING gin (encode(body, 'escape') gin_trgm_ops)"
    )


def _sqlite() -> None:
    op.execute("CREATE VIRTUAL TABLE alerts_fts USING fts5(body, content='alerts', tokenize='trigram')")
    op.execute("""CREATE TRIGGER alerts_fts_insert AFTER INSERT ON alerts BEGIN
        INSERT INTO alerts_fts(rowid, body) VALUES (new.rowid, new.body);
    END""")
    op.execute("""CREATE TRIGGER alerts_fts_delete AFTER DELETE ON alerts BEGIN
        INSERT INTO alerts_fts(alerts_fts, rowid, body) VALUES ('delete', old.rowid, old.body);
    END""")
    op.execute("""CREATE TRIGGER alerts_fts_update AFTER UPDATE OF body ON alerts BEGIN
        INSERT INTO alerts_fts(alerts_fts, rowid, body) VALUES ('delete', old.rowid, old.body);
        INSERT INTO alerts_fts(rowid, body) VALUES (new.rowid, new.body);
    END""")
    op.execute("INSERT INTO alerts_fts(alerts_fts) VALUES ('rebuild')")  # the alerts already stored


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        bind.exec_driver_sql(f"DROP INDEX IF EXISTS {PG_TRGM_INDEX}")
    else:
        for trigger in ("alerts_fts_insert", "alerts_fts_delete", "alerts_fts_update"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS alerts_fts")
    op.drop_index("ix_alerts_type_received_at", "alerts")
    op.drop_index("ix_alerts_dataset_id_received_at", "alerts")
