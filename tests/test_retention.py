"""The retention prune on an injected clock: what is past its window goes, what is inside it or still needed
stays, on SQLite and PostgreSQL; SQLite gives the space back."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service import metrics
from service.alert_index import AlertIndexer
from service.clock import FixedClock
from service.db import (
    alert_texts,
    alerts,
    create_engine,
    datasets,
    jobs,
    notification_dedupe,
    notifications,
    problems,
    push_records,
    pushes,
    records,
)
from service.retention import DAY_S, Pace, Pruner, Retention
from service.testing import running_app
from service.web.app import AppOptions
from tests import ui_factories as make
from tests.conftest import make_settings
from tests.queue_helpers import eventually

NOW = 1_800_000_000.0
RETENTION = Retention()  # the defaults: alerts 30 d, jobs 7 d, pushes 30 d, versions 30 d, datasets 90 d, notes 90 d


def pruner(engine: AsyncEngine, retention: Retention = RETENTION, **options: Any) -> Pruner:
    return Pruner(engine, retention, FixedClock(NOW), pace=Pace.fixed(engine.url, 1_000), **options)


def old(window_s: float | None) -> float:
    assert window_s is not None
    return NOW - window_s - 1.0  # just past the window


def recent(window_s: float | None) -> float:
    assert window_s is not None
    return NOW - window_s + 1.0  # just inside it


def push(conn: sa.Connection, push_id: str, at: float, *, dataset_id: str | None, finished: bool = True,
         company_id: str = "co-1", versions: dict[str, int] | None = None) -> None:  # fmt: skip
    conn.execute(pushes.insert().values(
        id=push_id, company_id=company_id, data_type="orders", dataset_id=dataset_id, record_count=1,
        reason="intake", started_at=at, finished_at=at if finished else None, outcome="pushed" if finished else "open",
    ))  # fmt: skip
    for record_id, version in (versions or {}).items():
        conn.execute(push_records.insert().values(push_id=push_id, record_id=record_id, version=version,
                                                  content_hash=f"h{version}"))  # fmt: skip


def notification(conn: sa.Connection, note_id: str, at: float, company_id: str = "co-1") -> None:
    conn.execute(notifications.insert().values(
        id=note_id, kind="dataset_failed", severity="warning", company_id=company_id, dedupe_key=f"k-{note_id}",
        summary="s", details={}, occurred_at=at,
    ))  # fmt: skip


async def ids(engine: AsyncEngine, column: sa.ColumnElement[Any]) -> set[Any]:
    async with engine.connect() as conn:
        return set((await conn.execute(sa.select(column))).scalars())


async def test_each_table_keeps_what_is_inside_its_window_and_prunes_what_is_past_it(engine: AsyncEngine) -> None:
    """At each table's boundary: a row one second past its window goes, one a second inside it stays."""
    r = RETENTION

    def build(conn: sa.Connection) -> None:
        make.alert(conn, "a-old", "co-1", "done", old(r.alerts_s))
        make.alert(conn, "a-ignored-old", "co-1", "ignored", old(r.alerts_s))
        make.alert(conn, "a-new", "co-1", "done", recent(r.alerts_s))
        for name, at in (("old", old(r.jobs_s)), ("new", recent(r.jobs_s))):
            conn.execute(jobs.insert().values(kind="notify", payload={"n": name}, status="done", attempts=1,
                                              run_at=at, created_at=at, finished_at=at))  # fmt: skip
        make.dataset(conn, "d-old", "co-1", "Complete", old(r.datasets_s))
        make.dataset(conn, "d-new", "co-1", "Complete", recent(r.datasets_s))
        notification(conn, "n-old", old(r.notifications_s))
        notification(conn, "n-new", recent(r.notifications_s))
        conn.execute(notification_dedupe.insert(), [{"key": "k-old", "last_sent_at": old(r.notifications_s)},
                                                     {"key": "k-new", "last_sent_at": recent(r.notifications_s)}])
        push(conn, "p-old", old(r.pushes_s), dataset_id="d-new", versions={"o-1": 1})
        push(conn, "p-new", recent(r.pushes_s), dataset_id="d-new", versions={"o-2": 1})

    async with engine.begin() as conn:
        await conn.run_sync(build)
    pruned = await pruner(engine).run()

    assert await ids(engine, alerts.c.id) == {"a-new"}
    assert await ids(engine, jobs.c.payload["n"].as_string()) == {"new"}
    assert await ids(engine, datasets.c.id) == {"d-new"}
    assert await ids(engine, notifications.c.id) == {"n-new"}
    assert await ids(engine, notification_dedupe.c.key) == {"k-new"}
    assert await ids(engine, pushes.c.id) == {"p-new"}
    assert await ids(engine, push_records.c.push_id) == {"p-new"}
    assert {k: v for k, v in pruned.items() if k != "sqlite_pages"} == {
        "jobs": 1, "alerts": 2, "notifications": 1, "notification_dedupe": 1, "push_records": 1, "pushes": 1,
        "datasets": 1, "problems": 0,
    }


