"""The outbox's intake: records as the merchant's platform hands them over, companies, and sync marks.

A record's `state` says where its latest version stands:
pending → pushed (in a dataset) → accepted (dataset Complete) → synced (a sync succeeded after that),
or failed (its dataset failed) or conflict (differs from what the books hold: kept, never pushed, rule 7).
Records move between states in service/record_states.py alone; intake hands it each new version.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import keys, queue
from service.db import companies, records, writer
from service.record_states import IS_PENDING, State, intake_state, lock_outbox, write_versions
from service.records import Record

__all__ = ["IS_PENDING", "State", "lock_outbox"]  # handed on: the push pipeline's callers import them from here

MANUAL_PAUSE = "manual"  # pause_reason of an operator's pause (API, CLI, page)
PUSH_KIND = "push"
# Why a company is paused. The connection reasons are lifted by a reconnection; a manual one only by a person.
CONNECTION_DELETED = "connection_deleted"  # Codat said the connection was deleted
CODAT_NOT_FOUND = "codat_not_found"  # a push found no company or connection in Codat (a 404)
CONNECTION_PAUSES = frozenset({CONNECTION_DELETED, CODAT_NOT_FOUND})

LOOKUP_CHUNK = 1000  # ids per `IN (...)`: well under both backends' bound-parameter limits
INTAKE_ATTEMPTS = 3  # a concurrent intake of the same new id, or a deadlock, costs one retry
SYNCED_CHANGE = "already_synced"  # the conflict reason reported to the merchant's platform


@dataclass
class IntakeResult:
    accepted: int = 0
    unchanged: int = 0
    deleted: int = 0
    conflicts: list[dict[str, str]] = field(default_factory=list)
    pending: int = 0  # how many now wait for a push

    def answer(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "unchanged": self.unchanged, "deleted": self.deleted,
                "conflicts": self.conflicts}  # fmt: skip


async def schedule_push(
    conn: AsyncConnection, company_id: str, data_type: str, *, now: float, delay_s: float = 0.0
) -> int | None:
    """Queue a push in the caller's transaction; None when one is already waiting (bursts collapse)."""
    lock = keys.push_lock(company_id, data_type)
    payload = {"company_id": company_id, "data_type": data_type}
    job_id = await queue.enqueue(
        conn, PUSH_KIND, payload, now=now, lock_key=lock, queueing_lock=lock, run_at=now + delay_s
    )
    if job_id is None:
        # The waiting job does this work; it must not run later than this caller asked (a resume or a
        # dataset's end says "now", where an intake's debounce said "in a few seconds").
        await queue.bring_forward(conn, lock, now + delay_s)
    return job_id


# Called inside the intake's transaction: schedule the push, tell staff about conflicts.
AfterIntake = Callable[[AsyncConnection, IntakeResult], Awaitable[None]]


def _insert(conn: AsyncConnection) -> Any:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


async def ensure_company(conn: AsyncConnection, company_id: str, now: float) -> None:
    stmt = _insert(conn)(companies).values(id=company_id, paused=False, created_at=now, updated_at=now)
    await conn.execute(stmt.on_conflict_do_nothing(index_elements=["id"]))


async def store_records(
    engine: AsyncEngine, company_id: str, data_type: str, batch: Sequence[Record], *,
    now: float, after: AfterIntake,
) -> IntakeResult:  # fmt: skip
    """Store one request's records in ONE transaction (all or nothing), then `after` in the same one."""
    for attempt in range(1, INTAKE_ATTEMPTS + 1):
        try:
            async with writer(engine).begin() as conn:
                result = await _store(conn, company_id, data_type, batch, now)
                await after(conn, result)
                return result
        except (IntegrityError, DBAPIError) as exc:
            if attempt == INTAKE_ATTEMPTS or not _retryable(exc):
                raise
    raise AssertionError("unreachable")


def _retryable(exc: DBAPIError) -> bool:
    return isinstance(exc, IntegrityError) or "deadlock" in str(exc).lower()


# PostgreSQL: one primary-key probe per id, whatever the statistics say. As `record_id IN (…)`, a
# planner misled by stale statistics filtered every row of the company against the list instead.
_LOOKUP_PG = sa.text("""
SELECT r.record_id, r.version, r.content_hash, r.state, r.inflight, r.pushed_hash, r.accepted_hash,
       r.synced_hash
FROM unnest(:ids) AS t(id) CROSS JOIN LATERAL (
    SELECT * FROM records
    WHERE company_id = :company_id AND data_type = :data_type AND record_id = t.id FOR UPDATE
) AS r
""").bindparams(sa.bindparam("ids", type_=postgresql.ARRAY(sa.String)))
_LOOKUP_COLUMNS = (
    "record_id", "version", "content_hash", "state", "inflight", "pushed_hash", "accepted_hash", "synced_hash",
)  # fmt: skip


