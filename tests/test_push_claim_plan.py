"""A push's claim reads the rows it moves, not every pending record of the company, whatever the statistics."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import records
from service.record_states import claim
from tests.conftest import engine_for

COMPANY, DATA_TYPE = "C1", "commerce-orders"
PENDING = 3_000


@pytest.fixture
async def engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    async with engine_for(postgres_url) as created:
        yield created


def _scans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan] if "Scan" in plan["Node Type"] and plan.get("Relation Name") == "records" else []
    for child in plan.get("Plans", []):
        found += _scans(child)
    return found


async def test_the_claim_reads_its_range_of_ids_even_when_statistics_are_stale(engine: AsyncEngine) -> None:
    """Statistics taken while the table was empty (a bulk intake autovacuum has not analysed yet): the
    claim's UPDATE still finds its rows through an index condition on the record id. Before, PostgreSQL
    planned a scan of every pending record of the company with the ids as a filter (`Rows Removed by
    Filter: 730000` a claim, mid-way through bench_push's million records: a push took over 20 minutes)."""
    async with engine.begin() as conn:
        await conn.execute(sa.text("ANALYZE records"))  # while empty: what a bulk intake leaves behind
        await conn.execute(records.insert(), [
            {"company_id": COMPANY, "data_type": DATA_TYPE, "record_id": f"ord-{n:08d}", "version": 1,
             "content_hash": "h", "body": b"{}", "is_delete": False, "state": "pending", "inflight": False,
             "created_at": 1.0, "updated_at": 1.0} for n in range(PENDING)])  # fmt: skip
    statements: list[tuple[str, Any]] = []

    def keep(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if statement.startswith("UPDATE records"):
            statements.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", keep)
    async with engine.begin() as conn:
        claimed, last = await claim(conn, COMPANY, DATA_TYPE, "push-1", after="ord-00001000", limit=100, now=2.0)
        ((statement, parameters),) = statements
        plan = (await conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters)).scalar_one()
    assert [c.record_id for c in claimed] == [f"ord-{n:08d}" for n in range(1001, 1101)] and last == "ord-00001100"
    scans = _scans((json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"])
    assert scans and all("record_id" in scan.get("Index Cond", "") for scan in scans), json.dumps(plan)[:2000]
