"""Each merchant's sync schedule: read it from Codat, push before it, warn when data is late, follow the sync.

Codat syncs a company into its books at its configured hour (`Configuration.schedule` of Sync for Commerce's
`GET /config/companies/{companyId}/sync/commerce`), and its rule is to push "in all cases, before a
merchant's configured sync time" (FACTS §6). So, per company, four steps are queued as `sync_schedule`
jobs, one waiting job per step (`keys.schedule_lock`):

- `refresh`: read the schedule and the company's name from Codat, store them, plan the next sync. Queued
  by the sweep (every minute) for a company first seen and again once a day, and when a connection event
  arrives;
- `push`: at next sync - `RELAY_SYNC_MARGIN_MINUTES` - `PUSH_LEAD_S`, push whatever is pending, so its
  datasets end `Complete` before the margin (the periodic push is still there for everything else);
- `check`: at next sync - the margin, anything still pending or in an unfinished dataset is late: staff
  hear `sync_at_risk` once per sync, with what is late and by how much;
- `follow`: just after the sync hour, read the sync's status until it ends (service.tracking's sync
  follow), so "last sync" and `synced` are right within minutes; then the next sync is planned.

This module is the only writer of the `companies` schedule columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import keys, queue
from service.clock import iso
from service.codat.client import CodatError, CodatNotFound
from service.db import companies, datasets, records, writer
from service.errors import RetryLater
from service.notifications import Kind, Notification
from service.outbox import State, schedule_push
from service.queue import Job
from service.records import MODELS
from service.schedule_time import InvalidSchedule, Schedule, next_sync_at, parse_schedule, stored_schedule
from service.tracking import follow_sync
from service.types import Deps

SCHEDULE_KIND = "sync_schedule"
__all__ = ["SCHEDULE_KIND", "SWEEP_EVERY_S", "SWEEP_KIND", "Scheduler", "queue_refresh"]
SWEEP_KIND = "schedule_sweep"
REFRESH, PUSH, CHECK, FOLLOW = "refresh", "push", "check", "follow"
PLANNED = (PUSH, CHECK, FOLLOW)
REFRESH_EVERY_S = 86_400.0  # Codat's schedule is read again daily (and on every connection event)
# The sweep runs this often: a company first seen (its row made by intake or an event) is read within it.
# A periodic job rather than a job queued by whoever makes the row: intake's transaction stays as it was.
SWEEP_EVERY_S = 60.0
# A push, Codat's processing of its datasets and a poll or two fit in this, ahead of the margin.
PUSH_LEAD_S = 900.0
FOLLOW_AFTER_S = 60.0  # the sync's status is first read this long after the sync hour
LATE_ITEMS_TOLD = 20  # unfinished datasets listed in one sync_at_risk (the counts are complete)
log = structlog.get_logger("service.schedules")


async def queue_refresh(target: AsyncConnection | AsyncEngine, company_id: str, now: float) -> None:
    """Read the company's schedule and name from Codat soon (a new company, a connection event)."""
    lock = keys.schedule_lock(company_id, REFRESH)
    await queue.enqueue(target, SCHEDULE_KIND, {"company_id": company_id, "phase": REFRESH}, now=now,
                        lock_key=lock, queueing_lock=lock)  # fmt: skip


async def _plan(conn: AsyncConnection, company_id: str, sync_at: float | None, margin_s: float, now: float) -> None:
    """Store the next sync and queue its steps (replacing any planned for another time)."""
    await conn.execute(companies.update().where(companies.c.id == company_id).values(next_sync_at=sync_at))
    locks = [keys.schedule_lock(company_id, phase) for phase in PLANNED]
    await queue.cancel_waiting(conn, SCHEDULE_KIND, locks)
    if sync_at is None:
        return
    steps = {PUSH: sync_at - margin_s - PUSH_LEAD_S, CHECK: sync_at - margin_s, FOLLOW: sync_at + FOLLOW_AFTER_S}
    for phase, run_at in steps.items():
        if phase == CHECK and now >= sync_at:
            continue  # planned after the sync hour: too late to warn about this one
        lock = keys.schedule_lock(company_id, phase)
        payload = {"company_id": company_id, "phase": phase, "sync_at": sync_at}
        await queue.enqueue(conn, SCHEDULE_KIND, payload, now=now, lock_key=lock, queueing_lock=lock,
                            run_at=max(now, run_at))  # fmt: skip


