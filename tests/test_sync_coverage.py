"""Issue 13, sync coverage: a record becomes `synced` only by a successful sync whose date range covers it.

What Codat documents (sync-commerce-current.json): `request-sync` (POST /companies/{companyId}/sync/commerce/
latest) "Run a Commerce sync from the last successful sync up to the date provided (optional), otherwise
UtcNow is used"; `request-sync-for-date-range` (POST /meta/companies/{companyId}/sync/commerce/historic) syncs
"the specified start date to the specified finish date"; both answer `SyncSummary` with `syncDateRangeUtc
{start, finish}` and `commerceSyncId`; `get-sync-status` (`SyncStatus`) carries `commerceSyncId` and
`syncUtc` but no range. Which record date a range matches is undocumented (FACTS §6): the relay and the
sandbox both read `createdDate`, and a record without one counts as covered (README, "What a sync covers").

The relay and the sandbox run on one fixed clock (START = 2027-01-15T08:00:00Z), the relay calling the
sandbox's Codat API over HTTP (httpx, the in-process transport), as in tests/test_sync_follow.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa

from service import coverage, queue, syncs
from service.clock import FixedClock
from service.db import create_engine, jobs, notifications, records
from service.db import syncs as syncs_table
from service.late_records import HISTORIC_KIND
from service.records import validate_records
from service.runtime import build_runtime
from service.testing import running_sandbox
from service.tracking import follow_sync
from tests import test_push_correctness
from tests.test_push_correctness import CO, PACE_S, START, World, sandbox_client, sandbox_settings

world = test_push_correctness.world  # the relay and the sandbox (PACE_S a sync) on one fixed clock
MINUTE_S = 60.0
STEP_S = 1.0
TODAY = "2027-01-15T07:00:00Z"  # an hour before START
LAST_JANUARY = "2026-01-10T12:00:00Z"


@pytest.fixture
async def auto_world(database_url: str) -> AsyncIterator[World]:
    """`world` with RELAY_AUTO_HISTORIC_SYNC=true."""
    clock = FixedClock(START)
    async with running_sandbox(companies=[CO], clock=clock, pace_seconds=PACE_S) as (_, transport):
        settings = sandbox_settings(database_url, auto_historic_sync=True)
        engine = create_engine(settings)
        runtime = await build_runtime(settings, engine, clock, transport=transport)
        runtime.codat._sleep = test_push_correctness._nothing
        try:
            async with sandbox_client(transport) as sandbox:
                yield World(runtime, sandbox, clock)
        finally:
            await runtime.close()
            await engine.dispose()


def dated(record_id: str, created: str | None, version: int = 1) -> dict[str, Any]:
    record = test_push_correctness.order(record_id, version)
    if created is None:
        del record["createdDate"]
    else:
        record["createdDate"] = created
    return record


async def accepted(w: World, *records: dict[str, Any]) -> None:
    await w.put(list(records))
    await w.push()
    await w.settle()
    states = await w.states()
    assert {states[r["id"]] for r in records} == {"accepted"}, states


def following(w: World) -> syncs.Follow:
    async def follow(company_id: str, kind: str, summary: Any) -> None:
        await follow_sync(w.engine, company_id, w.clock.now(), started=(kind, summary))

    return follow


async def run_due_jobs(w: World) -> list[str]:
    """What a worker does at this moment: run every due job of the push pipeline; their kinds."""
    ran = []
    table = w.pusher.jobs()
    for job in await queue.claim(w.engine, "test-worker", 10, w.clock.now(), 60.0):
        if job.kind in table:  # notification deliveries are not this test's business (tests/test_notifications.py)
            await table[job.kind](job, 1)
        await queue.complete(w.engine, [job], w.clock.now())
        ran.append(job.kind)
    return ran


async def until(w: World, done: Any, what: str) -> None:
    """Let the clock run, a second a step, running due jobs, until `done()`; at most a minute of it."""
    started = w.clock.now()
    while not await done():
        assert w.clock.now() - started <= MINUTE_S, (what, await w.states())
        w.clock.advance(STEP_S)
        await w.sandbox.post("/_sandbox/tick")
        await run_due_jobs(w)


async def books(w: World) -> set[str]:
    """The records the sandbox's books hold (the oracle: what Codat synced)."""
    found = (await w.sandbox.get("/_sandbox/records", params={"companyId": CO})).json()["results"]
    return {r["id"] for r in found if r["synced"]}


async def told(w: World, kind: str) -> list[dict[str, Any]]:
    async with w.engine.connect() as conn:
        rows = await conn.execute(sa.select(notifications).where(notifications.c.kind == kind))
        return [dict(row) for row in rows.mappings()]


async def queued(w: World, kind: str) -> list[dict[str, Any]]:
    async with w.engine.connect() as conn:
        return list((await conn.execute(sa.select(jobs.c.payload).where(jobs.c.kind == kind))).scalars())


async def synced_by_relay_sync(w: World, *ids: str) -> None:
    """`sync latest` through the relay, followed to its end (no webhook): `ids` become synced."""
    await syncs.sync_latest(w.runtime.codat, CO, follow=following(w))

    async def done() -> bool:
        states = await w.states()
        return all(states[i] == "synced" for i in ids)

    await until(w, done, "sync latest")


