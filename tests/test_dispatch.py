"""The alert job: alert status follows the job (pending → processing → done | ignored | dead)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from asyncpg.prepared_stmt import PreparedStatement
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import queue
from service.clock import FixedClock
from service.db import alerts, create_engine, loop_engine
from service.dispatch import make_alert_job, replay_alert
from service.keys import alert_lock
from service.queue import ALERT_JOB_KIND, Job
from service.retry import RetryPolicy
from service.types import Alert, AlertKind, AlertStatus, Context, Handler, Outcome
from service.worker import Worker
from tests.conftest import make_settings
from tests.queue_helpers import RecordingNotifier, eventually, job_rows, running

T0 = 1_750_000_000.0


@dataclass
class Deps:
    engine: AsyncEngine
    clock: FixedClock
    notifier: Any = None
    codat: Any = None
    tracker: Any = None


async def store_alert(engine: AsyncEngine, alert_id: str = "a1", kind: str = "dataset_status") -> None:
    row = {
        "id": alert_id, "kind": kind, "type": "read.completed", "shape": "envelope", "company_id": "C1",
        "connection_id": "K1", "dataset_id": "D1", "dataset_status": "Complete",
        "data_types": [
            {"data_type": "orders", "status": "Complete", "dataset_id": "D1", "connection_id": "K1"}
        ],
        "generated_at": T0 - 5, "received_at": T0, "updated_at": T0, "status": "pending", "attempts": 0,
        "body": b'{"id": "a1"}',
    }  # fmt: skip
    async with engine.begin() as conn:
        await conn.execute(sa.insert(alerts), row)


async def alert_state(engine: AsyncEngine, alert_id: str = "a1") -> tuple[str, int, str | None]:
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(alerts).where(alerts.c.id == alert_id))).one()
    return row.status, row.attempts, row.last_error


def alert_job(alert_id: str = "a1", attempt: int = 1) -> Job:
    return Job(attempt, ALERT_JOB_KIND, {"alert_id": alert_id}, "company:C1", None, attempt, T0, T0)


def registry(handler: Handler) -> dict[AlertKind, Handler]:
    return {AlertKind.DATASET_STATUS: handler}


@pytest.mark.parametrize(("outcome", "status"), [(Outcome.DONE, "done"), (Outcome.IGNORED, "ignored")])
async def test_handler_outcome_sets_status(engine: AsyncEngine, outcome: Outcome, status: str) -> None:
    """The handler sees the alert as processing; its outcome becomes the alert's status."""
    seen: list[tuple[Alert, Context, tuple[str, int, str | None]]] = []

    async def handler(alert: Alert, ctx: Context) -> Outcome:
        seen.append((alert, ctx, await alert_state(engine)))
        return outcome

    await store_alert(engine)
    deps = Deps(engine, FixedClock(T0), tracker="T")
    await make_alert_job(registry(handler), deps)(alert_job(attempt=2), 2)
    [(alert, ctx, during)] = seen
    assert during == ("processing", 1, None)
    assert (alert.delivery_id, alert.company_id) == ("a1", "C1")
    assert (alert.data_type, alert.dataset_id) == ("orders", "D1")
    assert alert.body == b'{"id": "a1"}'
    assert (ctx.attempt, ctx.clock, ctx.tracker) == (2, deps.clock, "T")
    assert await alert_state(engine) == (status, 1, None)


async def test_kind_without_handler_is_ignored(engine: AsyncEngine) -> None:
    """An alert whose kind has no handler ends ignored, its run still counted."""
    await store_alert(engine, kind="other")
    await make_alert_job({}, Deps(engine, FixedClock(T0)))(alert_job(), 1)
    assert await alert_state(engine) == ("ignored", 1, None)


async def test_failure_returns_to_pending_then_dead(engine: AsyncEngine) -> None:
    """A failing handler leaves the alert pending with its error; when the job dies, the alert is dead."""

    async def handler(alert: Alert, ctx: Context) -> Outcome:
        raise RuntimeError("upstream down")

    await store_alert(engine)
    job_function = make_alert_job(registry(handler), Deps(engine, FixedClock(T0)))
    with pytest.raises(RuntimeError):
        await job_function(alert_job(), 1)
    assert await alert_state(engine) == ("pending", 1, "RuntimeError: upstream down")
    await job_function.job_dead(alert_job(), "RuntimeError: upstream down")
    assert await alert_state(engine) == ("dead", 1, "RuntimeError: upstream down")


