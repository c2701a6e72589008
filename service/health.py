"""Which companies codat-relay knows, and whether a person should look at them.

One definition for the admin API (`GET /v1/companies`), the CLI (`companies list`) and the Sync Health
page. A company is *known* when it has a row in `companies` (records or connection events made one) or
when any alert names it: Codat told us about it, so an operator can look it up.

A company is *failing* when a person should look at it: the latest dataset of a data type ended in an
error status, one of its alerts or jobs is dead, its last sync's code is 4000 or above, its connection
was deleted, or records of it sit in `conflict` or `failed`. Only the latest dataset per data type
counts, so a re-push that completed clears the mark (records it could not carry stay `failed`).
Each reason is a *problem* with a kind from PROBLEM_KINDS, so lists can be filtered by it.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import keys
from service.clock import iso
from service.codat.models import ERROR_STATUSES, SYNC_STATUS_MEANINGS
from service.db import alerts, companies, datasets, jobs, records
from service.schedule_time import schedule_view

FAILING_SYNC_CODE = 4000
# The values of service/outbox.State in pipeline order, spelt out: this module only reads the column.
RECORD_STATES = ("pending", "pushed", "accepted", "synced", "failed", "conflict")
BAD_RECORD_STATES = ("failed", "conflict")
DEAD = "dead"  # the status of a dead alert and of a dead job alike
# The closed set of problem kinds, in the order a person would look at them.
PROBLEM_KINDS = (
    "connection_deleted", "dataset_failed", "sync_failed", "dead_alerts", "dead_jobs",
    "records_failed", "records_conflict",
)  # fmt: skip
DEFAULT_PAGE = 50
MAX_PAGE = 500


@dataclass(frozen=True)
class Problem:
    kind: str  # one of PROBLEM_KINDS
    message: str


def sync_meaning(code: int | None) -> str | None:
    return None if code is None else SYNC_STATUS_MEANINGS.get(code, "unknown code")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


@dataclass
class CompanyHealth:
    id: str
    row: RowMapping | None = None  # None: known only from its alerts or jobs
    records: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RECORD_STATES, 0))
    datasets: dict[str, int] = field(default_factory=dict)  # status → count
    errored_types: list[tuple[str, str]] = field(default_factory=list)  # (data type, status) of latest datasets
    dead_alerts: int = 0
    dead_jobs: int = 0
    last_alert_at: float | None = None

    def get(self, column: str) -> Any:
        return None if self.row is None else self.row[column]

    @property
    def paused(self) -> bool:
        return bool(self.get("paused"))

    @property
    def sync_meaning(self) -> str | None:
        return sync_meaning(self.get("last_sync_code"))

    @property
    def problems(self) -> list[Problem]:
        out = []
        if self.get("connection_deleted_at") is not None:
            out.append(Problem("connection_deleted", "connection deleted"))
        out += [Problem("dataset_failed", f"latest {t} dataset ended {s}") for t, s in self.errored_types]
        code = self.get("last_sync_code")
        if code is not None and code >= FAILING_SYNC_CODE:
            out.append(Problem("sync_failed", f"last sync {code}: {sync_meaning(code)}"))
        if self.dead_alerts:
            out.append(Problem("dead_alerts", _plural(self.dead_alerts, "dead alert")))
        if self.dead_jobs:
            out.append(Problem("dead_jobs", _plural(self.dead_jobs, "dead job")))
        for state in BAD_RECORD_STATES:
            if n := self.records.get(state):
                out.append(Problem(f"records_{state}", f"{_plural(n, 'record')} {state}"))
        return out

    @property
    def reasons(self) -> list[str]:
        return [p.message for p in self.problems]

    @property
    def failing(self) -> bool:
        return bool(self.problems)

    def summary(self) -> dict[str, Any]:
        """One company of `GET /v1/companies` and `codat-relay companies list --json`."""
        return {
            "id": self.id, "name": self.get("name"), "known": "outbox" if self.row is not None else "alerts",
            "paused": self.paused, "pauseReason": self.get("pause_reason"),
            "connection": {"id": self.get("connection_id"), "status": self.get("connection_status"),
                           "deletedAt": iso(self.get("connection_deleted_at"))},
            "lastSync": {"code": self.get("last_sync_code"), "meaning": self.sync_meaning,
                         "at": iso(self.get("last_sync_at")), "checkedAt": iso(self.get("last_sync_checked_at"))},
            "records": dict(self.records), "failing": self.failing,
            "problems": [{"kind": p.kind, "message": p.message} for p in self.problems],
            "nextSyncAt": iso(self.get("next_sync_at")), "syncSchedule": schedule_view(self.row),
            "lastAlertAt": iso(self.last_alert_at), "updatedAt": iso(self.get("updated_at")),
        }  # fmt: skip


def job_company(payload: Any, lock_key: str | None) -> str | None:
    """Which company a job works for, from its payload or its lock key (`company:ID`, `push:ID:TYPE`)."""
    if isinstance(payload, dict) and isinstance(payload.get("company_id"), str):
        return str(payload["company_id"])
    return keys.company_of(lock_key)


def _scoped(query: sa.Select[Any], column: sa.ColumnElement[Any], ids: list[str] | None) -> sa.Select[Any]:
    return query if ids is None else query.where(column.in_(ids))


async def fill(conn: AsyncConnection, health: dict[str, CompanyHealth], only: list[str] | None = None) -> None:
    """Record and dataset counts, errored latest datasets, dead alerts and jobs, for the companies in `health`.

    `only` narrows the queries to those ids (one company's page); None reads every company at once.
    """
    by_state = sa.select(records.c.company_id, records.c.state, sa.func.count())
    for cid, state, n in await conn.execute(_scoped(by_state, records.c.company_id, only).group_by(
            records.c.company_id, records.c.state)):  # fmt: skip
        if cid in health:
            health[cid].records[state] = int(n)
    by_status = sa.select(datasets.c.company_id, datasets.c.status, sa.func.count())
    for cid, status, n in await conn.execute(_scoped(by_status, datasets.c.company_id, only).group_by(
            datasets.c.company_id, datasets.c.status)):  # fmt: skip
        if cid in health:
            health[cid].datasets[status] = int(n)
    newest = sa.func.row_number().over(
        partition_by=(datasets.c.company_id, datasets.c.data_type), order_by=datasets.c.requested_at.desc()
    )
    ranked = _scoped(
        sa.select(datasets.c.company_id, datasets.c.data_type, datasets.c.status, newest.label("rank")),
        datasets.c.company_id, only,
    ).subquery()  # fmt: skip
    latest_errors = sa.select(ranked.c.company_id, ranked.c.data_type, ranked.c.status).where(
        ranked.c.rank == 1, ranked.c.status.in_(sorted(ERROR_STATUSES))
    )
    for cid, data_type, status in await conn.execute(latest_errors.order_by(ranked.c.data_type)):
        if cid in health:
            health[cid].errored_types.append((data_type, status))
    by_alerts = sa.select(
        alerts.c.company_id, sa.func.count().filter(alerts.c.status == DEAD), sa.func.max(alerts.c.received_at)
    ).where(alerts.c.company_id.is_not(None))
    for cid, dead, last in await conn.execute(_scoped(by_alerts, alerts.c.company_id, only).group_by(
            alerts.c.company_id)):  # fmt: skip
        if cid in health:
            health[cid].dead_alerts, health[cid].last_alert_at = int(dead or 0), last
    dead_jobs = sa.select(jobs.c.payload, jobs.c.lock_key).where(jobs.c.status == DEAD)
    for payload, lock_key in await conn.execute(dead_jobs):
        if (cid := job_company(payload, lock_key)) in health:
            health[cid].dead_jobs += 1


def _like(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, its own `%`, `_` and `\\` taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped.lower()}%"


async def known_ids(conn: AsyncConnection, search: str | None = None, paused: bool | None = None) -> list[str]:
    """Every known company id (a `companies` row or any alert naming it), in id order, narrowed as asked."""
    from_rows = sa.select(companies.c.id.label("id"))
    from_alerts = sa.select(alerts.c.company_id.label("id")).where(alerts.c.company_id.is_not(None))
    if paused is True:
        return await _ids(conn, from_rows.where(companies.c.paused.is_(True)), search)
    if paused is False:  # not paused: a row that is not, or known from alerts alone
        from_rows = from_rows.where(companies.c.paused.is_(False))
        from_alerts = from_alerts.where(alerts.c.company_id.not_in(sa.select(companies.c.id).where(
            companies.c.paused.is_(True))))  # fmt: skip
    return await _ids(conn, sa.union(from_rows, from_alerts), search)


async def _ids(conn: AsyncConnection, query: sa.Select[Any] | sa.CompoundSelect[Any], search: str | None) -> list[str]:
    known = query.subquery()
    select = sa.select(known.c.id)
    if search:
        # The id or Codat's name of the company (service/schedules.py stores it), any case.
        named = sa.select(companies.c.id).where(sa.func.lower(companies.c.name).like(_like(search), escape="\\"))
        select = select.where(sa.or_(sa.func.lower(known.c.id).like(_like(search), escape="\\"), known.c.id.in_(named)))
    # Sorted here, not by the database: PostgreSQL's collation and Python's `>` (the cursor) must agree.
    return sorted(str(i) for i in (await conn.execute(select)).scalars())


@dataclass(frozen=True)
class CompanyQuery:
    """`GET /v1/companies`' filters: all optional, combined with AND."""

    search: str | None = None  # part of the id or of the name, any case
    paused: bool | None = None
    failing: bool | None = None
    problem: str | None = None  # one of PROBLEM_KINDS
    limit: int = DEFAULT_PAGE
    cursor: str | None = None  # from the previous page's nextCursor


@dataclass
class CompanyPage:
    results: list[CompanyHealth]
    total: int  # how many match the filters in all (every page)
    next_cursor: str | None

    def answer(self) -> dict[str, Any]:
        return {"results": [c.summary() for c in self.results], "total": self.total,
                "nextCursor": self.next_cursor}  # fmt: skip


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The last id of the previous page; ValueError for anything we did not hand out."""
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise ValueError("cursor: not one this API handed out (use nextCursor as given)") from None


def _matches(company: CompanyHealth, query: CompanyQuery) -> bool:
    if query.failing is not None and company.failing != query.failing:
        return False
    return query.problem is None or any(p.kind == query.problem for p in company.problems)


async def health_of(conn: AsyncConnection, ids: Iterable[str], only: list[str] | None = None) -> list[CompanyHealth]:
    ids = list(ids)
    rows = {}
    for start in range(0, len(ids), 500):  # bound the IN list
        chunk = ids[start : start + 500]
        rows.update({r["id"]: r for r in (await conn.execute(
            sa.select(companies).where(companies.c.id.in_(chunk)))).mappings()})  # fmt: skip
    health = {cid: CompanyHealth(cid, rows.get(cid)) for cid in ids}
    await fill(conn, health, only)
    return list(health.values())


async def list_companies(engine: AsyncEngine, query: CompanyQuery) -> CompanyPage:
    """One page of known companies in id order, with how many match in all.

    Failing and problem filters need every candidate's health; it is read with one grouped query per
    table for all companies at once, so a list costs the same few queries at any page.
    """
    after = decode_cursor(query.cursor) if query.cursor else None
    async with engine.connect() as conn:
        ids = await known_ids(conn, query.search, query.paused)
        if query.failing is None and query.problem is None:
            matching_ids = ids
            shown = [i for i in ids if after is None or i > after][: query.limit + 1]
            page = await health_of(conn, shown, shown if len(shown) <= 500 else None)
        else:
            every = [c for c in await health_of(conn, ids) if _matches(c, query)]
            matching_ids = [c.id for c in every]
            page = [c for c in every if after is None or c.id > after][: query.limit + 1]
    more = len(page) > query.limit
    page = page[: query.limit]
    return CompanyPage(page, len(matching_ids), encode_cursor(page[-1].id) if more and page else None)


async def is_known(conn: AsyncConnection, company_id: str) -> bool:
    """A `companies` row, or any alert naming it."""
    row = await conn.scalar(sa.select(companies.c.id).where(companies.c.id == company_id))
    if row is not None:
        return True
    return await conn.scalar(sa.select(alerts.c.id).where(alerts.c.company_id == company_id).limit(1)) is not None
