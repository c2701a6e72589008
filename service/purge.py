"""Purge a company: every row of its data goes, in small batches; one audit line in `purges` stays.

Asked for by an operator (`codat-relay companies purge`, `POST /v1/companies/{id}/purge`) or by Codat's
`company.deleted` (handlers/company.py queues a `purge_company` job behind the company's alerts). What
goes: its records (every version), their version history, pushes, datasets, alerts, notifications and
their dedupe windows, the company row, and its jobs — waiting ones cancelled, done and dead ones
forgotten, through service/queue.py. A job of the company running at that moment is left to its worker
and counted (`running_jobs`); a purge job deletes its own row last, so nothing naming the company is left
but the audit line (who asked, when, the company id, rows deleted per table).

Each batch is its own short transaction, as the retention prune's are: the receiver is never held up,
and a purge interrupted half-way is simply run again (every step deletes what is left).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import budget, keys, problems, queue, record_states
from service.clock import Clock
from service.db import (
    alerts,
    companies,
    datasets,
    notification_dedupe,
    notifications,
    purges,
    push_records,
    pushes,
    writer,
)
from service.notifications import company_dedupe_keys

log = structlog.get_logger("service.purge")

PURGE_KIND = "purge_company"
BATCH_ROWS = 1_000
# The tables a purge empties of the company, in the order it empties them (jobs first: nothing new starts).
TABLES = (
    "jobs", "push_records", "pushes", "records", "datasets", "alerts", "notifications", "notification_dedupe",
    "problems", "codat_slots", "codat_company_waits", "companies",
)  # fmt: skip
BUDGET_TABLES = ("codat_slots", "codat_company_waits")  # its share of Codat's rate limits (service/budget.py)
MAX_REQUESTED_BY = 255  # purges.requested_by


@dataclass(frozen=True)
class PurgeResult:
    company_id: str
    dry_run: bool
    counts: dict[str, int]  # rows per table: to delete (dry run) or deleted
    running_jobs: int  # the company's jobs running meanwhile, left to their workers
    purge_id: int | None = None
    requested_by: str = ""
    finished_at: float | None = None

    @property
    def found(self) -> bool:
        """Whether there was anything of the company at all."""
        return any(self.counts.values()) or self.running_jobs > 0

    def answer(self) -> dict[str, Any]:
        """The API's and the CLI's `--json` answer."""
        return {
            "companyId": self.company_id, "dryRun": self.dry_run, "counts": self.counts,
            "runningJobs": self.running_jobs, "purgeId": self.purge_id,
        }  # fmt: skip


def _where(table: str, company_id: str) -> sa.ColumnElement[bool]:
    """The company's rows of `table` (jobs and records are asked of their owners)."""
    its_pushes = sa.select(pushes.c.id).where(pushes.c.company_id == company_id)
    wheres: dict[str, Callable[[], sa.ColumnElement[bool]]] = {
        "push_records": lambda: push_records.c.push_id.in_(its_pushes),
        "pushes": lambda: pushes.c.company_id == company_id,
        "datasets": lambda: datasets.c.company_id == company_id,
        "alerts": lambda: alerts.c.company_id == company_id,
        "notifications": lambda: notifications.c.company_id == company_id,
        "notification_dedupe": lambda: company_dedupe_keys(company_id),
        "companies": lambda: companies.c.id == company_id,
    }  # fmt: skip
    return wheres[table]()


_TABLES: dict[str, sa.Table] = {
    "push_records": push_records, "pushes": pushes, "datasets": datasets, "alerts": alerts,
    "notifications": notifications, "notification_dedupe": notification_dedupe, "companies": companies,
}  # fmt: skip
# The key a batch of each table is picked by.
_KEYS: dict[str, tuple[sa.Column[Any], ...]] = {
    "push_records": (push_records.c.push_id, push_records.c.record_id), "pushes": (pushes.c.id,),
    "datasets": (datasets.c.id,), "alerts": (alerts.c.id,), "notifications": (notifications.c.id,),
    "notification_dedupe": (notification_dedupe.c.key,), "companies": (companies.c.id,),
}  # fmt: skip


async def _notification_ids(conn: AsyncConnection, company_id: str) -> list[str]:
    query = sa.select(notifications.c.id).where(notifications.c.company_id == company_id)
    return list((await conn.execute(query)).scalars())


