"""Alert search (issue 17): exact filters by dataset and event type, and text in the body.

Company and delivery id already have their indexes (`ix_alerts_company_id_received_at`, the primary key).
The text search is a substring search (a dataset or delivery id, a record id, an error message). Its
index is kept OFF the webhook's acknowledgement path: nothing here adds work to an insert into `alerts`.
The indexer job (service/alert_index.py) copies alerts into `alert_texts` in batches after they were
acknowledged, from a watermark (`alert_text_watermark`); search reads the indexed part and scans the few
alerts after the watermark.

- PostgreSQL: `alert_texts.text` is `encode(body, 'escape')` (IMMUTABLE, cannot fail on any bytes, unlike
  `convert_from`), under a trigram GIN index (pg_trgm). When the extension cannot be created (a managed
  database that does not allow it), the migration goes on without the index and search scans (README:
  Alert search). A deleted alert takes its row with it (ON DELETE CASCADE).
- SQLite: a contentless FTS5 table with the trigram tokenizer (`alert_texts_fts`, rowid = `alert_texts.id`,
  an INTEGER PRIMARY KEY that VACUUM keeps). One trigger, BEFORE DELETE on `alerts` (retention, purge: never
  the receiver), takes the alert's text out of it (a contentless table is told the deleted values) and its
  `alert_texts` row.

Existing alerts are indexed by the job, in batches, from the watermark's start: no long migration.

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
PG_TRGM_INDEX = "ix_alert_texts_text_trgm"
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_index("ix_alerts_dataset_id_received_at", "alerts", ["dataset_id", "received_at"])
    op.create_index("ix_alerts_type_received_at", "alerts", ["type", "received_at"])
    op.create_table(
        "alert_texts",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("alert_id", sa.String(255), nullable=False),
        sa.Column("received_at", sa.Double, nullable=False),
        sa.Column("text", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_alert_texts"),
        sa.ForeignKeyConstraint(["alert_id"], ["alerts.id"], ondelete="CASCADE"),
        sa.UniqueConstraint("alert_id", name="uq_alert_texts_alert_id"),
    )
    op.create_table(
        "alert_text_watermark",
        sa.Column("id", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("received_at", sa.Double, nullable=False),
        sa.Column("alert_id", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_alert_text_watermark"),
    )
    op.execute("INSERT INTO alert_text_watermark (id, received_at, alert_id) VALUES (1, 0, '')")
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
    bind.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS {PG_TRGM_INDEX} ON alert_texts USING gin (text gin_trgm_ops)")


def _sqlite() -> None:
    op.execute("CREATE VIRTUAL TABLE alert_texts_fts USING fts5(text, content='', tokenize='trigram')")
    op.execute("""CREATE TRIGGER alert_texts_delete BEFORE DELETE ON alerts BEGIN
        INSERT INTO alert_texts_fts(alert_texts_fts, rowid, text)
            SELECT 'delete', alert_texts.id, old.body FROM alert_texts WHERE alert_texts.alert_id = old.id;
        DELETE FROM alert_texts WHERE alert_texts.alert_id = old.id;
    END""")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS alert_texts_delete")
        op.execute("DROP TABLE IF EXISTS alert_texts_fts")
    op.drop_table("alert_text_watermark")
    op.drop_table("alert_texts")  # PostgreSQL: its GIN index with it
    op.drop_index("ix_alerts_type_received_at", "alerts")
    op.drop_index("ix_alerts_dataset_id_received_at", "alerts")
