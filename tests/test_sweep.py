"""The periodic sweep catches what a missed webhook would leave: stale datasets and unchecked syncs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service.clock import FixedClock
from service.db import companies, create_engine, datasets, jobs, records
from service.outbox import store_records
from service.pusher import Pusher
from service.queue import Job
from service.records import validate_records
from service.repush import RepushPolicy
from service.runtime import build_runtime
from service.settings import Settings
from service.tracking import OVERDUE_S, POLL_KIND, SYNC_CHECK_AFTER_S, SYNC_KIND, PollPolicy, Tracker
from tests.conftest import make_settings
from tests.queue_helpers import leased_job

NOW = 1_800_000_000.0


@dataclass(frozen=True)
class _Deps:
    """What the sweep touches: storage, a clock and settings (no Codat, no notifier)."""

    engine: AsyncEngine
    clock: FixedClock
    settings: Settings
    codat: Any = None
    notifier: Any = None
    tracker: Any = None


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
        tracker = Tracker(_Deps(engine, FixedClock(NOW), settings), PollPolicy(), RepushPolicy())
        await tracker.sweep(None, 1)  # type: ignore[arg-type]
        await tracker.sweep(None, 1)  # type: ignore[arg-type]  # a second sweep adds no duplicates
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.select(jobs.c.payload).where(jobs.c.kind == SYNC_KIND))).scalars().all()
    finally:
        await engine.dispose()
    assert sorted(p["company_id"] for p in rows) == ["long-ago", "never"]


async def test_the_sweep_polls_overdue_and_exhausted_datasets_only(database_url: str) -> None:
    """The sweep polls unfinished datasets whose poll is over a minute late or used up, once each, and no others."""
    settings = make_settings(database_url)
    engine = create_engine(settings)
    cases = {"lost": NOW - OVERDUE_S - 1, "exhausted": None, "due-soon": NOW + 10, "just-late": NOW - 30}
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.insert(companies).values(id="co", paused=False, created_at=NOW, updated_at=NOW,
                                                           last_sync_checked_at=NOW))  # fmt: skip
            for name, next_poll in [*cases.items(), ("finished", None)]:
                await conn.execute(sa.insert(datasets).values(
                    id=name, company_id="co", data_type="commerce-orders", status="Complete" if name == "finished"
                    else "Processing", terminal=name == "finished", requested_at=NOW - 3600, updated_at=NOW - 60,
                    record_count=1, next_poll_at=next_poll))  # fmt: skip
        tracker = Tracker(_Deps(engine, FixedClock(NOW), settings), PollPolicy(), RepushPolicy())
        await tracker.sweep(None, 1)  # type: ignore[arg-type]
        await tracker.sweep(None, 1)  # type: ignore[arg-type]
        async with engine.connect() as conn:
            polls = (await conn.execute(sa.select(jobs.c.payload, jobs.c.run_at).where(jobs.c.kind == POLL_KIND))).all()
    finally:
        await engine.dispose()
    assert sorted(p["dataset_id"] for p, _ in polls) == ["exhausted", "lost"]
    assert {run_at for _, run_at in polls} == {NOW}  # at once, not after another backoff


async def test_with_polling_off_the_sweep_alone_resolves_a_pushed_dataset(database_url: str) -> None:
    """RELAY_DATASET_POLLS=0: a push enqueues no poll; the sweep polls the dataset and Codat's Complete is applied."""
    requests: list[str] = []

    def codat(request: httpx.Request) -> httpx.Response:
        requests.append(f"{request.method} {request.url.path}")
        if request.method == "POST":
            return httpx.Response(200, json={"data": {}, "datasetId": "ds-1"})
        return httpx.Response(200, json={"id": "ds-1", "status": "Complete", "dataType": "commerce-orders",
                                         "completed": "2027-01-15T08:00:00Z", "isCompleted": True})  # fmt: skip

    settings = make_settings(database_url, dataset_polls=0)
    engine = create_engine(settings)
    clock = FixedClock(NOW)
    runtime = await build_runtime(settings, engine, clock, transport=httpx.MockTransport(codat))
    try:
        valid, _ = validate_records("commerce-orders", [{"id": "o-1", "totalAmount": 1.0}])
        await store_records(engine, "co", "commerce-orders", valid, now=NOW, after=_nothing)
        pusher = Pusher(runtime)
        job = await leased_job(engine, "push", {"company_id": "co", "data_type": "commerce-orders"}, NOW)
        await pusher.run(job, 1)
        after_push = await _polls(engine)
        clock.advance(1)
        await pusher.tracker.sweep(job, 1)
        [(poll_id, payload)] = await _polls(engine)
        poll = Job(id=poll_id, kind=POLL_KIND, payload=payload, lock_key=None, queueing_lock=None, attempts=1,
                   run_at=NOW, created_at=NOW)  # fmt: skip
        await pusher.tracker.poll_dataset(poll, 1)
        async with engine.connect() as conn:
            status = (await conn.execute(sa.select(datasets.c.status, datasets.c.terminal))).one()
            state = await conn.scalar(sa.select(records.c.state))
    finally:
        await runtime.close()
        await engine.dispose()
    assert after_push == []
    assert requests == ["POST /data/companies/co/sync/commerce-orders", "GET /meta/companies/co/pull/history/ds-1"]
    assert tuple(status) == ("Complete", True) and state == "accepted"


async def _polls(engine: Any) -> list[tuple[int, dict[str, Any]]]:
    async with engine.connect() as conn:
        rows = await conn.execute(sa.select(jobs.c.id, jobs.c.payload).where(jobs.c.kind == POLL_KIND))
        return [(row.id, row.payload) for row in rows]


async def _nothing(*_: Any) -> None:
    return None
