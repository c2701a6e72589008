"""Alembic migrations build exactly the schema `service/db.py` describes, on both backends."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from service.alert_index import SQLITE_FTS
from service.alert_search import PG_TRGM_INDEX
from service.db import create_engine, metadata
from service.migrate import head_revision
from tests.conftest import make_settings


def _outside_metadata(obj, name, type_, reflected, compare_to) -> bool:  # type: ignore[no-untyped-def]
    """Alert search's text index lives outside the metadata (migration 0013): an FTS5 table and its
    shadow tables on SQLite, a trigram GIN index on `alert_texts.text` on PostgreSQL. test_alert_search.py
    checks them."""
    if type_ == "table" and name is not None and name.startswith(SQLITE_FTS):
        return False
    return not (type_ == "index" and name == PG_TRGM_INDEX)


def _diff(connection):  # type: ignore[no-untyped-def]
    context = MigrationContext.configure(connection, opts={"compare_type": True, "include_object": _outside_metadata})
    return compare_metadata(context, metadata), context.get_current_revision()


async def test_migrated_schema_matches_the_table_definitions(database_url: str) -> None:
    """No table, column, index or type differs between the migrations and the code; we are at head."""
    engine = create_engine(make_settings(database_url))
    try:
        async with engine.connect() as conn:
            diff, revision = await conn.run_sync(_diff)
    finally:
        await engine.dispose()
    assert revision == head_revision()
    assert diff == []