async def survey(engine: AsyncEngine, company_id: str) -> tuple[dict[str, int], int]:
    """(rows per table a purge would delete, the company's jobs running now): the dry run."""
    async with engine.connect() as conn:
        notes = await _notification_ids(conn, company_id)
        by_status = await queue.count_company_jobs(conn, company_id, notes)
        counts = {"jobs": sum(n for status, n in by_status.items() if status != queue.JobStatus.RUNNING)}
        for table in TABLES[1:]:
            if table == "records":
                counts[table] = await record_states.count_company_records(conn, company_id)
                continue
            if table == "problems":
                counts[table] = await problems.count_company(conn, company_id)
                continue
            if table in BUDGET_TABLES:
                counts[table] = await budget.count_company(conn, table, company_id)
                continue
            query = sa.select(sa.func.count()).select_from(_TABLES[table]).where(_where(table, company_id))
            counts[table] = int(await conn.scalar(query) or 0)
    return counts, by_status.get(queue.JobStatus.RUNNING, 0)


async def _delete_batch(conn: AsyncConnection, table: str, company_id: str, limit: int) -> int:
    if table == "records":
        return await record_states.purge_company_records(conn, company_id, limit)
    if table == "problems":
        return await problems.purge_company(conn, company_id, limit)
    if table in BUDGET_TABLES:
        return await budget.forget_company(conn, table, company_id)  # at most the company's slots: one statement
    columns = _KEYS[table]
    picked = sa.select(*columns).where(_where(table, company_id)).limit(limit)
    key = columns[0] if len(columns) == 1 else sa.tuple_(*columns)
    return int((await conn.execute(_TABLES[table].delete().where(key.in_(picked)))).rowcount)


async def purge_company(
    engine: AsyncEngine, company_id: str, *, requested_by: str, clock: Clock, dry_run: bool = False,
    job: queue.Job | None = None, batch_rows: int = BATCH_ROWS,
) -> PurgeResult:  # fmt: skip
    """Delete everything of the company (or, `dry_run`, count it) and write the audit line.

    `job`: the purge job running this, whose own row is deleted with the audit line's insert.
    """
    counts, running = await survey(engine, company_id)
    if dry_run:
        return PurgeResult(company_id, True, counts, running, requested_by=requested_by)
    requested_at = clock.now()
    async with engine.connect() as conn:
        notes = await _notification_ids(conn, company_id)
    deleted: dict[str, int] = {}
    for table in TABLES:
        deleted[table] = 0
        while True:
            async with writer(engine).begin() as conn:
                if table == "jobs":
                    gone = await queue.cancel_company_jobs(conn, company_id, notes, batch_rows)
                else:
                    gone = await _delete_batch(conn, table, company_id, batch_rows)
            deleted[table] += gone
            if gone < batch_rows:
                break
    finished_at = clock.now()
    async with writer(engine).begin() as conn:
        purge_id = await _audit(conn, company_id, requested_by, requested_at, finished_at, deleted)
        if job is not None:
            await queue.forget_running(conn, job)
    log.info("company_purged", company_id=company_id, purge_id=purge_id, requested_by=requested_by,
             running_jobs=running, **deleted)  # fmt: skip
    return PurgeResult(company_id, False, deleted, running, purge_id, requested_by, finished_at)


async def _audit(
    conn: AsyncConnection, company_id: str, requested_by: str, requested_at: float, finished_at: float,
    counts: dict[str, int],
) -> int:  # fmt: skip
    row = {"company_id": company_id, "requested_by": requested_by[:MAX_REQUESTED_BY], "requested_at": requested_at,
           "finished_at": finished_at, "counts": counts}  # fmt: skip
    return int((await conn.execute(purges.insert().values(row).returning(purges.c.id))).scalar_one())


async def request_purge(conn: AsyncConnection, company_id: str, *, requested_by: str, now: float) -> int | None:
    """Queue a purge of the company behind its alerts (the same lock key): the alert that asked for it ends
    first, and is purged with the rest. Returns the job's id."""
    payload = {"company_id": company_id, "requested_by": requested_by}
    return await queue.enqueue(conn, PURGE_KIND, payload, now=now, lock_key=keys.alert_lock(company_id))


@dataclass
class PurgeJob:
    """The `purge_company` job function."""

    engine: AsyncEngine
    clock: Clock
    batch_rows: int = field(default=BATCH_ROWS)

    async def __call__(self, job: queue.Job, _attempt: int) -> None:
        await purge_company(
            self.engine, str(job.payload["company_id"]), requested_by=str(job.payload.get("requested_by", "")),
            clock=self.clock, job=job, batch_rows=self.batch_rows,
        )  # fmt: skip


