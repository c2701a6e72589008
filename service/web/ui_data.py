"""What the Sync Health pages show, read from the database: per-company health and a company's timeline.

A company is *failing* when a person should look at it: the latest dataset of a data type ended in an
error status, one of its alerts or jobs is dead, its last sync's code is 4000 or above, its connection
was deleted, or records of it sit in `conflict` or `failed`. Only the latest dataset per data type
counts, so a re-push that completed clears the mark (records it could not carry stay `failed`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.codat.models import ERROR_STATUSES, SYNC_STATUS_MEANINGS
from service.db import alerts, companies, datasets, jobs, notifications, pushes, records
from service.queue import JobStatus
from service.types import AlertStatus

MAX_COMPANIES = 500  # one page; beyond this an operator filters with the API
MAX_DEAD_JOBS = 200
RECENT_ALERTS = 20
RECENT_DATASETS = 20
TIMELINE_PER_SOURCE = 50
FAILING_SYNC_CODE = 4000
# The values of service/outbox.State in pipeline order, spelt out: these pages only read the column.
RECORD_STATES = ["pending", "pushed", "accepted", "synced", "failed", "conflict"]
BAD_RECORD_STATES = ("conflict", "failed")
BAD_PUSH_OUTCOMES = frozenset({"abandoned", "rejected"})


def sync_meaning(code: int | None) -> str | None:
    return None if code is None else SYNC_STATUS_MEANINGS.get(code, "unknown code")


@dataclass
class CompanyHealth:
    id: str
    row: RowMapping | None = None  # None: known only from its alerts or jobs
    records: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RECORD_STATES, 0))
    datasets: dict[str, int] = field(default_factory=dict)  # status → count
    errored_types: list[tuple[str, str]] = field(default_factory=list)  # (data type, status) of latest datasets
    dead_alerts: int = 0
    dead_jobs: int = 0

    def get(self, column: str) -> Any:
        return None if self.row is None else self.row[column]

    @property
    def sync_meaning(self) -> str | None:
        return sync_meaning(self.get("last_sync_code"))

    @property
    def reasons(self) -> list[str]:
        out = [f"latest {data_type} dataset ended {status}" for data_type, status in self.errored_types]
        if self.dead_alerts:
            out.append(f"{self.dead_alerts} dead alert{'s' * (self.dead_alerts != 1)}")
        if self.dead_jobs:
            out.append(f"{self.dead_jobs} dead job{'s' * (self.dead_jobs != 1)}")
        code = self.get("last_sync_code")
        if code is not None and code >= FAILING_SYNC_CODE:
            out.append(f"last sync {code}: {sync_meaning(code)}")
        if self.get("connection_deleted_at") is not None:
            out.append("connection deleted")
        out.extend(f"{self.records[s]} record(s) {s}" for s in BAD_RECORD_STATES if self.records.get(s))
        return out

    @property
    def failing(self) -> bool:
        return bool(self.reasons)


@dataclass
class Overview:
    companies: list[CompanyHealth]
    dead_jobs: list[RowMapping]
    recent_alerts: list[RowMapping]


def job_company(row: RowMapping) -> str | None:
    """Which company a job works for, from its payload or its lock key (`company:ID`, `push:ID:TYPE`)."""
    payload = row["payload"]
    if isinstance(payload, dict) and isinstance(payload.get("company_id"), str):
        return str(payload["company_id"])
    lock = row["lock_key"] or ""
    if lock.startswith("company:"):
        return lock.removeprefix("company:")
    if lock.startswith("push:"):
        return lock.removeprefix("push:").rsplit(":", 1)[0]
    return None


def _scoped(query: sa.Select[Any], column: sa.ColumnElement[Any], company_id: str | None) -> sa.Select[Any]:
    return query if company_id is None else query.where(column == company_id)


async def _fill(conn: AsyncConnection, health: dict[str, CompanyHealth], company_id: str | None) -> None:
    """Record counts, dataset counts, errored latest datasets and dead alerts, for every company at once."""

    def of(cid: str) -> CompanyHealth:
        return health.setdefault(cid, CompanyHealth(cid))

    by_state = sa.select(records.c.company_id, records.c.state, sa.func.count()).group_by(
        records.c.company_id, records.c.state
    )
    for cid, state, count in await conn.execute(_scoped(by_state, records.c.company_id, company_id)):
        if cid in health:
            health[cid].records[state] = int(count)
    by_status = sa.select(datasets.c.company_id, datasets.c.status, sa.func.count()).group_by(
        datasets.c.company_id, datasets.c.status
    )
    for cid, status, count in await conn.execute(_scoped(by_status, datasets.c.company_id, company_id)):
        if cid in health:
            health[cid].datasets[status] = int(count)
    newest = sa.func.row_number().over(
        partition_by=(datasets.c.company_id, datasets.c.data_type), order_by=datasets.c.requested_at.desc()
    )
    ranked = _scoped(
        sa.select(datasets.c.company_id, datasets.c.data_type, datasets.c.status, newest.label("rank")),
        datasets.c.company_id, company_id,
    ).subquery()  # fmt: skip
    latest_errors = sa.select(ranked.c.company_id, ranked.c.data_type, ranked.c.status).where(
        ranked.c.rank == 1, ranked.c.status.in_(sorted(ERROR_STATUSES))
    )
    for cid, data_type, status in await conn.execute(latest_errors.order_by(ranked.c.data_type)):
        if cid in health:
            health[cid].errored_types.append((data_type, status))
    dead = sa.select(alerts.c.company_id, sa.func.count()).where(
        alerts.c.status == AlertStatus.DEAD.value, alerts.c.company_id.is_not(None)
    )
    dead = _scoped(dead.group_by(alerts.c.company_id), alerts.c.company_id, company_id)
    for cid, count in await conn.execute(dead):
        of(cid).dead_alerts = int(count)


async def _dead_jobs(conn: AsyncConnection) -> list[RowMapping]:
    query = sa.select(jobs).where(jobs.c.status == JobStatus.DEAD.value).order_by(jobs.c.id.desc())
    return list((await conn.execute(query.limit(MAX_DEAD_JOBS))).mappings().all())


def _sort_key(company: CompanyHealth) -> tuple[bool, str]:
    return (not company.failing, company.id)  # failing first, then by id


async def overview(engine: AsyncEngine) -> Overview:
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(companies).order_by(companies.c.id).limit(MAX_COMPANIES))).mappings()
        health = {row["id"]: CompanyHealth(row["id"], row) for row in rows}
        await _fill(conn, health, None)
        dead_jobs = await _dead_jobs(conn)
        for job in dead_jobs:
            if (cid := job_company(job)) is not None:
                health.setdefault(cid, CompanyHealth(cid)).dead_jobs += 1
        recent = sa.select(alerts).order_by(alerts.c.received_at.desc(), alerts.c.id.desc()).limit(RECENT_ALERTS)
        recent_alerts = list((await conn.execute(recent)).mappings().all())
    return Overview(sorted(health.values(), key=_sort_key), dead_jobs, recent_alerts)


@dataclass(frozen=True)
class Event:
    """One line of a company's timeline."""

    at: float
    source: str  # push, dataset, alert, notification
    title: str
    status: str | None
    detail: str | None = None
    bad: bool = False
    alert_id: str | None = None  # alerts get a Replay button