async def test_nothing_still_needed_is_pruned_however_old(engine: AsyncEngine) -> None:
    """Unprocessed and dead alerts, waiting/running/dead jobs, a notification still to be delivered, an unfinished
    dataset and its push, a push with a record in flight, and every record (current versions) stay."""
    ancient = NOW - 400 * DAY_S

    def build(conn: sa.Connection) -> None:
        for status in ("pending", "processing", "dead"):
            make.alert(conn, f"a-{status}", "co-1", status, ancient)
        for status in ("waiting", "running", "dead"):
            conn.execute(jobs.insert().values(kind="alert", payload={"n": status}, status=status, attempts=1,
                                              run_at=ancient, created_at=ancient, finished_at=ancient))  # fmt: skip
        notification(conn, "n-undelivered", ancient)
        conn.execute(jobs.insert().values(kind="notify", payload={"notification_id": "n-undelivered", "sender": "log"},
                                          status="waiting", attempts=3, run_at=NOW, created_at=ancient))  # fmt: skip
        make.dataset(conn, "d-open", "co-1", "Processing", ancient)
        push(conn, "p-open-dataset", ancient, dataset_id="d-open", versions={"o-1": 1})
        push(conn, "p-unfinished", ancient, dataset_id=None, finished=False, versions={"o-2": 1})
        make.dataset(conn, "d-done", "co-1", "Complete", NOW)
        push(conn, "p-in-flight", ancient, dataset_id="d-done", versions={"o-3": 1})
        make.record(conn, "co-1", "o-3", "pushed", ancient)
        conn.execute(records.update().values(inflight=True, push_id="p-in-flight", updated_at=ancient))

    async with engine.begin() as conn:
        await conn.run_sync(build)
    await pruner(engine).run()

    assert await ids(engine, alerts.c.id) == {"a-pending", "a-processing", "a-dead"}
    assert await ids(engine, jobs.c.status) == {"waiting", "running", "dead"}
    assert await ids(engine, notifications.c.id) == {"n-undelivered"}
    assert await ids(engine, datasets.c.id) == {"d-open", "d-done"}
    assert await ids(engine, pushes.c.id) == {"p-open-dataset", "p-unfinished", "p-in-flight"}
    assert await ids(engine, push_records.c.record_id) == {"o-1", "o-2", "o-3"}
    assert await ids(engine, records.c.record_id) == {"o-3"}


def problem(conn: sa.Connection, problem_id: str, subject: str, at: float, *, resolved_at: float | None) -> None:
    conn.execute(problems.insert().values(
        id=problem_id, kind="alert_dead", company_id="co-1", subject=subject, key=f"k-{problem_id}",
        summary="s", opened_at=at, last_seen_at=at, resolved_at=resolved_at,
    ))  # fmt: skip


async def test_what_an_unresolved_problem_names_stays_and_a_resolved_problem_goes_with_the_notifications(
    engine: AsyncEngine,
) -> None:
    """An alert or dataset an unresolved problem names (its subject), and the notification that told it, stay
    however old; once the problem resolved past the notifications' window, the problem and they go."""
    ancient = NOW - 400 * DAY_S

    def build(conn: sa.Connection) -> None:
        make.alert(conn, "a-named", "co-1", "done", ancient)
        make.alert(conn, "a-was-named", "co-1", "done", ancient)
        make.dataset(conn, "d-named", "co-1", "ValidationError", ancient)
        problem(conn, "p-open", "a-named", ancient, resolved_at=None)
        problem(conn, "p-open-dataset", "d-named", ancient, resolved_at=None)
        problem(conn, "p-resolved-long-ago", "a-was-named", ancient, resolved_at=ancient)
        problem(conn, "p-resolved-lately", "x", ancient, resolved_at=recent(RETENTION.notifications_s))
        notification(conn, "n-open", ancient)
        notification(conn, "n-resolved", ancient)
        conn.execute(notifications.update().where(notifications.c.id == "n-open").values(problem_id="p-open"))
        conn.execute(notifications.update().where(notifications.c.id == "n-resolved")
                     .values(problem_id="p-resolved-long-ago"))  # fmt: skip

    async with engine.begin() as conn:
        await conn.run_sync(build)
    pruned = await pruner(engine).run()

    assert await ids(engine, alerts.c.id) == {"a-named"}
    assert await ids(engine, datasets.c.id) == {"d-named"}
    assert await ids(engine, notifications.c.id) == {"n-open"}
    assert await ids(engine, problems.c.id) == {"p-open", "p-open-dataset", "p-resolved-lately"}
    assert pruned["problems"] == 1


