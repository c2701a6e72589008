"""Retention: how long each kind of history is kept (`RELAY_RETAIN_*`), and the periodic prune.

The prune is a periodic queue job (`queue.PRUNE_KIND`, hourly, whichever worker claims it). It must
not slow the webhook receiver, so it takes a small, measured share of the database (`Pace`): each batch
is its own short transaction, sized to hold the write lock about HOLD_S (at most BATCH_ROWS rows), and
followed by a pause at least (1 - DUTY) / DUTY times as long as the batch took, so the prune holds the
database at most a DUTY share of the time. On SQLite each batch also waits for this process's write
turn (`db.sqlite_write_turn`), queueing behind the receiver's group commit instead of making it sleep in
SQLite's busy handler. bench_retention measures the receiver's p99 with and without a prune running.
A run stops after RUN_BUDGET_S; what is left goes at the next run.

Nothing still needed goes: a record's current version (`records` is never pruned); an alert not yet
processed, or dead (it waits to be replayed); a job waiting, running or dead; a notification a waiting
delivery job will send; a push or dataset not finished, and the version history of either.

Space: PostgreSQL's autovacuum reuses what small deletes free (per-table thresholds: migration 0014);
SQLite gives freed pages back to the file system with `PRAGMA incremental_vacuum`, a few at a time.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import metrics, problems, queue, record_states
from service.clock import Clock
from service.db import (
    alerts,
    bookkeeper,
    datasets,
    jobs,
    notification_dedupe,
    notifications,
    pushes,
    records,
    sqlite_write_turn,
)
from service.notifications import NOTIFY_JOB_KIND
from service.settings import Settings
from service.types import AlertStatus

log = structlog.get_logger("service.retention")

DAY_S = 86_400.0
BATCH_ROWS = 250  # rows per delete statement, at most (each batch's WAL is flushed by the receiver's next commit)
FIRST_ROWS = 100  # the first batch of each table; later ones are sized by how long the last one took
MIN_ROWS = 10
HOLD_S = 0.004  # a batch's aim: the write lock held about this long
DUTY = 0.05  # the prune's share of the database's time, at most (a pause of 19x each batch after it)
PUSHES_PER_BATCH = 50  # pushes per batch: each takes its version history (up to 5,000 rows) with it
PAUSE_S = 0.1  # after each batch, at least: a waiting writer (the receiver) takes the lock meanwhile
RUN_BUDGET_S = 300.0  # one run's work; a backlog (retention just turned on) goes over several runs
FTS_MERGE_PAGES = 256  # pages of alert search's FTS5 index (`alert_texts_fts`) merged per step, in one short
# write transaction
VACUUM_PAGES = 64  # pages given back per `PRAGMA incremental_vacuum` step (256 KiB at 4 KiB pages): a step holds
# the write lock while it moves pages, so steps stay small (bench_retention: 64 and 256 within noise)
PRUNABLE_ALERTS = (AlertStatus.DONE.value, AlertStatus.IGNORED.value)
ACTIVE_JOBS = ("waiting", "running")


@dataclass(frozen=True)
class Retention:
    """Seconds each kind of history is kept; None keeps it forever (`RELAY_RETAIN_*_DAYS=0`)."""

    alerts_s: float | None = 30 * DAY_S
    jobs_s: float | None = 7 * DAY_S
    pushes_s: float | None = 30 * DAY_S
    record_versions_s: float | None = 30 * DAY_S
    datasets_s: float | None = 90 * DAY_S
    notifications_s: float | None = 90 * DAY_S

    @classmethod
    def from_settings(cls, settings: Settings) -> Retention:
        def window(days: float) -> float | None:
            return days * DAY_S if days > 0 else None

        return cls(
            alerts_s=window(settings.retain_alerts_days), jobs_s=window(settings.retain_jobs_days),
            pushes_s=window(settings.retain_pushes_days),
            record_versions_s=window(settings.retain_record_versions_days),
            datasets_s=window(settings.retain_datasets_days),
            notifications_s=window(settings.retain_notifications_days),
        )  # fmt: skip


Step = Callable[[AsyncConnection, float, int], Awaitable[int]]
Batch = Callable[[int], Awaitable[int]]  # deletes at most that many rows; returns how many


class Pace:
    """The prune's share of the database: batches sized to a hold time, and a pause after each.

    `hold_s=None` keeps every batch at `max_rows` (tests that count statements). `timer` and `sleep` are
    injectable so the pacing itself is tested without a clock.
    """

    def __init__(
        self, url: str | sa.URL, *, max_rows: int = BATCH_ROWS, hold_s: float | None = HOLD_S, duty: float = DUTY,
        pause_s: float = PAUSE_S, timer: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:  # fmt: skip
        self._url, self._max_rows, self._hold_s, self._duty = url, max_rows, hold_s, duty
        self._pause_s, self._timer, self._sleep = pause_s, timer, sleep
        self._took = 0.0

    @classmethod
    def fixed(cls, url: str | sa.URL, max_rows: int = BATCH_ROWS) -> Pace:
        """Batches of `max_rows` with no pause: tests, and bench_retention's simulated days (nothing else runs)."""
        return cls(url, max_rows=max_rows, hold_s=None, duty=1.0, pause_s=0.0)

    def first_rows(self) -> int:
        return self._max_rows if self._hold_s is None else min(FIRST_ROWS, self._max_rows)

    def next_rows(self, rows: int) -> int:
        """The next batch's size: scaled by how the last one's hold time compared with HOLD_S (at most
        doubled at a time, at least MIN_ROWS, at most `max_rows`)."""
        if self._hold_s is None:
            return self._max_rows
        scaled = rows * 2 if self._took <= 0 else round(rows * min(2.0, self._hold_s / self._took))
        return max(min(MIN_ROWS, self._max_rows), min(self._max_rows, scaled))

    async def hold(self, work: Callable[[], Awaitable[int]]) -> int:
        """Run one write transaction in this process's SQLite write turn, timing how long it held the lock."""
        async with sqlite_write_turn(self._url):
            started = self._timer()
            done = await work()
            self._took = self._timer() - started
        return done

    async def rest(self) -> None:
        """The pause after a batch: a throttle, not a wait for work."""
        await self._sleep(max(self._pause_s, self._took * (1 - self._duty) / self._duty))


