"""Bulk replay of alerts and bulk retry of dead jobs: by filter, dry-run first, paced, resumable.

A run is a row of `replay_runs` (this module is its only writer): its target (`alerts` or `jobs`), its
filter, and a cursor — the (time, id) of the last item acted on. Items are taken in (time, id) order
after the cursor, and each item's replay commits in ONE transaction with the cursor's move, so a run
interrupted at any point (Ctrl-C, a crash, a deploy) and started again with its id acts on every item
exactly once. A run's filter is fixed when it is created, and so is its end: a filter without `until`
gets the creation time, so a resumed run does not chase alerts that arrived since. A dry run counts
what a run created at that moment would act on, and shows a sample of the first ids.

The alerts' time is `received_at`; the jobs' is `created_at`. Jobs change only through service/queue.py.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import queue
from service.clock import Clock, iso
from service.db import alerts, jobs, replay_runs, writer
from service.dispatch import replay_alert_in
from service.errors import InvalidRequest, NotFound, Rejected
from service.queue import ALERT_JOB_KIND, JobStatus
from service.types import AlertStatus

ALERTS, JOBS = "alerts", "jobs"
BATCH = 100  # items read per query; each is still replayed in its own transaction
SAMPLE = 10  # ids a dry run shows
MAX_RATE = 1000.0  # items per second; a replay is a few writes, and the workers must keep up
RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")  # replay_runs.id
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class Filter:
    """What to act on. For alerts every field applies; for jobs `kind` is the job kind, `status` is dead."""

    kind: str | None = None
    company: str | None = None
    status: str | None = None
    since: float | None = None  # UNIX seconds, inclusive
    until: float | None = None  # exclusive

    def frozen(self, now: float) -> Filter:
        """The filter a run keeps: its end fixed at `now` at the latest."""
        return Filter(self.kind, self.company, self.status, self.since,
                      min(self.until, now) if self.until is not None else now)


@dataclass(frozen=True)
class Run:
    id: str
    target: str
    filter: Filter
    cursor_at: float | None
    cursor_id: str | None
    done: int
    finished: bool


def _source(target: str) -> tuple[sa.Table, sa.Column[Any], sa.Column[Any]]:
    """The table, its time column and its id column."""
    if target == ALERTS:
        return alerts, alerts.c.received_at, alerts.c.id
    return jobs, jobs.c.created_at, jobs.c.id


def _where(target: str, flt: Filter) -> list[sa.ColumnElement[bool]]:
    _, at, _ = _source(target)
    where: list[sa.ColumnElement[bool]] = []
    if flt.since is not None:
        where.append(at >= flt.since)
    if flt.until is not None:
        where.append(at < flt.until)
    if target == ALERTS:
        for column, value in ((alerts.c.kind, flt.kind), (alerts.c.company_id, flt.company),
                              (alerts.c.status, flt.status)):  # fmt: skip
            if value is not None:
                where.append(column == value)
        return where
    where.append(jobs.c.status == JobStatus.DEAD.value)  # only a dead job can be retried
    if flt.kind is not None:
        where.append(jobs.c.kind == flt.kind)
    return where


def _after(target: str, cursor_at: float | None, cursor_id: Any) -> list[sa.ColumnElement[bool]]:
    _, at, ident = _source(target)
    if cursor_at is None:
        return []
    if target == JOBS:
        cursor_id = int(cursor_id)  # stored as text beside the alerts' ids
    return [sa.or_(at > cursor_at, sa.and_(at == cursor_at, ident > cursor_id))]


async def preview(engine: AsyncEngine, target: str, flt: Filter, now: float) -> dict[str, Any]:
    """The dry run: how many items a run created now would act on, and the first ids (in its order)."""
    frozen = flt.frozen(now)
    table, at, ident = _source(target)
    where = _where(target, frozen)
    async with engine.connect() as conn:
        count = int(await conn.scalar(sa.select(sa.func.count()).select_from(table).where(*where)) or 0)
        sample = list((await conn.execute(sa.select(ident).where(*where).order_by(at, ident).limit(SAMPLE))).scalars())
    return {"dryRun": True, "count": count, "sample": sample, "filter": filter_json(frozen)}


def filter_json(flt: Filter) -> dict[str, Any]:
    return {"kind": flt.kind, "companyId": flt.company, "status": flt.status, "since": iso(flt.since),
            "until": iso(flt.until)}  # fmt: skip


def _run(row: RowMapping) -> Run:
    return Run(row["id"], row["target"], Filter(**row["filters"]), row["cursor_at"], row["cursor_id"], row["done"],
               row["finished_at"] is not None)  # fmt: skip


async def open_run(engine: AsyncEngine, target: str, flt: Filter, now: float, run_id: str | None = None) -> Run:
    """Create a run (its filter frozen now), or take up the run `run_id` where it stopped.

    A run id that names no run creates one with that id, so a script can pick the id before the first
    attempt and simply rerun the same command after an interruption. A known run keeps its own filter:
    a different filter given with its id is refused rather than silently ignored.
    """
    if run_id is not None and not RUN_ID.fullmatch(run_id):
        raise InvalidRequest("runId: 1 to 32 letters, digits, '-' or '_'")
    async with writer(engine).begin() as conn:
        if run_id is not None:
            row = (await conn.execute(sa.select(replay_runs).where(replay_runs.c.id == run_id))).mappings().first()
            if row is not None:
                run = _run(row)
                if run.target != target:
                    raise InvalidRequest(f"runId: run {run_id} is a bulk {run.target} run, not {target}")
                given = asdict(flt)
                if any(value is not None and given[name] != getattr(run.filter, name)
                       for name, value in given.items() if name != "until"):  # fmt: skip
                    raise InvalidRequest(f"runId: run {run_id} has another filter; resume it with none or the same")
                return run
        run = Run(run_id or uuid.uuid4().hex, target, flt.frozen(now), None, None, 0, False)
        await conn.execute(replay_runs.insert().values(
            id=run.id, target=target, filters=asdict(run.filter), done=0, created_at=now, updated_at=now,
        ))  # fmt: skip
    return run


async def remaining(engine: AsyncEngine, run: Run) -> int:
    table, _, _ = _source(run.target)
    where = [*_where(run.target, run.filter), *_after(run.target, run.cursor_at, run.cursor_id)]
    async with engine.connect() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(table).where(*where)) or 0)


class RunTaken(Rejected):
    """Another process moved this run's cursor: it carries the run on; this one stops."""

    status_code = 409
    code = "run_taken"