class Scheduler:
    """The `sync_schedule` job and the `schedule_sweep` periodic job."""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    @property
    def _margin_s(self) -> float:
        return self._deps.settings.sync_margin_minutes * 60.0

    async def run(self, job: Job, attempt: int) -> None:
        company_id, phase = str(job.payload["company_id"]), str(job.payload["phase"])
        if phase == REFRESH:
            await self.refresh(company_id)
            return
        sync_at = float(job.payload["sync_at"])
        if phase == PUSH:
            await self._push(company_id)
        elif phase == CHECK:
            await self.check(company_id, sync_at)
        elif phase == FOLLOW:
            await self._follow(company_id, sync_at)

    async def refresh(self, company_id: str) -> Schedule | None:
        """Read Codat's schedule and name for the company, store them, and plan its next sync.

        Codat's refusal (404: no Sync for Commerce configuration; 401/403; a schedule we cannot read) is
        stored as the reason there is no next sync, not retried until the job dies: the sweep reads it again
        tomorrow. A 429/503 (`RetryLater`) or no answer is retried as any job is.
        """
        codat, now = self._deps.codat, self._deps.clock.now()
        schedule, error = None, None
        name = await self._name(company_id)
        try:
            schedule = parse_schedule(await codat.get_sync_configuration(company_id))
        except CodatNotFound as exc:
            error = f"Codat has no Sync for Commerce configuration for this company: {exc}"
        except InvalidSchedule as exc:
            error = str(exc)
        except RetryLater:
            raise
        except CodatError as exc:
            if exc.status_code is None:
                raise  # no answer: try again
            error = f"Codat refused the configuration read ({exc.status_code}): {exc}"
        values: dict[str, Any] = {"schedule_fetched_at": now, "schedule_error": error}
        if name is not None:
            values["name"] = name[:255]
        if schedule is not None or error is not None:
            values.update(sync_frequency=schedule.frequency if schedule else None,
                          sync_hour=schedule.sync_hour if schedule else None,
                          sync_time_zone=schedule.time_zone if schedule else None,
                          sync_start_date=schedule.start_date if schedule else None)  # fmt: skip
        async with writer(self._deps.engine).begin() as conn:
            result = await conn.execute(companies.update().where(companies.c.id == company_id).values(**values))
            if not result.rowcount:
                return None  # not a company of ours (yet): the sweep reads it once it has a row
            await _plan(conn, company_id, next_sync_at(schedule, now) if schedule else None, self._margin_s, now)
        log.info("schedule_read", company_id=company_id, schedule=schedule.as_json() if schedule else None,
                 error=error)  # fmt: skip
        return schedule

    async def _name(self, company_id: str) -> str | None:
        """Codat's name of the company (`GET /companies/{id}`), or None when Codat will not say."""
        try:
            company = await self._deps.codat.get_company(company_id)
        except RetryLater:
            raise
        except CodatError as exc:
            if exc.status_code is None:
                raise
            return None
        name = company.get("name") if isinstance(company, dict) else None
        return name if isinstance(name, str) and name else None

    async def _push(self, company_id: str) -> None:
        now = self._deps.clock.now()
        async with writer(self._deps.engine).begin() as conn:
            paused = await conn.scalar(sa.select(companies.c.paused).where(companies.c.id == company_id))
            if paused is None or paused:
                return  # a paused company pushes nothing; the check will say its data is late
            waiting = await conn.execute(
                sa.select(records.c.data_type).distinct()
                .where(records.c.company_id == company_id, records.c.state == State.PENDING)
            )  # fmt: skip
            for data_type in sorted(waiting.scalars()):
                await schedule_push(conn, company_id, data_type, now=now)

    async def check(self, company_id: str, sync_at: float) -> Notification | None:
        """At the margin: anything pending or unfinished is late for the sync at `sync_at`; told once per sync."""
        now = self._deps.clock.now()
        async with writer(self._deps.engine).begin() as conn:
            note = await _late(conn, company_id, sync_at, now)
            if note is None:
                return None
            claimed = await conn.execute(
                companies.update()
                .where(companies.c.id == company_id,
                       sa.or_(companies.c.at_risk_sync_at.is_(None), companies.c.at_risk_sync_at != sync_at))
                .values(at_risk_sync_at=sync_at)
            )  # fmt: skip
            if not claimed.rowcount:
                return None  # told already for this sync
            await self._deps.notifier.notify(note, conn)
        log.warning("sync_at_risk", company_id=company_id, sync_at=iso(sync_at), **note.details["counts"])
        return note

    async def _follow(self, company_id: str, sync_at: float) -> None:
        """The sync hour has passed: read its status until it ends, and plan the next one."""
        now = self._deps.clock.now()
        await follow_sync(self._deps.engine, company_id, now, since=sync_at)
        async with writer(self._deps.engine).begin() as conn:
            row = (await conn.execute(sa.select(companies).where(companies.c.id == company_id))).mappings().first()
            schedule = stored_schedule(row)
            await _plan(conn, company_id, next_sync_at(schedule, now) if schedule else None, self._margin_s, now)

    async def sweep(self, job: Job, attempt: int) -> None:
        """`schedule_sweep` (periodic): read schedules never or not lately read, and plan syncs gone past."""
        now = self._deps.clock.now()
        stale = sa.or_(
            companies.c.schedule_fetched_at.is_(None),
            companies.c.schedule_fetched_at < now - REFRESH_EVERY_S,
            # a plan whose follow step was lost (its job died): read again and plan afresh
            companies.c.next_sync_at < now - REFRESH_EVERY_S,
        )
        async with self._deps.engine.connect() as conn:
            due = list((await conn.execute(sa.select(companies.c.id).where(stale))).scalars())
        async with writer(self._deps.engine).begin() as conn:
            for company_id in due:
                await queue_refresh(conn, company_id, now)
        log.info("schedule_sweep", refreshes=len(due))