async def test_a_historic_sync_of_an_old_range_leaves_newer_records_pushable(world: World) -> None:
    """A January historic sync takes January's record only: today's stays `accepted`, and its next change is
    pushed (Codat takes it, no breach), not kept as a conflict. Fails on the relay that marked every accepted
    record synced after any successful sync."""
    w = world
    await accepted(w, dated("january", LAST_JANUARY), dated("today", TODAY))
    await syncs.sync_historic(w.runtime.codat, CO, "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z",
                              follow=following(w))  # fmt: skip

    async def january_synced() -> bool:
        return (await w.states())["january"] == "synced"

    await until(w, january_synced, "historic sync")
    assert await w.states() == {"january": "synced", "today": "accepted"}
    assert await books(w) == {"january"}  # the sandbox agrees: today's record is not in the books
    answer = await w.put([dated("today", TODAY, version=2)])
    assert answer.conflicts == []
    await w.push()
    await w.settle()
    assert (await w.held())["today"]["totalAmount"] == 12.0  # v2 reached Codat
    assert await w.breaches(*test_push_correctness.BAD) == []
    assert (await w.states())["today"] == "accepted"
    async with w.engine.connect() as conn:
        kept = (await conn.execute(sa.select(syncs_table))).mappings().one()
    assert (kept["kind"], kept["applied_at"] is not None) == ("historic", True)


async def test_a_record_without_a_created_date_counts_as_covered(world: World) -> None:
    """A `latest` sync up to yesterday (its range from Codat's `SyncSummary`): the undated record is covered and
    synced (the safe side of rule 7), today's dated one is not — as the sandbox's books say."""
    w = world
    await accepted(w, dated("undated", None), dated("today", TODAY))
    await syncs.sync_latest(w.runtime.codat, CO, "2027-01-14T00:00:00Z", follow=following(w))

    async def undated_synced() -> bool:
        return (await w.states())["undated"] == "synced"

    await until(w, undated_synced, "sync latest to yesterday")
    assert await w.states() == {"undated": "synced", "today": "accepted"}
    assert await books(w) == {"undated"}
    assert await told(w, "late_records") == []  # today's record is after the sync's end: the next one takes it


async def test_a_sync_the_relay_did_not_start_covers_from_the_last_end_to_its_sync_utc(world: World) -> None:
    """A scheduled sync (started in Codat, not by the relay) covers from the previous success's end to its
    `syncUtc`: a record dated between is synced; one dated before the previous end is not (it is late)."""
    w = world
    await accepted(w, dated("first", "2027-01-13T09:00:00Z"))
    await syncs.sync_latest(w.runtime.codat, CO, "2027-01-14T00:00:00Z", follow=following(w))

    async def first_synced() -> bool:
        return (await w.states())["first"] == "synced"

    await until(w, first_synced, "sync latest")
    await accepted(w, dated("between", TODAY), dated("before", "2027-01-13T10:00:00Z"))
    await w.start_sync()  # Codat's own schedule: the relay learns of it from sync status only
    w.clock.advance(PACE_S + 1)
    await w.sandbox.post("/_sandbox/tick")
    await w.pusher.tracker.check_sync(CO)
    assert await w.states() == {"first": "synced", "between": "synced", "before": "accepted"}
    assert await books(w) == {"first", "between"}
    assert [n["details"]["recordIds"] for n in await told(w, "late_records")] == [["commerce-orders:before"]]


async def test_a_record_dated_before_the_first_syncs_start_is_told_late_at_the_sync_check(world: World) -> None:
    """Codat's first `latest` sync starts at the configured start date (the sandbox's: a month back): a record
    dated earlier is not taken, and the sync check tells staff it is late, with its range."""
    w = world
    await accepted(w, dated("ancient", "2026-11-01T00:00:00Z"), dated("today", TODAY))
    assert await told(w, "late_records") == []  # no sync yet: nothing says where the syncs reach
    await synced_by_relay_sync(w, "today")
    assert (await w.states())["ancient"] == "accepted" and await books(w) == {"today"}
    [note] = await told(w, "late_records")
    assert (note["details"]["recordIds"], note["details"]["dateRange"]) == (
        ["commerce-orders:ancient"], {"start": "2026-11-01T00:00:00Z", "finish": "2026-11-01T00:00:01Z"})  # fmt: skip


async def test_a_dataset_learnt_of_after_a_sync_is_synced_only_where_that_sync_covers_it(world: World) -> None:
    """A dataset Complete before a sync started, its end learnt only after the sync was applied: the records
    the sync's range covers are in the books at once; the others stay accepted (as the sandbox's books say)."""
    w = world
    await w.put([dated("in-range", "2027-01-13T09:00:00Z"), dated("after", TODAY)])
    await w.push()
    w.clock.advance(PACE_S + 1)
    await w.sandbox.post("/_sandbox/tick")  # Complete in Codat; the relay has not polled it
    await syncs.sync_latest(w.runtime.codat, CO, "2027-01-14T00:00:00Z", follow=following(w))
    w.clock.advance(PACE_S + 1)
    await w.sandbox.post("/_sandbox/tick")
    await w.pusher.tracker.check_sync(CO)  # applied while both records are still `pushed` for the relay
    assert set((await w.states()).values()) == {"pushed"}
    await w.poll()
    assert await w.states() == {"in-range": "synced", "after": "accepted"}
    assert await books(w) == {"in-range"}