async def _existing(
    conn: AsyncConnection, company_id: str, data_type: str, ids: list[str]
) -> dict[str, sa.RowMapping]:
    where = {"company_id": company_id, "data_type": data_type}
    if conn.dialect.name == "postgresql":
        rows = (await conn.execute(_LOOKUP_PG, {"ids": sorted(ids), **where})).mappings()
        return {row["record_id"]: row for row in rows}
    found: dict[str, sa.RowMapping] = {}
    columns = [records.c[name] for name in _LOOKUP_COLUMNS]
    for start in range(0, len(ids), LOOKUP_CHUNK):
        query = sa.select(*columns).where(
            records.c.company_id == company_id, records.c.data_type == data_type,
            records.c.record_id.in_(ids[start : start + LOOKUP_CHUNK]),
        )  # fmt: skip
        for row in (await conn.execute(query)).mappings():
            found[row["record_id"]] = row
    return found


async def _store(
    conn: AsyncConnection, company_id: str, data_type: str, batch: Sequence[Record], now: float
) -> IntakeResult:
    await ensure_company(conn, company_id, now)
    await lock_outbox(conn, company_id, data_type)
    existing = await _existing(conn, company_id, data_type, [r.id for r in batch])
    result = IntakeResult()
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for record in batch:
        prev = existing.get(record.id)
        if prev is not None and prev["content_hash"] == record.content_hash:
            if prev["state"] == State.CONFLICT:
                result.conflicts.append({"id": record.id, "reason": SYNCED_CHANGE})
            else:
                result.unchanged += 1
            continue
        state = intake_state(prev, record.content_hash)
        values = {"n_version": 1 if prev is None else prev["version"] + 1, "n_hash": record.content_hash,
                  "n_body": record.body, "n_delete": record.is_delete, "n_state": state.value,
                  "n_date": record.record_date}  # fmt: skip
        (inserts if prev is None else updates).append({"b_id": record.id, **values})
        if state == State.CONFLICT:
            result.conflicts.append({"id": record.id, "reason": SYNCED_CHANGE})
        elif state == State.SYNCED:
            result.unchanged += 1  # the books' own content again: a conflict resolved
        else:
            result.pending += state == State.PENDING
            if record.is_delete:
                result.deleted += 1
            else:
                result.accepted += 1
    await write_versions(conn, company_id, data_type, now, inserts, updates)
    return result


async def set_paused(
    engine: AsyncEngine, company_id: str, *, paused: bool, reason: str | None, now: float
) -> bool:
    """Pause or resume a company codat-relay knows; False (and nothing created) for an unknown one.

    An unknown id is an operator's typo far more often than a company to come: pausing it would invent
    a company that Codat may never have, and the API answers 404 for unknown ids (CONTRACT.md).
    """
    async with writer(engine).begin() as conn:
        result = await conn.execute(
            companies.update()
            .where(companies.c.id == company_id)
            .values(paused=paused, pause_reason=reason if paused else None, updated_at=now)
        )
    return bool(result.rowcount)


async def pause_unless_paused(conn: AsyncConnection, company_id: str, reason: str, now: float) -> bool:
    """Pause for `reason` unless already paused; True when this call paused it.

    An existing pause keeps its reason, so whoever lifts that reason still recognises it: a manual pause
    stays manual, and a deleted connection's pause is not turned into one a reconnection cannot lift.
    """
    await ensure_company(conn, company_id, now)
    result = await conn.execute(
        companies.update()
        .where(companies.c.id == company_id, companies.c.paused.is_(False))
        .values(paused=True, pause_reason=reason, updated_at=now)
    )
    return bool(result.rowcount)


async def is_paused(conn: AsyncConnection, company_id: str) -> bool:
    paused = await conn.scalar(sa.select(companies.c.paused).where(companies.c.id == company_id))
    return bool(paused)


async def record_sync_check(
    conn: AsyncConnection, company_id: str, *, code: int | None, at: float | None,
    success_at: float | None, now: float,
) -> tuple[float | None, float | None]:  # fmt: skip
    """Remember what Codat said of the company's syncs: (latest success known before, known now)."""
    await ensure_company(conn, company_id, now)
    known = await conn.scalar(
        sa.select(companies.c.last_sync_success_at).where(companies.c.id == company_id)
    )
    latest = max((t for t in (known, success_at) if t is not None), default=None)
    await conn.execute(
        companies.update()
        .where(companies.c.id == company_id)
        .values(last_sync_code=code, last_sync_at=at, last_sync_success_at=latest,
                last_sync_checked_at=now, updated_at=now)
    )  # fmt: skip
    return known, latest