def _push_event(r: RowMapping) -> Event:
    title = f"push of {r['record_count']} {r['data_type']} ({r['reason']})"
    return Event(r["started_at"], "push", title, r["outcome"], r["error"], r["outcome"] in BAD_PUSH_OUTCOMES)


def _dataset_event(r: RowMapping) -> Event:
    title = f"dataset {r['id']} · {r['data_type']}, {r['record_count']} records"
    return Event(r["requested_at"], "dataset", title, r["status"], r["error_message"], r["status"] in ERROR_STATUSES)


def _alert_event(r: RowMapping) -> Event:
    dead = r["status"] == AlertStatus.DEAD.value
    return Event(r["received_at"], "alert", f"alert {r['type']} ({r['kind']})", r["status"], r["last_error"], dead,
                 alert_id=r["id"])  # fmt: skip


def _notification_event(r: RowMapping) -> Event:
    title = f"{r['kind']}: {r['summary']}"
    return Event(r["occurred_at"], "notification", title, r["severity"], None, r["severity"] == "critical")


# Each source of the timeline: its table, its time column, and how one row reads.
TIMELINE: list[tuple[sa.Table, str, Callable[[RowMapping], Event]]] = [
    (pushes, "started_at", _push_event),
    (datasets, "requested_at", _dataset_event),
    (alerts, "received_at", _alert_event),
    (notifications, "occurred_at", _notification_event),
]


@dataclass
class CompanyPage:
    health: CompanyHealth
    records_by_type: dict[str, dict[str, int]]
    recent_datasets: list[RowMapping]
    dead_jobs: list[RowMapping]
    timeline: list[Event]


async def company_page(engine: AsyncEngine, company_id: str) -> CompanyPage | None:
    """None when codat-relay knows nothing of this company."""
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(companies).where(companies.c.id == company_id))).mappings().first()
        health = {company_id: CompanyHealth(company_id, row)}
        await _fill(conn, health, company_id)
        by_type: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(RECORD_STATES, 0))
        counts = sa.select(records.c.data_type, records.c.state, sa.func.count()).where(
            records.c.company_id == company_id
        )
        for data_type, state, count in await conn.execute(counts.group_by(records.c.data_type, records.c.state)):
            by_type[data_type][state] = int(count)
        timeline: list[Event] = []
        for table, at, event in TIMELINE:
            query = sa.select(table).where(table.c.company_id == company_id).order_by(table.c[at].desc())
            timeline += [event(r) for r in (await conn.execute(query.limit(TIMELINE_PER_SOURCE))).mappings()]
        dead_jobs = [job for job in await _dead_jobs(conn) if job_company(job) == company_id]
        newest = sa.select(datasets).where(datasets.c.company_id == company_id).order_by(datasets.c.requested_at.desc())
        recent_datasets = list((await conn.execute(newest.limit(RECENT_DATASETS))).mappings().all())
    if row is None and not timeline and not by_type and not dead_jobs:
        return None
    health[company_id].dead_jobs = len(dead_jobs)
    timeline.sort(key=lambda e: e.at, reverse=True)
    return CompanyPage(health[company_id], dict(by_type), recent_datasets, dead_jobs, timeline)