async def test_worker_counts_attempts_until_dead(engine: AsyncEngine) -> None:
    """Through a worker: each failed run is counted on the alert, which ends dead after max attempts."""
    calls = []

    async def handler(alert: Alert, ctx: Context) -> Outcome:
        calls.append(ctx.attempt)
        raise RuntimeError(f"fail {ctx.attempt}")

    await store_alert(engine)
    await queue.enqueue(engine, ALERT_JOB_KIND, {"alert_id": "a1"}, now=T0, lock_key=alert_lock("C1"))
    clock = FixedClock(T0)
    job_function = make_alert_job(registry(handler), Deps(engine, clock))
    worker = Worker(
        engine, {ALERT_JOB_KIND: job_function}, concurrency=2, lease_s=30, clock=clock,
        notifier=RecordingNotifier(), retry=RetryPolicy(base_s=0, cap_s=0, max_attempts=3), poll_interval_s=0.05,
    )  # fmt: skip
    async with running(worker):
        await eventually(lambda: _alert_is(engine, "dead"))
    assert calls == [1, 2, 3]
    assert await alert_state(engine) == ("dead", 3, "RuntimeError: fail 3")


async def test_through_a_worker_the_alert_moves_with_its_job(engine: AsyncEngine) -> None:
    """Under a worker, the alert is `processing` exactly while its job runs and `done` when the job is:
    each status is written in the queue's own transaction (claim, completion), for every alert of a batch."""
    gate = asyncio.Event()
    seen: dict[str, tuple[str, str]] = {}

    async def handler(alert: Alert, ctx: Context) -> Outcome:
        seen[alert.delivery_id] = ((await alert_state(engine, alert.delivery_id))[0], await _job_status(engine, alert))
        await gate.wait()
        return Outcome.DONE

    for n in range(3):
        await store_alert(engine, f"a{n}")
        await queue.enqueue(engine, ALERT_JOB_KIND, {"alert_id": f"a{n}"}, now=T0, lock_key=alert_lock(f"C{n}"))
    clock = FixedClock(T0)
    worker = Worker(
        engine, {ALERT_JOB_KIND: make_alert_job(registry(handler), Deps(engine, clock))}, concurrency=4, lease_s=30,
        retry=RetryPolicy(max_attempts=3), clock=clock, notifier=RecordingNotifier(), poll_interval_s=0.05,
    )  # fmt: skip
    async with running(worker):
        await eventually(lambda: _true(len(seen) == 3))
        gate.set()
        await eventually(lambda: _all_alerts_are(engine, "done"))
        assert {status for status in (await _job_statuses(engine))} == {"done"}
    assert seen == {f"a{n}": ("processing", "running") for n in range(3)}
    assert [await alert_state(engine, f"a{n}") for n in range(3)] == [("done", 1, None)] * 3


async def test_a_stopped_run_puts_the_alert_back_to_pending(engine: AsyncEngine) -> None:
    """A handler cancelled by shutdown leaves its alert pending (its job waits again), not processing."""
    started = asyncio.Event()

    async def handler(alert: Alert, ctx: Context) -> Outcome:
        started.set()
        await asyncio.Event().wait()  # never finishes by itself
        return Outcome.DONE

    await store_alert(engine)
    await queue.enqueue(engine, ALERT_JOB_KIND, {"alert_id": "a1"}, now=T0, lock_key=alert_lock("C1"))
    clock = FixedClock(T0)
    worker = Worker(
        engine, {ALERT_JOB_KIND: make_alert_job(registry(handler), Deps(engine, clock))}, concurrency=1, lease_s=30,
        retry=RetryPolicy(max_attempts=3), clock=clock, notifier=RecordingNotifier(), poll_interval_s=0.05, grace_s=0.0,
    )  # fmt: skip
    async with running(worker):
        await asyncio.wait_for(started.wait(), 15)
    assert (await alert_state(engine))[0] == "pending"
    assert [(job.status, job.attempts) for job in await job_rows(engine)] == [("waiting", 0)]


async def _true(value: bool) -> bool:
    return value


async def _job_status(engine: AsyncEngine, alert: Alert) -> str:
    for job in await job_rows(engine):
        if job.payload["alert_id"] == alert.delivery_id:
            return str(job.status)
    raise AssertionError(f"no job for {alert.delivery_id}")


