"""What the Sync Health pages show, read from the database: the companies' health and a company's timeline.

What makes a company *failing* is service/health.py's, shared with the admin API and the CLI.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import health
from service.codat.models import ERROR_STATUSES
from service.db import alerts, companies, datasets, jobs, notifications, pushes, records
from service.health import RECORD_STATES, CompanyHealth
from service.queue import JobStatus
from service.types import AlertStatus

MAX_DEAD_JOBS = 200
RECENT_ALERTS = 20
RECENT_DATASETS = 20
TIMELINE_PER_SOURCE = 50
BAD_PUSH_OUTCOMES = frozenset({"abandoned", "rejected"})


@dataclass
class Overview:
    companies: list[CompanyHealth]
    dead_jobs: list[RowMapping]
    recent_alerts: list[RowMapping]
    total: int = 0  # companies matching the filters, every page
    next_cursor: str | None = None
    failing_total: int = 0  # failing companies in all, whatever the filters


def job_company(row: RowMapping) -> str | None:
    return health.job_company(row["payload"], row["lock_key"])


async def _dead_jobs(conn: AsyncConnection) -> list[RowMapping]:
    query = sa.select(jobs).where(jobs.c.status == JobStatus.DEAD.value).order_by(jobs.c.id.desc())
    return list((await conn.execute(query.limit(MAX_DEAD_JOBS))).mappings().all())


def _sort_key(company: CompanyHealth) -> tuple[bool, str]:
    return (not company.failing, company.id)  # failing first, then by id


async def overview(engine: AsyncEngine, query: health.CompanyQuery | None = None) -> Overview:
    """One page of companies (failing first within it), as filtered; the dead jobs; the latest alerts."""
    page = await health.list_companies(engine, query or health.CompanyQuery())
    failing = await health.list_companies(engine, health.CompanyQuery(failing=True, limit=1))
    async with engine.connect() as conn:
        dead_jobs = await _dead_jobs(conn)
        recent = sa.select(alerts).order_by(alerts.c.received_at.desc(), alerts.c.id.desc()).limit(RECENT_ALERTS)
        recent_alerts = list((await conn.execute(recent)).mappings().all())
    return Overview(sorted(page.results, key=_sort_key), dead_jobs, recent_alerts, page.total, page.next_cursor,
                    failing.total)  # fmt: skip


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


FAILED_RECORDS_SHOWN = 50


async def _bad_records(conn: AsyncConnection, company_id: str) -> list[dict[str, object]]:
    """Failed and conflicting records, with the dataset they were last pushed in and its error (newest first)."""
    query = (
        sa.select(records.c.record_id, records.c.data_type, records.c.state, records.c.updated_at,
                  records.c.dataset_id, datasets.c.status, datasets.c.error_message)
        .select_from(records.outerjoin(datasets, datasets.c.id == records.c.dataset_id))
        .where(records.c.company_id == company_id, records.c.state.in_(health.BAD_RECORD_STATES))
        .order_by(records.c.updated_at.desc(), records.c.record_id).limit(FAILED_RECORDS_SHOWN)
    )  # fmt: skip
    return [dict(r) for r in (await conn.execute(query)).mappings()]


@dataclass
class CompanyPage:
    health: CompanyHealth
    records_by_type: dict[str, dict[str, int]]
    recent_datasets: list[RowMapping]
    dead_jobs: list[RowMapping]
    timeline: list[Event]
    bad_records: list[dict[str, object]]


async def company_page(engine: AsyncEngine, company_id: str) -> CompanyPage | None:
    """None when codat-relay knows nothing of this company."""
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(companies).where(companies.c.id == company_id))).mappings().first()
        (company,) = await health.health_of(conn, [company_id], [company_id])
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
        bad_records = await _bad_records(conn, company_id)
    if row is None and not timeline and not by_type and not dead_jobs:
        return None
    timeline.sort(key=lambda e: e.at, reverse=True)
    return CompanyPage(company, dict(by_type), recent_datasets, dead_jobs, timeline, bad_records)