async def test_superseded_versions_go_and_the_current_version_stays(engine: AsyncEngine) -> None:
    """With push history kept forever, an old push's version of a record since changed goes; the version that is
    still the record's current one stays (a sync learnt of late asks which version Codat held)."""
    keep_pushes = Retention(pushes_s=None)
    at = old(keep_pushes.record_versions_s)

    def build(conn: sa.Connection) -> None:
        make.dataset(conn, "d-1", "co-1", "Complete", at)
        push(conn, "p-1", at, dataset_id="d-1", versions={"o-changed": 1, "o-same": 1})
        make.record(conn, "co-1", "o-changed", "accepted", at)
        make.record(conn, "co-1", "o-same", "accepted", at)
        conn.execute(records.update().where(records.c.record_id == "o-changed").values(version=2))

    async with engine.begin() as conn:
        await conn.run_sync(build)
    pruned = await pruner(engine, keep_pushes).run()

    assert await ids(engine, push_records.c.record_id) == {"o-same"}
    assert pruned["push_records"] == 1 and await ids(engine, pushes.c.id) == {"p-1"}


async def test_batches_are_bounded_and_counted_per_table(engine: AsyncEngine) -> None:
    """2,500 old alerts go in batches of at most 1,000 rows (three statements), and relay_pruned_rows_total counts
    them under table="alerts"."""
    at = old(RETENTION.alerts_s)
    rows = [{"id": f"a-{i}", "kind": "other", "type": "t", "shape": "legacy", "company_id": "co-1",
             "data_types": [], "received_at": at, "status": "done", "updated_at": at, "body": b"{}"}
            for i in range(2_500)]  # fmt: skip
    async with engine.begin() as conn:
        await conn.execute(alerts.insert(), rows)
    before = metrics.REGISTRY.get_sample_value("relay_pruned_rows_total", {"table": "alerts"}) or 0.0
    statements: list[int] = []
    real = Pruner._drain

    async def counting(self: Pruner, table: str, deadline: float, batch: Any) -> int:
        async def one(rows: int) -> int:
            removed: int = await batch(rows)
            statements.append(removed)
            return removed

        return await real(self, table, deadline, one if table == "alerts" else batch)

    Pruner._drain = counting  # type: ignore[method-assign]
    try:
        await pruner(engine).run()
    finally:
        Pruner._drain = real  # type: ignore[method-assign]
    assert statements == [1_000, 1_000, 500]
    after = metrics.REGISTRY.get_sample_value("relay_pruned_rows_total", {"table": "alerts"})
    assert after == before + 2_500


async def test_zero_days_keeps_a_table_forever(engine: AsyncEngine) -> None:
    """RELAY_RETAIN_ALERTS_DAYS=0 turns the alerts' pruning off; the other tables are still pruned."""
    settings = make_settings(retain_alerts_days=0)
    retention = Retention.from_settings(settings)
    assert retention.alerts_s is None and retention.jobs_s == 7 * DAY_S

    def build(conn: sa.Connection) -> None:
        make.alert(conn, "a-ancient", "co-1", "done", NOW - 4_000 * DAY_S)
        make.dataset(conn, "d-ancient", "co-1", "Complete", NOW - 4_000 * DAY_S)

    async with engine.begin() as conn:
        await conn.run_sync(build)
    await pruner(engine, retention).run()
    assert await ids(engine, alerts.c.id) == {"a-ancient"}
    assert await ids(engine, datasets.c.id) == set()


