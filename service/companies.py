"""A company's state and the operator's actions on it, shared by the admin API and the CLI.

`company_view` is what `GET /v1/companies/{id}` and `codat-relay companies show` print; `resume_company`
and `full_repush` are what the API's and the CLI's resume and re-push do, so both behave the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import datasets as dataset_store
from service import health, record_states
from service.clock import iso
from service.codat.client import SYNC_STATUS_MEANINGS
from service.db import companies, pushes, records, writer
from service.errors import NotFound
from service.outbox import MANUAL_PAUSE, State, ensure_company, lock_outbox, schedule_push, set_paused
from service.records import MODELS

REPUSH_CHUNK = 1000  # records turned back to pending per transaction: short write locks, a moving bar

REPUSH_COUNTS_COLUMNS = ("requeued", "alreadyPending", "skippedSynced", "skippedConflicts", "inFlight")
# progress(data type, records done, records in all): the CLI draws its bar from this
Progress = Callable[[str, int, int], None]


def _last_sync(row: sa.RowMapping | None) -> dict[str, Any]:
    """`checkedAt` is when codat-relay last asked Codat; `code` None with a `checkedAt` means no sync yet."""
    if row is None:
        return {"code": None, "meaning": None, "at": None, "lastSuccessAt": None, "syncedThrough": None,
                "checkedAt": None}
    code = row["last_sync_code"]
    return {"code": code, "meaning": SYNC_STATUS_MEANINGS.get(code) if code is not None else None,
            "at": iso(row["last_sync_at"]), "lastSuccessAt": iso(row["last_sync_success_at"]),
            "syncedThrough": iso(row["synced_through"]), "checkedAt": iso(row["last_sync_checked_at"])}  # fmt: skip


def _dataset(row: sa.RowMapping) -> dict[str, Any]:
    return {"id": row["id"], "dataType": row["data_type"], "status": row["status"],
            "errorMessage": row["error_message"], "records": row["record_count"], "pushId": row["push_id"],
            "requestedAt": iso(row["requested_at"]), "completedAt": iso(row["completed_at"]),
            "polls": row["polls"]}  # fmt: skip


async def _counts(conn: AsyncConnection, company_id: str) -> dict[str, dict[str, int]]:
    counts = {data_type: {state.value: 0 for state in State} for data_type in MODELS}
    query = (
        sa.select(records.c.data_type, records.c.state, sa.func.count())
        .where(records.c.company_id == company_id)
        .group_by(records.c.data_type, records.c.state)
    )
    for data_type, state, count in await conn.execute(query):
        counts.setdefault(data_type, {})[state] = int(count)
    return counts


async def company_view(engine: AsyncEngine, company_id: str) -> dict[str, Any] | None:
    """The company's state (connection, pause, record counts, recent datasets, last sync, problems).

    None if unknown. A company known only from its alerts (no records, no connection event applied yet)
    is shown too, with nothing paused and nothing counted: Codat told us about it.
    """
    async with engine.connect() as conn:
        if not await health.is_known(conn, company_id):
            return None
        (company,) = await health.health_of(conn, [company_id], [company_id])
        counts = await _counts(conn, company_id)
        recent = await dataset_store.recent(conn, company_id)
        open_pushes = await conn.scalar(
            sa.select(sa.func.count()).where(pushes.c.company_id == company_id, pushes.c.finished_at.is_(None))
        )
    row, summary = company.row, company.summary()
    return {
        "id": company_id, "name": summary["name"],
        "known": summary["known"], "paused": company.paused, "pauseReason": summary["pauseReason"],
        "connection": summary["connection"], "records": counts, "openPushes": int(open_pushes or 0),
        "recentDatasets": [_dataset(d) for d in recent], "lastSync": _last_sync(row),
        "nextSyncAt": summary["nextSyncAt"], "syncSchedule": summary["syncSchedule"],
        "failing": summary["failing"], "problems": summary["problems"], "lastAlertAt": summary["lastAlertAt"],
        "createdAt": iso(row["created_at"]) if row else None, "updatedAt": iso(row["updated_at"]) if row else None,
    }  # fmt: skip


async def pause_company(engine: AsyncEngine, company_id: str, now: float) -> bool:
    """An operator's pause; False when the company is unknown. One known only from alerts gets its row."""
    async with writer(engine).begin() as conn:
        if not await health.is_known(conn, company_id):
            return False
        await ensure_company(conn, company_id, now)
    return await set_paused(engine, company_id, paused=True, reason=MANUAL_PAUSE, now=now)


async def resume_company(engine: AsyncEngine, company_id: str, now: float) -> bool:
    """Resume pushing and push whatever waited while paused, now; False when the company is unknown."""
    async with writer(engine).begin() as conn:
        if not await health.is_known(conn, company_id):
            return False
        await ensure_company(conn, company_id, now)
    if not await set_paused(engine, company_id, paused=False, reason=None, now=now):
        return False
    async with writer(engine).begin() as conn:
        for data_type in MODELS:
            await schedule_push(conn, company_id, data_type, now=now)
    return True


