"""What a sync covers: the date range of every sync the relay knows of, and records too late for any.

A Sync for Commerce sync takes the records whose date lies in its range (sync-commerce-current.json:
`request-sync` "from the last successful sync up to the date provided (optional), otherwise UtcNow";
`request-sync-for-date-range` "for the specified start date to the specified finish date"; both answer a
`SyncSummary` whose `syncDateRangeUtc{start, finish}` is that range). Sync status (`get-sync-status`,
schema `SyncStatus`) carries `commerceSyncId`, `syncId` and `syncUtc`, but no range. So:

- a sync the relay started keeps the range of its `SyncSummary` (`record_started`);
- a sync it did not start (Codat's schedule, the Portal) covers from the previous successful sync's end
  (`companies.synced_through`; unbounded when none is known) to its `syncUtc`.

Ranges are half-open, `[start, finish)`, as consecutive `latest` syncs chain (each starts where the last
ended). A record is matched on its `createdDate` (`records.record_date`); the docs do not say which date
Codat matches (FACTS §6), and a record without one counts as covered: the safe side of Codat rule 7.

A `latest` sync starts where the last successful one ended, so a record Codat holds dated before that
point that no sync took is in no future `latest` sync: it is *late* (`find_late`), and only a historic
sync of its dates reaches it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from service.codat.client import SyncStatus
from service.db import companies, records, syncs

LATEST, HISTORIC, SCHEDULED = "latest", "historic", "scheduled"  # `syncs.kind`; scheduled: not started by us


@dataclass(frozen=True)
class Coverage:
    """The records one sync took: dated in [start, finish) (None: unbounded), as Codat held them at `at`."""

    sync_id: str
    start: float | None
    finish: float | None
    at: float

    def covers_sql(self) -> sa.ColumnElement[bool]:
        return covered_sql(self.start, self.finish)


def covered_sql(start: float | None, finish: float | None) -> sa.ColumnElement[bool]:
    """Whether a record's date lies in [start, finish); a record with no date is always covered."""
    bounds = []
    if start is not None:
        bounds.append(records.c.record_date >= start)
    if finish is not None:
        bounds.append(records.c.record_date < finish)
    return sa.or_(records.c.record_date.is_(None), sa.and_(sa.true(), *bounds))


