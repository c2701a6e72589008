"""The periodic sweep catches what a missed webhook would leave: stale datasets and unchecked syncs."""

from __future__ import annotations

import sqlalchemy as sa

from handlers._deps import _Deps
from service.clock import FixedClock
from service.db import companies, create_engine, datasets, jobs
from service.tracking import SYNC_CHECK_AFTER_S, SYNC_KIND, PollPolicy, Tracker
from tests.conftest import make_settings

NOW = 1_800_000_000.0


async def test_companies_with_data_and_no_recent_sync_status_get_a_check(database_url: str) -> None:
    """Data in Codat and no sync status seen for a day → a check_sync job; checked recently → none."""
    settings = make_settings(database_url)
    engine = create_engine(settings)
    try:
        async with engine.begin() as conn:
            for company, checked in (("never", None), ("long-ago", NOW - SYNC_CHECK_AFTER_S - 1),
                                     ("recent", NOW - 60), ("no-data", None)):
                await conn.execute(sa.insert(companies).values(
                    id=company, paused=False, last_sync_checked_at=checked, created_at=NOW, updated_at=NOW))
                if company != "no-data":
                    await conn.execute(sa.insert(datasets).values(
                        id=f"ds-{company}", company_id=company, data_type="commerce-orders", status="Complete",
                        terminal=True, requested_at=NOW - 100, updated_at=NOW - 50, record_count=1))
        tracker = Tracker(_Deps(engine, FixedClock(NOW), settings, None, None), PollPolicy())
        await tracker.sweep(None, 1)  # type: ignore[arg-type]
        await tracker.sweep(None, 1)  # type: ignore[arg-type]  # a second sweep adds no duplicates
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.select(jobs.c.payload).where(jobs.c.kind == SYNC_KIND))).scalars().all()
    finally:
        await engine.dispose()
    assert sorted(p["company_id"] for p in rows) == ["long-ago", "never"]