async def test_a_record_pushed_late_is_told_once_with_its_range(world: World) -> None:
    """A record reaching Codat dated before the last successful sync's end is in no future `latest` sync: staff
    hear it once, with its date range, when its dataset completes; later syncs neither take it nor tell it again."""
    w = world
    await accepted(w, dated("on-time", TODAY))
    await synced_by_relay_sync(w, "on-time")
    await accepted(w, dated("late", "2027-01-10T12:00:00.250Z"))  # e.g. a paused company's backlog
    [note] = await told(w, "late_records")
    assert note["details"]["dateRange"] == {"start": "2027-01-10T12:00:00Z", "finish": "2027-01-10T12:00:01Z"}
    assert (note["details"]["recordIds"], note["details"]["historicSyncRequested"]) == (
        ["commerce-orders:late"], False)  # fmt: skip
    assert "sync historic co-books --start 2027-01-10T12:00:00Z --end 2027-01-10T12:00:01Z" in (
        note["details"]["action"])  # fmt: skip
    w.clock.advance(3 * 3600)  # past the notification window: told once all the same
    await accepted(w, dated("next", "2027-01-15T10:00:00Z"))
    await synced_by_relay_sync(w, "next")
    assert len(await told(w, "late_records")) == 1
    assert (await w.states())["late"] == "accepted" and "late" not in await books(w)
    assert await queued(w, HISTORIC_KIND) == []


async def test_with_auto_historic_sync_a_late_record_is_synced_by_a_historic_sync(auto_world: World) -> None:
    """RELAY_AUTO_HISTORIC_SYNC=true: the late record's range is synced by a historic sync the relay requests,
    then followed to its end; afterwards the record is synced, in the relay and in the sandbox's books."""
    w = auto_world
    await accepted(w, dated("on-time", TODAY))
    await synced_by_relay_sync(w, "on-time")
    await accepted(w, dated("late", "2027-01-10T12:00:00Z"))
    [note] = await told(w, "late_records")
    assert note["details"]["historicSyncRequested"] is True
    assert await queued(w, HISTORIC_KIND) == [{"company_id": CO, "start": 1799582400.0, "finish": 1799582401.0}]

    async def late_synced() -> bool:
        return (await w.states())["late"] == "synced"

    await until(w, late_synced, "historic sync of the late record")
    assert await books(w) == {"on-time", "late"}
    async with w.engine.connect() as conn:
        kinds = (await conn.execute(sa.select(syncs_table.c.kind, syncs_table.c.range_start)
                                    .order_by(syncs_table.c.requested_at))).all()  # fmt: skip
    assert kinds[-1] == ("historic", 1799582400.0)
    assert len(await told(w, "late_records")) == 1


async def test_a_syncs_marking_and_the_late_query_read_the_index_of_records_not_in_the_books(
    database_url: str,
) -> None:
    """Marking a sync's records and finding late ones read `ix_records_unbooked` (records the books hold no
    version of), never every record of the company (PostgreSQL asked to avoid sequential scans, as at scale)."""
    engine = create_engine(sandbox_settings(database_url))
    mine = sa.and_(records.c.company_id == CO, records.c.data_type == "commerce-orders",
                   records.c.synced_hash.is_(None), coverage.covered_sql(START - 86_400, START))  # fmt: skip
    marking = sa.select(records.c.record_id).where(mine, records.c.accepted_at <= START)
    late = sa.select(records.c.record_id).where(
        records.c.company_id == CO, records.c.data_type.in_(["commerce-orders"]), records.c.synced_hash.is_(None),
        records.c.record_date < START, records.c.accepted_hash.is_not(None), records.c.late_told_at.is_(None),
    )  # fmt: skip
    try:
        async with engine.connect() as conn:
            for query in (marking, late):
                sql = str(query.compile(engine.sync_engine, compile_kwargs={"literal_binds": True}))
                if conn.dialect.name == "postgresql":
                    await conn.execute(sa.text("SET enable_seqscan = off"))
                    plan = "\n".join((await conn.execute(sa.text(f"EXPLAIN {sql}"))).scalars())
                else:
                    plan = str((await conn.execute(sa.text(f"EXPLAIN QUERY PLAN {sql}"))).all())
                assert "ix_records_unbooked" in plan, plan
    finally:
        await engine.dispose()


def test_the_date_matched_is_created_date_in_utc_and_a_delete_has_none() -> None:
    """`record_date` is the record's `createdDate` as an instant (its offset applied); no createdDate: None."""
    valid, errors = validate_records("commerce-orders", [
        dated("offset", "2027-01-10T17:30:00.123+05:30"), dated("undated", None), {"id": "gone"},
    ])  # fmt: skip
    assert errors == []
    assert [r.record_date for r in valid] == [1799582400.123, None, None]