async def _alerts(conn: AsyncConnection, before: float, limit: int) -> int:
    # An alert an unresolved problem names (its subject) stays until the problem resolves.
    old = sa.select(alerts.c.id).where(alerts.c.status.in_(PRUNABLE_ALERTS), alerts.c.received_at < before,
                                       alerts.c.id.not_in(problems.unresolved_subjects()))  # fmt: skip
    return int((await conn.execute(alerts.delete().where(alerts.c.id.in_(old.limit(limit))))).rowcount)


async def _notifications(conn: AsyncConnection, before: float, limit: int) -> int:
    pending = sa.exists().where(
        jobs.c.status.in_(ACTIVE_JOBS), jobs.c.kind == NOTIFY_JOB_KIND,
        jobs.c.payload["notification_id"].as_string() == notifications.c.id,
    )  # fmt: skip
    # A notification that told a problem not yet resolved stays with it (the problem's history).
    told_open = notifications.c.problem_id.in_(problems.unresolved_ids())
    old = sa.select(notifications.c.id).where(notifications.c.occurred_at < before, ~pending,
                                              ~sa.func.coalesce(told_open, False)).limit(limit)  # fmt: skip
    return int((await conn.execute(notifications.delete().where(notifications.c.id.in_(old)))).rowcount)


async def _dedupe(conn: AsyncConnection, before: float, limit: int) -> int:
    # A window that ended this long ago decides nothing: the next claim would start a new one anyway.
    old = sa.select(notification_dedupe.c.key).where(notification_dedupe.c.last_sent_at < before).limit(limit)
    stmt = notification_dedupe.delete().where(notification_dedupe.c.key.in_(old))
    return int((await conn.execute(stmt)).rowcount)