async def _job_statuses(engine: AsyncEngine) -> list[str]:
    return [str(job.status) for job in await job_rows(engine)]


async def _all_alerts_are(engine: AsyncEngine, status: str) -> bool:
    async with engine.connect() as conn:
        return set((await conn.execute(sa.select(alerts.c.status))).scalars()) == {status}


async def test_replay_queues_a_new_job(engine: AsyncEngine) -> None:
    """Replaying an alert puts it back to pending with a new job under its company's lock key."""
    await store_alert(engine)
    async with engine.begin() as conn:
        await conn.execute(alerts.update().values(status="done", attempts=1))
    assert await replay_alert(engine, "a1", T0 + 10)
    assert (await alert_state(engine))[0] == "pending"
    [job] = await job_rows(engine)
    assert (job.kind, job.payload) == ("alert", {"alert_id": "a1"})
    assert (job.lock_key, job.status) == ("company:C1", "waiting")


async def test_replay_reparses_what_an_older_version_kept_as_other(engine: AsyncEngine) -> None:
    """An alert stored as `other` (a shape an older codat-relay did not know) is parsed again on replay:
    it gets its kind, company and data types, and its job the company's lock key."""
    body = (b'{"id": "e1", "eventType": "read.completed", "generatedDate": "2026-01-01T00:00:00Z", "payload": '
            b'{"referenceCompany": {"id": "C9"}, '
            b'"dataTypes": [{"dataType": "commerce-orders", "status": "Complete"}]}}')
    row = {
        "id": "e1", "kind": "other", "type": "read.completed", "shape": "unknown", "company_id": None,
        "connection_id": None, "dataset_id": None, "dataset_status": None, "data_types": [], "generated_at": None,
        "received_at": T0, "updated_at": T0, "status": "ignored", "attempts": 0, "body": body,
    }  # fmt: skip
    async with engine.begin() as conn:
        await conn.execute(sa.insert(alerts), row)
    assert await replay_alert(engine, "e1", T0 + 10)
    async with engine.connect() as conn:
        stored = (await conn.execute(sa.select(alerts).where(alerts.c.id == "e1"))).mappings().one()
    assert (stored["kind"], stored["shape"], stored["company_id"], stored["status"]) == (
        "dataset_status", "envelope", "C9", "pending")
    assert [entry["data_type"] for entry in stored["data_types"]] == ["commerce-orders"]
    [job] = await job_rows(engine)
    assert (job.lock_key, job.status) == ("company:C9", "waiting")


async def test_replay_keeps_what_was_understood(engine: AsyncEngine) -> None:
    """A stored body that no longer parses into a known kind leaves the alert's fields as they were."""
    await store_alert(engine)  # its body, {"id": "a1"}, alone says nothing
    assert await replay_alert(engine, "a1", T0 + 10)
    async with engine.connect() as conn:
        stored = (await conn.execute(sa.select(alerts).where(alerts.c.id == "a1"))).mappings().one()
    assert (stored["kind"], stored["company_id"], stored["dataset_id"]) == ("dataset_status", "C1", "D1")


async def test_replay_supersedes_the_dead_job(engine: AsyncEngine) -> None:
    """Replaying a dead alert ends its dead job (kept with its error) and queues one new job: the
    dead-jobs list no longer shows work that is being done again."""
    await store_alert(engine)
    dead = await queue.enqueue(engine, ALERT_JOB_KIND, {"alert_id": "a1"}, now=T0, lock_key=alert_lock("C1"))
    [claimed] = await queue.claim(engine, "w1", 1, T0, 30.0)
    assert await queue.fail(engine, claimed, "boom", T0)
    async with engine.begin() as conn:
        await conn.execute(alerts.update().values(status="dead"))
    assert await replay_alert(engine, "a1", T0 + 10)
    [old, new] = await job_rows(engine)
    assert (old.id, old.status) == (dead, "done") and old.last_error.startswith("boom (superseded by job")
    assert (new.status, new.lock_key) == ("waiting", "company:C1")
    assert (await alert_state(engine))[0] == "pending"


async def test_replay_of_unknown_alert(engine: AsyncEngine) -> None:
    """Replaying an alert that does not exist changes nothing and says so."""
    assert not await replay_alert(engine, "nope", T0)
    assert await job_rows(engine) == []