def _instant(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except (ValueError, OverflowError):
        return None


def _code(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def record_started(conn: AsyncConnection, company_id: str, kind: str, summary: Any, now: float) -> str | None:
    """Keep the range of a sync the relay started, from Codat's `SyncSummary`; returns its id.

    Without a `commerceSyncId` and a finish, the answer says too little: the sync is then treated as one
    the relay did not start when its status is read (covering up to its `syncUtc`).
    """
    if not isinstance(summary, dict):
        return None
    span = summary.get("syncDateRangeUtc")
    span = span if isinstance(span, dict) else {}
    sync_id, finish = summary.get("commerceSyncId"), _instant(span.get("finish"))
    if not isinstance(sync_id, str) or not sync_id or finish is None:
        return None
    exists = await conn.scalar(sa.select(syncs.c.id).where(syncs.c.id == sync_id))
    if exists is None:
        await conn.execute(syncs.insert().values(
            id=sync_id, company_id=company_id, kind=kind, range_start=_instant(span.get("start")),
            range_finish=finish, sync_utc=_instant(summary.get("syncUtc")),
            code=_code(summary.get("syncStatusCode")), requested_at=now,
        ))  # fmt: skip
    return sync_id


def status_id(company_id: str, status: SyncStatus) -> str | None:
    """The ledger id of a sync read from sync status: its `commerceSyncId`, else `syncId`, else its time."""
    if status.commerce_sync_id:
        return status.commerce_sync_id
    if status.sync_id:
        return status.sync_id
    return f"{company_id}@{status.sync_utc.isoformat()}" if status.sync_utc is not None else None


async def learn_success(
    conn: AsyncConnection, company_id: str, status: SyncStatus, *, before: float | None, now: float
) -> Coverage | None:
    """A successful sync read from sync status, as a `Coverage` to apply; None when already applied.

    A sync the relay started has its own range. Any other covers from where the company's successful
    syncs reached (`synced_through`) to its `syncUtc` — and is applied only when newer than the latest
    success applied before (`before`: an older one was applied, or predates this ledger).
    """
    sync_id, at = status_id(company_id, status), status.sync_utc.timestamp() if status.sync_utc else None
    if sync_id is None or at is None:
        return None
    row = (await conn.execute(sa.select(syncs).where(syncs.c.id == sync_id))).mappings().first()
    if row is not None:
        if row["applied_at"] is not None:
            return None
        await conn.execute(syncs.update().where(syncs.c.id == sync_id)
                           .values(sync_utc=at, code=status.sync_status_code))  # fmt: skip
        return Coverage(sync_id, row["range_start"], row["range_finish"], at)
    if before is not None and at <= before:
        return None
    through = await conn.scalar(sa.select(companies.c.synced_through).where(companies.c.id == company_id))
    await conn.execute(syncs.insert().values(
        id=sync_id, company_id=company_id, kind=SCHEDULED, range_start=through, range_finish=at, sync_utc=at,
        code=status.sync_status_code, requested_at=now,
    ))  # fmt: skip
    return Coverage(sync_id, through, at, at)


async def applied(conn: AsyncConnection, coverage: Coverage, company_id: str, now: float) -> None:
    """The sync's records are marked: it is applied once, and the company's syncs now reach its finish."""
    await conn.execute(syncs.update().where(syncs.c.id == coverage.sync_id).values(applied_at=now))
    if coverage.finish is None:
        return
    through = sa.case(
        (sa.or_(companies.c.synced_through.is_(None), companies.c.synced_through < coverage.finish), coverage.finish),
        else_=companies.c.synced_through,
    )
    await conn.execute(companies.update().where(companies.c.id == company_id).values(synced_through=through))


async def since(conn: AsyncConnection, company_id: str, completed_at: float) -> list[Coverage]:
    """The applied successful syncs that started at or after `completed_at` (they saw what was Complete then)."""
    rows = await conn.execute(
        sa.select(syncs.c.id, syncs.c.range_start, syncs.c.range_finish, syncs.c.sync_utc)
        .where(syncs.c.company_id == company_id, syncs.c.sync_utc >= completed_at, syncs.c.applied_at.is_not(None))
        .order_by(syncs.c.sync_utc)
    )  # fmt: skip
    return [Coverage(sync_id, start, finish, at) for sync_id, start, finish, at in rows]


@dataclass(frozen=True)
class Late:
    """Records Codat holds that no sync took, dated before where the company's syncs reach."""

    company_id: str
    ids: dict[str, list[str]]  # data type → record ids
    start: float  # the earliest record date, floored to the second
    finish: float  # one second after the latest record date (so [start, finish) holds them all)

    @property
    def count(self) -> int:
        return sum(map(len, self.ids.values()))


LATE_LIMIT = 100_000  # rows read per check; more stay for the next check (their range is told then)


async def find_late(conn: AsyncConnection, company_id: str, data_types: list[str]) -> Late | None:
    """Records of `data_types` Codat holds, never in the books, dated before `synced_through`, not yet told.

    Reads the partial index `ix_records_unbooked` (records the books hold nothing of), by date.
    """
    through = await conn.scalar(sa.select(companies.c.synced_through).where(companies.c.id == company_id))
    if through is None:
        return None
    found = await conn.execute(
        sa.select(records.c.data_type, records.c.record_id, records.c.record_date).where(
            records.c.company_id == company_id, records.c.data_type.in_(data_types),
            records.c.synced_hash.is_(None), records.c.record_date < through,
            records.c.accepted_hash.is_not(None), records.c.late_told_at.is_(None),
        ).limit(LATE_LIMIT)
    )  # fmt: skip
    ids: dict[str, list[str]] = {}
    dates: list[float] = []
    for data_type, record_id, date in found:
        ids.setdefault(data_type, []).append(record_id)
        dates.append(date)
    if not dates:
        return None
    return Late(company_id, {k: sorted(v) for k, v in sorted(ids.items())}, float(math.floor(min(dates))),
                float(math.floor(max(dates)) + 1))  # fmt: skip
