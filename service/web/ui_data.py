"""What the Sync Health pages show, read from the database: the companies' health and a company's timeline.

What makes a company *failing* is service/health.py's, shared with the admin API and the CLI.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import health, problems
from service.codat.models import ERROR_STATUSES
from service.db import alerts, companies, datasets, jobs, notifications, pushes, records
from service.db import problems as problems_table
from service.health import RECORD_STATES, CompanyHealth
from service.notifications import NOTIFY_JOB_KIND
from service.queue import ALERT_JOB_KIND, JobStatus
from service.types import AlertStatus

MAX_DEAD_JOBS = 200
RECENT_ALERTS = 20
COMPANY_PROBLEMS = 50
RESOLVED_SHOWN_S = 7 * 86400.0
OPEN_PROBLEMS = 100  # the newest open problems on the overview; `codat-relay problems list` has them all
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
    open_problems: list[dict[str, Any]] = field(default_factory=list)  # as the API shows them, with their age


def job_company(row: RowMapping) -> str | None:
    return health.job_company(row["payload"], row["lock_key"])


async def _dead_jobs(conn: AsyncConnection) -> list[RowMapping]:
    query = sa.select(jobs).where(jobs.c.status == JobStatus.DEAD.value).order_by(jobs.c.id.desc())
    return list((await conn.execute(query.limit(MAX_DEAD_JOBS))).mappings().all())


def _sort_key(company: CompanyHealth) -> tuple[bool, str]:
    return (not company.failing, company.id)  # failing first, then by id


async def overview(engine: AsyncEngine, query: health.CompanyQuery | None = None, now: float = 0.0) -> Overview:
    """One page of companies (failing first within it), as filtered; the dead jobs; the latest alerts; the
    open problems (newest first, their age as of `now`)."""
    page = await health.list_companies(engine, query or health.CompanyQuery())
    failing = await health.list_companies(engine, health.CompanyQuery(failing=True, limit=1))
    async with engine.connect() as conn:
        dead_jobs = await _dead_jobs(conn)
        recent = sa.select(alerts).order_by(alerts.c.received_at.desc(), alerts.c.id.desc()).limit(RECENT_ALERTS)
        recent_alerts = list((await conn.execute(recent)).mappings().all())
        listing = problems.listing(state=problems.State.OPEN, company_id=None, limit=OPEN_PROBLEMS)
        open_problems = [problems.problem_json(row, now) for row in (await conn.execute(listing)).mappings()]
    return Overview(sorted(page.results, key=_sort_key), dead_jobs, recent_alerts, page.total, page.next_cursor,
                    failing.total, open_problems)  # fmt: skip


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
    problems: list[dict[str, Any]] = field(default_factory=list)  # open, and resolved within RESOLVED_SHOWN_S


async def company_page(engine: AsyncEngine, company_id: str, now: float = 0.0) -> CompanyPage | None:
    """None when codat-relay knows nothing of this company; problems' ages as of `now`."""
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
        shown = problems.listing(state=None, company_id=company_id, limit=COMPANY_PROBLEMS).where(
            sa.or_(problems_table.c.resolved_at.is_(None), problems_table.c.resolved_at >= now - RESOLVED_SHOWN_S))
        company_problems = [problems.problem_json(r, now) for r in (await conn.execute(shown)).mappings()]
    if row is None and not timeline and not by_type and not dead_jobs:
        return None
    timeline.sort(key=lambda e: e.at, reverse=True)
    return CompanyPage(company, dict(by_type), recent_datasets, dead_jobs, timeline, bad_records, company_problems)


# -- an alert's page ---------------------------------------------------------------------------------------

NOTIFICATIONS_PER_PAGE = 50
# What each alert status means for the operator reading the page (service/types.AlertStatus's values).
OUTCOMES = {
    "pending": "Waiting for a worker: it runs as soon as the earlier alerts of its company are done.",
    "processing": "A worker is running its handler now.",
    "done": "Its handler ran to the end and applied what Codat said.",
    "ignored": "Nothing to do: no handler acts on this kind, or the handler found nothing to act on. "
    "It is kept; Replay runs it again (e.g. after an upgrade that understands it).",
    "dead": "Its handler failed on every attempt. Fix the cause (the last error says it), then Replay.",
}