async def test_missing_alert_finishes_quietly(engine: AsyncEngine) -> None:
    """A job for an alert that no longer exists has nothing to do."""
    await asyncio.wait_for(make_alert_job({}, Deps(engine, FixedClock(T0)))(alert_job("gone"), 1), 5)



async def _alert_is(engine: AsyncEngine, status: str) -> bool:
    return (await alert_state(engine))[0] == status


class SentStatements:
    """Every statement the process sends to PostgreSQL through asyncpg, however it is sent: straight on the
    connection (the worker's round) or as a prepared statement (SQLAlchemy's). An executemany counts one per
    row, as the server executes them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.texts: list[str] = []
        self.counting = False
        for owner, name in [(asyncpg.Connection, "execute"), (asyncpg.Connection, "fetch"),
                            (asyncpg.Connection, "executemany"), (PreparedStatement, "fetch"),
                            (PreparedStatement, "executemany")]:  # fmt: skip
            monkeypatch.setattr(owner, name, self._spy(getattr(owner, name), name == "executemany"))

    def _spy(self, send: Any, many: bool) -> Any:
        def text(target: Any, args: tuple[Any, ...]) -> str:
            return str(target.get_query() if isinstance(target, PreparedStatement) else args[0])

        async def spied(target: Any, *args: Any, **kwargs: Any) -> Any:
            if self.counting:
                rows = len(list(args[-1])) if many else 1
                self.texts.extend([" ".join(text(target, args).split())] * rows)
            return await send(target, *args, **kwargs)

        return spied


class SqliteStatements:
    """Every statement each SQLite connection of `engine` runs, as sqlite3 traces them (an executemany is one
    per row), from the next checkout on; the worker's rounds' connection (`db.loop_engine`) included."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.texts: list[str] = []
        self.counting = False

        def _trace(dbapi_connection: Any, record: Any, proxy: Any) -> None:
            dbapi_connection._connection._conn.set_trace_callback(self._traced)

        for traced in (engine, loop_engine(engine)):
            if traced is not None:
                sa.event.listen(traced.sync_engine, "checkout", _trace)

    def _traced(self, text: str) -> None:
        if self.counting:
            self.texts.append(" ".join(text.split()))


async def test_a_round_sends_six_statements_whatever_its_size(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's round of N alert jobs: BEGIN, the completion (on PostgreSQL its NOTIFY folded in), the
    alerts' outcomes (one statement, not one per alert), the claim, the alerts' start, COMMIT."""
    engine = create_engine(make_settings(database_url))
    sent = SentStatements(monkeypatch) if engine.dialect.name == "postgresql" else SqliteStatements(engine)

    async def handler(alert: Alert, ctx: Context) -> Outcome:
        return Outcome.DONE

    job_function = make_alert_job(registry(handler), Deps(engine, FixedClock(T0)))

    async def started(conn: AsyncConnection, claimed: list[Job]) -> None:
        await job_function.claimed(conn, claimed, T0)

    async def finished(conn: AsyncConnection, done: list[Job]) -> None:
        await job_function.finished(conn, [(job, AlertStatus.DONE) for job in done], T0)

    async def round_(done: list[Job]) -> list[Job]:
        _, claimed = await queue.turn(engine, "w1", done=done, now=T0, claim_limit=3, lease_s=30.0,
                                      on_done=finished, on_claimed=started)  # fmt: skip
        return claimed

    try:
        for n in range(9):
            await store_alert(engine, f"a{n}")
            await queue.enqueue(engine, ALERT_JOB_KIND, {"alert_id": f"a{n}"}, now=T0, lock_key=alert_lock(f"C{n}"))
        warm = await round_(await round_([]))  # every statement prepared once
        sent.counting = True
        last = await round_(warm)
        sent.counting = False
        assert len(last) == 3
        assert [await alert_state(engine, f"a{n}") for n in range(3, 6)] == [("done", 1, None)] * 3
        assert [await alert_state(engine, f"a{n}") for n in range(6, 9)] == [("processing", 1, None)] * 3
    finally:
        await engine.dispose()
    verbs = [text.split()[0].rstrip(";").upper() for text in sent.texts if not text.upper().startswith("PRAGMA")]
    assert verbs == ["BEGIN", "UPDATE", "UPDATE", "UPDATE", "UPDATE", "COMMIT"], sent.texts
    assert not [text for text in sent.texts if "NOTIFY" in text.upper().replace("PG_NOTIFY", "")]