def _finished_pushes(before: float) -> sa.Select[Any]:
    """Pushes finished before `before` whose dataset (if any) has ended and with no record in flight."""
    open_dataset = sa.exists().where(datasets.c.id == pushes.c.dataset_id, datasets.c.terminal.is_(False))
    in_flight = sa.exists().where(records.c.push_id == pushes.c.id, records.c.inflight.is_(True))
    return sa.select(pushes.c.id).where(
        pushes.c.started_at < before, pushes.c.finished_at.is_not(None), pushes.c.finished_at < before,
        ~open_dataset, ~in_flight,
    ).order_by(pushes.c.started_at)  # fmt: skip


async def _datasets(conn: AsyncConnection, before: float, limit: int) -> int:
    # A dataset an unresolved problem names (its subject) stays until the problem resolves.
    old = sa.select(datasets.c.id).where(datasets.c.terminal.is_(True), datasets.c.updated_at < before,
                                         datasets.c.id.not_in(problems.unresolved_subjects())).limit(limit)  # fmt: skip
    return int((await conn.execute(datasets.delete().where(datasets.c.id.in_(old)))).rowcount)


class Pruner:
    """One retention run: every table in batches, then (SQLite) space back to the file system.

    Also the `prune_jobs` job function: `await pruner(job, attempt)`.
    """

    def __init__(
        self, engine: AsyncEngine, retention: Retention, clock: Clock, *, pace: Pace | None = None,
        budget_s: float = RUN_BUDGET_S, vacuum_pages: int = VACUUM_PAGES,
    ) -> None:  # fmt: skip
        self._engine, self._retention, self._clock = engine, retention, clock
        self._budget_s, self._vacuum_pages = budget_s, vacuum_pages
        self._pace = pace or Pace(engine.url)

    async def __call__(self, _job: queue.Job, _attempt: int) -> None:
        await self.run()

    async def run(self) -> dict[str, int]:
        """Prune what is past its window; returns rows deleted per table (and SQLite pages given back)."""
        now, r = self._clock.now(), self._retention
        deadline = time.monotonic() + self._budget_s
        pruned: dict[str, int] = {}
        if r.jobs_s is not None:
            pruned["jobs"] = await self._drain("jobs", deadline, self._jobs_step(now - r.jobs_s))
        if r.alerts_s is not None:
            pruned["alerts"] = await self._drain("alerts", deadline, self._step(_alerts, now - r.alerts_s))
        if r.notifications_s is not None:
            before = now - r.notifications_s
            pruned["notifications"] = await self._drain("notifications", deadline, self._step(_notifications, before))
            pruned["notification_dedupe"] = await self._drain("notification_dedupe", deadline,
                                                              self._step(_dedupe, before))  # fmt: skip
            pruned["problems"] = await self._drain("problems", deadline, self._step(problems.prune_resolved, before))
        if r.record_versions_s is not None:
            step = self._step(record_states.prune_superseded_versions, now - r.record_versions_s)
            pruned["push_records"] = await self._drain("push_records", deadline, step)
        if r.pushes_s is not None:
            pushes_gone, versions_gone = await self._pushes(now - r.pushes_s, deadline)
            pruned["pushes"] = pushes_gone
            pruned["push_records"] = pruned.get("push_records", 0) + versions_gone
        if r.datasets_s is not None:
            pruned["datasets"] = await self._drain("datasets", deadline, self._step(_datasets, now - r.datasets_s))
        if self._engine.dialect.name == "sqlite":
            pruned["sqlite_pages"] = await self.give_back_space(deadline)
        log.info("retention_pruned", **pruned)
        return pruned

    def _jobs_step(self, before: float) -> Batch:
        return lambda rows: queue.prune_batch(self._engine, before, rows)

    def _step(self, step: Step, before: float) -> Batch:
        async def one(rows: int) -> int:
            async with bookkeeper(self._engine).begin() as conn:
                return await step(conn, before, rows)

        return one

    async def _drain(self, table: str, deadline: float, batch: Batch) -> int:
        total, rows = 0, self._pace.first_rows()
        while time.monotonic() < deadline:
            removed = await self._pace.hold(functools.partial(batch, rows))
            total += removed
            metrics.PRUNED_ROWS.labels(table=table).inc(removed)
            if removed < rows:
                break
            rows = self._pace.next_rows(rows)
            await self._pace.rest()
        return total

    async def _pushes(self, before: float, deadline: float) -> tuple[int, int]:
        """Old finished pushes, each with its version history: the history in batches, then the push."""
        pushes_gone = versions_gone = 0
        while time.monotonic() < deadline:
            async with self._engine.connect() as conn:
                ids = list((await conn.execute(_finished_pushes(before).limit(PUSHES_PER_BATCH))).scalars())
            for push_id in ids:
                versions_gone += await self._drain("push_records", deadline, self._push_versions(push_id))
                gone = await self._pace.hold(self._push_row(push_id))
                pushes_gone += gone
                metrics.PRUNED_ROWS.labels(table="pushes").inc(gone)
            if len(ids) < PUSHES_PER_BATCH:
                break
            await self._pace.rest()
        return pushes_gone, versions_gone

    def _push_versions(self, push_id: str) -> Batch:
        async def one(rows: int) -> int:
            async with bookkeeper(self._engine).begin() as conn:
                return await record_states.delete_push_versions(conn, push_id, rows)

        return one

    def _push_row(self, push_id: str) -> Callable[[], Awaitable[int]]:
        async def one() -> int:
            async with bookkeeper(self._engine).begin() as conn:
                return int((await conn.execute(pushes.delete().where(pushes.c.id == push_id))).rowcount)

        return one

    async def give_back_space(self, deadline: float | None = None) -> int:
        """SQLite: return free pages to the file system, VACUUM_PAGES per step; returns pages given back."""
        await self._merge_search_index(deadline)
        given = 0
        while deadline is None or time.monotonic() < deadline:
            step = await self._pace.hold(self._vacuum_step)
            given += step
            if step <= 0:
                break  # nothing free, or auto_vacuum is not INCREMENTAL (a database the migration has not reached)
            await self._pace.rest()
        return given

    async def _vacuum_step(self) -> int:
        async with self._engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None
            free = await _freelist(driver)
            if free == 0:
                return 0
            # executescript, not execute: the driver steps a PRAGMA without result rows only once, which
            # frees one page; a script is run to its end (in its own short write transaction).
            await driver.executescript(f"PRAGMA incremental_vacuum({self._vacuum_pages});")
            return max(0, free - await _freelist(driver))

    async def _merge_search_index(self, deadline: float | None) -> None:
        """SQLite: fold the deletes of pruned alerts into alert search's FTS5 index (`alert_texts_fts`,
        migration 0013; its delete trigger records them).

        FTS5 records a delete as a marker beside the entries it cancels; the pages come free only when
        segments merge. `('merge', -N)` merges about N pages of any segments per step (FTS5 docs, "The
        'merge' Command"); a step that changes nothing but its own row means the index is merged.
        """
        while deadline is None or time.monotonic() < deadline:
            if await self._pace.hold(self._merge_step) <= 1:
                return
            await self._pace.rest()

    async def _merge_step(self) -> int:
        """One FTS5 merge step; the rows it changed (0: there is no index)."""
        async with bookkeeper(self._engine).begin() as conn:  # BEGIN IMMEDIATE: waits its turn to write
            if (await conn.exec_driver_sql(
                    "SELECT 1 FROM sqlite_master WHERE name = 'alert_texts_fts'")).first() is None:  # fmt: skip
                return 0
            before = int((await conn.exec_driver_sql("SELECT total_changes()")).scalar() or 0)
            await conn.exec_driver_sql(
                "INSERT INTO alert_texts_fts(alert_texts_fts, rank) VALUES ('merge', ?)", (-FTS_MERGE_PAGES,))
            return int((await conn.exec_driver_sql("SELECT total_changes()")).scalar() or 0) - before


async def _freelist(driver: Any) -> int:
    cursor = await driver.execute("PRAGMA freelist_count")
    row = await cursor.fetchone()
    await cursor.close()
    return int(row[0])