async def test_sqlite_gives_the_space_back(tmp_path: Any, sqlite_template: Any) -> None:
    """After pruning 20 MiB of alert bodies (and their text index) the SQLite file shrinks: migration 0014 made it
    auto_vacuum=INCREMENTAL and the prune merges the FTS5 index, then runs incremental_vacuum until no page is
    free."""
    path = tmp_path / "space.db"
    shutil.copy(sqlite_template, path)
    engine = create_engine(make_settings(f"sqlite+aiosqlite:///{path}"))
    try:
        async with engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA auto_vacuum")).scalar() == 2
        at = old(RETENTION.alerts_s)
        body = json.dumps({"pad": "x" * 10_000}).encode()
        async with engine.begin() as conn:
            await conn.execute(alerts.insert(), [
                {"id": f"a-{i}", "kind": "other", "type": "t", "shape": "legacy", "company_id": "co-1",
                 "data_types": [], "received_at": at, "status": "done", "updated_at": at, "body": body}
                for i in range(2_000)])  # fmt: skip

        async def pages() -> int:
            async with engine.connect() as conn:
                return int((await conn.exec_driver_sql("PRAGMA page_count")).scalar() or 0)

        # Indexed for alert search too: the prune's deletes go through the FTS5 table, whose pages come free
        # only once its segments are merged (`_merge_search_index`).
        assert await AlertIndexer(engine, FixedClock(NOW)).run() == 2_000
        full = await pages()
        pruned = await pruner(engine).run()
        assert pruned["alerts"] == 2_000
        assert pruned["sqlite_pages"] > 0
        assert await pages() < full / 4
        async with engine.connect() as conn:
            assert (await conn.execute(sa.select(sa.func.count()).select_from(alert_texts))).scalar() == 0
    finally:
        await engine.dispose()


async def test_the_worker_runs_the_prune_as_its_periodic_job(database_url: str) -> None:
    """`serve`'s worker schedules `prune_jobs` when it starts and runs it: an alert past its window goes, one
    inside it stays, and the next run waits an hour."""
    settings = make_settings(database_url)
    setup = create_engine(settings)
    async with setup.begin() as conn:
        await conn.run_sync(lambda sync: (make.alert(sync, "a-old", "co-1", "done", old(RETENTION.alerts_s)),
                                          make.alert(sync, "a-new", "co-1", "done", recent(RETENTION.alerts_s))))
    await setup.dispose()
    async with running_app(settings, clock=FixedClock(NOW), options=AppOptions(run_workers=True)) as (app, _):
        engine = app.state.runtime.engine

        async def pruned() -> bool:
            return await ids(engine, alerts.c.id) == {"a-new"}

        await eventually(pruned)
        async with engine.connect() as conn:
            waiting = (await conn.execute(sa.select(jobs.c.run_at).where(
                jobs.c.kind == "prune_jobs", jobs.c.status == "waiting"))).scalars().all()  # fmt: skip
        assert waiting == [NOW + 3600]


async def test_the_prune_sizes_its_batches_and_pauses_by_how_long_each_held_the_database(engine: AsyncEngine) -> None:
    """Issue 17: the prune must not slow the receiver. A batch that held the database longer than HOLD_S
    makes the next one smaller (a quick one, up to twice as large, never over BATCH_ROWS), and the pause
    after each is at least PAUSE_S and at least (1 - DUTY) / DUTY times the batch: the prune holds the
    database at most a DUTY share of the time. Timer and sleep are injected: each row costs 0.1 ms."""
    now, slept, sizes = [0.0], [], []
    left = [1_000]

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    async def batch(rows: int) -> int:
        sizes.append(rows)
        removed = min(rows, left[0])
        left[0] -= removed
        now[0] += removed * 1e-4
        return removed

    pace = Pace("sqlite+aiosqlite:///pace-test.db", hold_s=0.004, duty=0.05, pause_s=0.1,
                timer=lambda: now[0], sleep=sleep)  # fmt: skip
    removed = await Pruner(engine, RETENTION, FixedClock(NOW), pace=pace)._drain("alerts", float("inf"), batch)
    assert removed == 1_000 and left == [0]
    assert sizes[:3] == [100, 40, 40]  # 100 rows held 10 ms: the next batch is sized to 4 ms
    assert slept[0] == pytest.approx(0.19) and slept[1] == pytest.approx(0.1)  # 19x 10 ms, then the floor
    held = sum(sizes) * 1e-4
    assert held / (held + sum(slept)) <= 0.05


async def test_a_quick_batch_at_most_doubles_the_next_and_the_size_stays_within_bounds() -> None:
    now = [0.0]
    pace = Pace("sqlite+aiosqlite://", max_rows=1_000, hold_s=0.004, timer=lambda: now[0])

    async def held_for(seconds: float) -> None:
        async def work() -> int:
            now[0] += seconds
            return 0

        await pace.hold(work)

    assert pace.first_rows() == 100
    await held_for(0.0005)  # far quicker than the aim
    assert pace.next_rows(100) == 200 and pace.next_rows(800) == 1_000
    await held_for(10.0)  # a batch stuck behind something
    assert pace.next_rows(100) == 10
    assert Pace.fixed("sqlite+aiosqlite://", 500).next_rows(7) == 500