async def _late(conn: AsyncConnection, company_id: str, sync_at: float, now: float) -> Notification | None:
    """What is not in Codat, Complete, for the sync at `sync_at`: None when nothing is."""
    pending = await conn.execute(
        sa.select(records.c.data_type, sa.func.count(), sa.func.min(records.c.updated_at))
        .where(records.c.company_id == company_id, records.c.state == State.PENDING)
        .group_by(records.c.data_type)
    )  # fmt: skip
    pending_by_type = {data_type: (int(n), float(oldest)) for data_type, n, oldest in pending}
    unfinished: Sequence[Any] = (await conn.execute(
        sa.select(datasets.c.id, datasets.c.data_type, datasets.c.status, datasets.c.requested_at)
        .where(datasets.c.company_id == company_id, datasets.c.terminal.is_(False))
        .order_by(datasets.c.requested_at)
    )).all()  # fmt: skip
    if not pending_by_type and not unfinished:
        return None
    pause = sa.select(companies.c.paused, companies.c.pause_reason).where(companies.c.id == company_id)
    paused = (await conn.execute(pause)).first()
    pending_count = sum(n for n, _ in pending_by_type.values())
    minutes_left = round((sync_at - now) / 60.0, 1)
    oldest = min([t for _, t in pending_by_type.values()] + [d.requested_at for d in unfinished])
    summary = (f"Codat syncs this company at {iso(sync_at)} ({minutes_left} min from now) and "
               f"{pending_count} record(s) are not yet pushed, {len(unfinished)} dataset(s) not yet Complete; "
               f"the oldest has waited {round((now - oldest) / 60.0, 1)} min")  # fmt: skip
    details = {
        "syncAt": iso(sync_at), "minutesToSync": minutes_left,
        "counts": {"pendingRecords": pending_count, "unfinishedDatasets": len(unfinished)},
        "pendingRecords": {t: {"count": n, "oldestMinutes": round((now - oldest_t) / 60.0, 1)}
                           for t, (n, oldest_t) in sorted(pending_by_type.items()) if t in MODELS},
        "unfinishedDatasets": [{"id": d.id, "dataType": d.data_type, "status": d.status,
                                "ageMinutes": round((now - d.requested_at) / 60.0, 1)}
                               for d in unfinished[:LATE_ITEMS_TOLD]],
        # a paused company pushes nothing: its pause (e.g. a deleted connection) is why its data is late
        "paused": bool(paused and paused.paused), "pauseReason": paused.pause_reason if paused else None,
        "action": "Check why these records are not in Codat (the company's page lists them) before the sync hour",
    }  # fmt: skip
    return Notification(Kind.SYNC_AT_RISK, summary, company_id=company_id, subject=iso(sync_at) or "", details=details)