@dataclass
class AlertPage:
    row: RowMapping
    body: str  # pretty-printed when it is JSON, else as received
    jobs: list[RowMapping]  # every job that ran it, newest first (a replay adds one)
    notifications: list[RowMapping]  # staff told about this alert (alert_dead)


def pretty_body(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace")
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


async def alert_page(engine: AsyncEngine, alert_id: str) -> AlertPage | None:
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(alerts).where(alerts.c.id == alert_id))).mappings().first()
        if row is None:
            return None
        ran = sa.select(jobs).where(jobs.c.kind == ALERT_JOB_KIND, jobs.c.payload["alert_id"].as_string() == alert_id)
        its_jobs = list((await conn.execute(ran.order_by(jobs.c.id.desc()))).mappings().all())
        told = sa.select(notifications).where(notifications.c.details["alertId"].as_string() == alert_id)
        notes = list((await conn.execute(told.order_by(notifications.c.occurred_at.desc()))).mappings().all())
    return AlertPage(row, pretty_body(bytes(row["body"])), its_jobs, notes)


# -- notifications ------------------------------------------------------------------------------------------


@dataclass
class NotificationsPage:
    rows: list[RowMapping]
    deliveries: dict[str, list[tuple[str, str]]]  # notification id → (sender, its notify job's status)
    total: int
    next_before: str | None  # the cursor of the next (older) page


@dataclass(frozen=True)
class NotificationQuery:
    kind: str | None = None
    severity: str | None = None
    company: str | None = None  # exact company id
    before: tuple[float, str] | None = None  # (occurred_at, id) of the last row of the previous page
    limit: int = NOTIFICATIONS_PER_PAGE


def encode_before(occurred_at: float, note_id: str) -> str:
    return f"{occurred_at!r}_{note_id}"


def decode_before(value: str) -> tuple[float, str]:
    """ValueError for anything encode_before did not make."""
    at, sep, note_id = value.partition("_")
    if not sep or not note_id:
        raise ValueError("before: not a cursor this page handed out")
    return float(at), note_id


async def notifications_page(engine: AsyncEngine, query: NotificationQuery) -> NotificationsPage:
    """Newest first; the filters combine with AND. A notification's delivery is its notify jobs' state
    (done jobs are pruned after a week: then nothing is shown)."""
    where = []
    if query.kind:
        where.append(notifications.c.kind == query.kind)
    if query.severity:
        where.append(notifications.c.severity == query.severity)
    if query.company:
        where.append(notifications.c.company_id == query.company)
    async with engine.connect() as conn:
        total = int(await conn.scalar(sa.select(sa.func.count()).select_from(notifications).where(*where)) or 0)
        page = sa.select(notifications).where(*where)
        if query.before is not None:
            at, note_id = query.before
            older = sa.or_(notifications.c.occurred_at < at,
                           sa.and_(notifications.c.occurred_at == at, notifications.c.id < note_id))  # fmt: skip
            page = page.where(older)
        page = page.order_by(notifications.c.occurred_at.desc(), notifications.c.id.desc()).limit(query.limit + 1)
        rows = list((await conn.execute(page)).mappings().all())
        ids = [r["id"] for r in rows[: query.limit]]
        note_of = jobs.c.payload["notification_id"].as_string()
        sent = sa.select(note_of, jobs.c.payload["sender"].as_string(), jobs.c.status).where(
            jobs.c.kind == NOTIFY_JOB_KIND, note_of.in_(ids)
        )
        deliveries: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for note_id, sender, status in (await conn.execute(sent.order_by(jobs.c.id))) if ids else []:
            deliveries[note_id].append((sender, status))
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    cursor = encode_before(rows[-1]["occurred_at"], rows[-1]["id"]) if more else None
    return NotificationsPage(rows, dict(deliveries), total, cursor)