@dataclass
class RepushCounts:
    """One data type's full re-push: what goes again, and what was left alone and why."""

    requeued: int = 0  # back to pending by this re-push
    already_pending: int = 0  # were waiting anyway; the same push sends them
    skipped_synced: int = 0  # in the books: never sent again (Codat rule 7)
    skipped_conflicts: int = 0  # changed after a sync: kept, never pushed (rule 7)
    in_flight: int = 0  # in a dataset Codat has not finished: its outcome decides (the re-push policy)

    def answer(self) -> dict[str, int]:
        return {"requeued": self.requeued, "alreadyPending": self.already_pending,
                "skippedSynced": self.skipped_synced, "skippedConflicts": self.skipped_conflicts,
                "inFlight": self.in_flight}  # fmt: skip


@dataclass
class RepushResult:
    company_id: str
    paused: bool
    by_type: dict[str, RepushCounts] = field(default_factory=dict)

    def answer(self) -> dict[str, Any]:
        totals = RepushCounts()
        for counts in self.by_type.values():
            for name in vars(totals):
                setattr(totals, name, getattr(totals, name) + getattr(counts, name))
        return {"id": self.company_id, "paused": self.paused, **totals.answer(),
                "byDataType": {t: c.answer() for t, c in self.by_type.items()}}  # fmt: skip


def _of(company_id: str, data_type: str) -> sa.ColumnElement[bool]:
    return sa.and_(records.c.company_id == company_id, records.c.data_type == data_type)


# What a full re-push sends again: neither in the books, nor a conflict, nor in flight (the state machine's rule).
_REQUEUABLE = record_states.REQUEUABLE


async def _survey(conn: AsyncConnection, company_id: str, data_type: str) -> RepushCounts:
    counts = RepushCounts()
    in_books = records.c.synced_hash.is_not(None)
    query = (
        sa.select(records.c.state, records.c.inflight, in_books.label("in_books"), sa.func.count())
        .where(_of(company_id, data_type))
        .group_by(records.c.state, records.c.inflight, in_books)
    )
    for state, inflight, books, n in await conn.execute(query):
        if state == State.CONFLICT:
            counts.skipped_conflicts += n
        elif state == State.SYNCED or books:
            counts.skipped_synced += n
        elif inflight:
            counts.in_flight += n
        elif state == State.PENDING:
            counts.already_pending += n
    return counts


async def _requeue_chunk(
    engine: AsyncEngine, company_id: str, data_type: str, after: str, now: float
) -> tuple[str, int] | None:
    """Turn the next chunk (ids after `after`) back to pending: (its last id, records moved), None when done."""
    async with writer(engine).begin() as conn:
        await lock_outbox(conn, company_id, data_type)  # the pusher's claim and intake wait for this chunk
        return await record_states.full_repush_chunk(conn, company_id, data_type, after, REPUSH_CHUNK, now)


async def _survey_all(engine: AsyncEngine, company_id: str, data_types: Iterable[str]) -> tuple[RepushResult, int]:
    """What each data type holds, and how many records the re-push will turn back to pending."""
    async with engine.connect() as conn:
        paused = await conn.scalar(sa.select(companies.c.paused).where(companies.c.id == company_id))
        if paused is None and not await health.is_known(conn, company_id):
            raise NotFound(f"no company {company_id}")
        result, total = RepushResult(company_id, bool(paused)), 0
        for data_type in data_types:
            result.by_type[data_type] = await _survey(conn, company_id, data_type)
            count = await conn.scalar(sa.select(sa.func.count()).where(_of(company_id, data_type), _REQUEUABLE))
            total += int(count or 0)
    return result, total


async def full_repush(
    engine: AsyncEngine, company_id: str, data_types: Iterable[str], now: float, progress: Progress | None = None
) -> RepushResult:
    """Every record not synced, not a conflict and not in flight goes to pending; then pushes are due now.

    Raises NotFound for an unknown company. A paused company's pushes wait for its resume.
    """
    result, total = await _survey_all(engine, company_id, data_types)
    done = 0
    for data_type, counts in result.by_type.items():
        cursor = ""
        while (chunk := await _requeue_chunk(engine, company_id, data_type, cursor, now)) is not None:
            cursor, moved = chunk
            counts.requeued, done = counts.requeued + moved, done + moved
            if progress is not None:
                progress(data_type, done, total)
    async with writer(engine).begin() as conn:
        for data_type, counts in result.by_type.items():
            if counts.requeued or counts.already_pending:
                await schedule_push(conn, company_id, data_type, now=now)
    return result