def _at_cursor(cursor_at: float | None, cursor_id: Any) -> sa.ColumnElement[bool]:
    if cursor_at is None:
        return replay_runs.c.cursor_at.is_(None)
    return sa.and_(replay_runs.c.cursor_at == cursor_at, replay_runs.c.cursor_id == str(cursor_id))


class Pacer:
    """At most `rate` items a second, evenly: item n starts no earlier than start + n/rate."""

    def __init__(self, rate: float | None, clock: Clock, sleep: Sleep = asyncio.sleep) -> None:
        if rate is not None and not 0 < rate <= MAX_RATE:
            raise InvalidRequest(f"rate: items per second, more than 0 and at most {MAX_RATE:g}")
        self._rate, self._clock, self._sleep = rate, clock, sleep
        self._start: float | None = None
        self._n = 0

    async def wait(self) -> None:
        if self._rate is None:
            return
        now = self._clock.now()
        if self._start is None:
            self._start = now
        due = self._start + self._n / self._rate
        if due > now:
            await self._sleep(due - now)
        self._n += 1


async def execute(
    engine: AsyncEngine, run: Run, clock: Clock, pacer: Pacer,
    progress: Callable[[int, str], None] | None = None,
) -> Run:  # fmt: skip
    """Act on every item of the run after its cursor, paced; returns the run as it ended (finished)."""
    _, at, ident = _source(run.target)
    cursor_at, cursor_id, done = run.cursor_at, run.cursor_id, run.done
    while True:
        query = (sa.select(at.label("at"), ident.label("id"))
                 .where(*_where(run.target, run.filter), *_after(run.target, cursor_at, cursor_id))
                 .order_by(at, ident).limit(BATCH))  # fmt: skip
        async with engine.connect() as conn:
            batch = (await conn.execute(query)).all()
        if not batch:
            break
        for item in batch:
            await pacer.wait()
            now = clock.now()
            async with writer(engine).begin() as conn:
                # Compare-and-set first: the cursor must still be where this run left it. Two processes
                # resuming one run would otherwise both replay the same items; the second one stops here.
                moved = await conn.execute(replay_runs.update().where(
                    replay_runs.c.id == run.id, _at_cursor(cursor_at, cursor_id),
                ).values(cursor_at=item.at, cursor_id=str(item.id), done=done + 1, updated_at=now))  # fmt: skip
                if not moved.rowcount:
                    raise RunTaken(f"replay run {run.id} is being carried out elsewhere")
                await _act(conn, run.target, item.id, now)
                done += 1
            cursor_at, cursor_id = item.at, item.id
            if progress is not None:
                progress(done, str(item.id))
    now = clock.now()
    async with writer(engine).begin() as conn:
        await conn.execute(replay_runs.update().where(replay_runs.c.id == run.id)
                           .values(finished_at=now, updated_at=now))  # fmt: skip
    return Run(run.id, run.target, run.filter, cursor_at, None if cursor_id is None else str(cursor_id), done, True)


async def _act(conn: AsyncConnection, target: str, item_id: Any, now: float) -> None:
    if target == ALERTS:
        await replay_alert_in(conn, str(item_id), now)
        return
    row = (await conn.execute(sa.select(jobs).where(jobs.c.id == item_id))).mappings().first()
    if row is None or row["status"] != JobStatus.DEAD.value:
        return  # retried or pruned meanwhile: nothing to do, the cursor moves on
    try:
        async with conn.begin_nested():
            await revive_dead(conn, row, now)
    except IntegrityError:
        await queue.close_dead(conn, int(item_id), now)  # a waiting job holds its queueing lock: it does the work


async def revive_dead(conn: AsyncConnection, row: RowMapping, now: float) -> None:
    """Back to waiting, run now, attempts from zero; its last error is kept until the next run."""
    await queue.retry_dead(conn, row["id"], now)
    if row["kind"] == ALERT_JOB_KIND and (alert_id := row["payload"].get("alert_id")) is not None:
        # The alert's status follows its job (service/dispatch.py): dead with it, pending again with it.
        await conn.execute(
            alerts.update().where(alerts.c.id == str(alert_id))
            .values(status=AlertStatus.PENDING.value, updated_at=now)
        )  # fmt: skip


async def show_run(engine: AsyncEngine, run_id: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(replay_runs).where(replay_runs.c.id == run_id))).mappings().first()
    if row is None:
        raise NotFound(f"no replay run {run_id}")
    return run_json(_run(row))


def run_json(run: Run) -> dict[str, Any]:
    return {"runId": run.id, "target": run.target, "filter": filter_json(run.filter), "done": run.done,
            "cursor": {"at": iso(run.cursor_at), "id": run.cursor_id}, "finished": run.finished}  # fmt: skip
