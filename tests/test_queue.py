"""The job queue's storage operations (explicit times) and the worker that applies them, on both backends."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from dataclasses import replace
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import metrics, queue
from service.clock import FixedClock, SystemClock
from service.db import create_engine, loop_engine, sqlite_path
from service.errors import GiveUp
from service.queue import Job
from service.retry import RetryPolicy
from service.worker import JobFunction, Periodic, Worker
from tests.conftest import make_settings
from tests.queue_helpers import RecordingNotifier, eventually, job_rows, running

T0 = 1_750_000_000.0
LEASE_S = 30.0
INSTANT = RetryPolicy(base_s=0.0, cap_s=0.0)


def make_worker(
    engine: AsyncEngine, jobs: dict[str, JobFunction], *, max_attempts: int = 3, **overrides: object
) -> Worker:
    """A worker retrying at once (`INSTANT`), `max_attempts` times, unless `retry` says otherwise."""
    options: dict[str, object] = {
        "concurrency": 4, "lease_s": LEASE_S, "clock": SystemClock(), "notifier": RecordingNotifier(),
        "retry": replace(INSTANT, max_attempts=max_attempts), "poll_interval_s": 0.05, "grace_s": 1.0,
    }  # fmt: skip
    options.update(overrides)
    return Worker(engine, jobs, **options)  # type: ignore[arg-type]


async def add(engine: AsyncEngine, lock_key: str | None = None, **kwargs: object) -> int:
    job_id = await queue.enqueue(engine, "test", {"n": 1}, now=T0, lock_key=lock_key, **kwargs)  # type: ignore[arg-type]
    assert job_id is not None
    return job_id


def ids(claimed: list[Job]) -> list[int]:
    return [job.id for job in claimed]


async def test_enqueue_claim_complete(engine: AsyncEngine) -> None:
    """Jobs are claimed oldest first as attempt 1, and once done are never claimed again."""
    first, second = await add(engine), await add(engine)
    claimed = await queue.claim(engine, "w1", 10, T0, LEASE_S)
    assert ids(claimed) == [first, second]
    assert [job.attempts for job in claimed] == [1, 1]
    assert claimed[0].payload == {"n": 1}
    assert await queue.complete(engine, claimed, T0 + 1) == 2
    assert await queue.claim(engine, "w1", 10, T0 + 2, LEASE_S) == []
    assert [row.status for row in await job_rows(engine)] == ["done", "done"]


async def test_a_round_commits_relaxed_without_a_set_local(engine: AsyncEngine) -> None:
    """A round's claim and completion relax their own commit (PostgreSQL synchronous_commit off, set by the
    statements rather than a `SET LOCAL` after BEGIN); a durable write elsewhere is unaffected."""
    if engine.dialect.name != "postgresql":
        pytest.skip("synchronous_commit is PostgreSQL's")
    seen: list[str] = []

    async def setting(conn: AsyncConnection, _: list[Job]) -> None:
        seen.append(str((await conn.exec_driver_sql("SHOW synchronous_commit")).scalar()))

    await add(engine)
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    sa.event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        _, claimed = await queue.turn(
            engine, "w1", done=(), now=T0, claim_limit=1, lease_s=LEASE_S, on_claimed=setting
        )  # fmt: skip
        await queue.turn(engine, "w1", done=claimed, now=T0 + 1, claim_limit=0, lease_s=LEASE_S, on_done=setting)
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", record)
    assert not [s for s in statements if s.startswith("SET")]
    async with engine.begin() as conn:
        durable = str((await conn.exec_driver_sql("SHOW synchronous_commit")).scalar())
    assert (seen, durable) == (["off", "off"], "on")


async def test_claim_respects_limit(engine: AsyncEngine) -> None:
    """A claim takes no more than its limit; the rest stay for the next one."""
    for _ in range(5):
        await add(engine)
    assert len(await queue.claim(engine, "w1", 3, T0, LEASE_S)) == 3
    assert len(await queue.claim(engine, "w2", 3, T0, LEASE_S)) == 2


async def test_scheduled_job_waits_for_run_at(engine: AsyncEngine) -> None:
    """A job scheduled for later is not claimable before its time."""
    job_id = await add(engine, run_at=T0 + 60)
    assert await queue.claim(engine, "w1", 10, T0 + 59, LEASE_S) == []
    assert ids(await queue.claim(engine, "w1", 10, T0 + 60, LEASE_S)) == [job_id]


async def test_expired_lease_is_reclaimed_as_a_new_attempt(engine: AsyncEngine) -> None:
    """A lost worker's job is claimed again after its lease; the old worker can no longer finish it."""
    job_id = await add(engine)
    [old] = await queue.claim(engine, "lost", 10, T0, 5.0)
    assert await queue.claim(engine, "w2", 10, T0 + 4, 5.0) == []
    [new] = await queue.claim(engine, "w2", 10, T0 + 6, 5.0)
    assert (new.id, new.attempts, new.last_error) == (job_id, 2, queue.LEASE_LOST)
    assert await queue.complete(engine, [old], T0 + 7) == 0  # fenced by attempt
    assert await queue.complete(engine, [new], T0 + 7) == 1


async def test_heartbeat_extends_the_lease(engine: AsyncEngine) -> None:
    """A heartbeating worker keeps its job beyond the original lease."""
    await add(engine)
    claimed = await queue.claim(engine, "w1", 10, T0, 5.0)
    assert await queue.heartbeat(engine, claimed, T0 + 4, 5.0) == 1
    assert await queue.claim(engine, "w2", 10, T0 + 6, 5.0) == []
    assert len(await queue.claim(engine, "w2", 10, T0 + 10, 5.0)) == 1


async def test_heartbeat_never_extends_a_lost_job(engine: AsyncEngine) -> None:
    """A worker whose lease expired and whose job was claimed again cannot extend the new attempt's lease."""
    await add(engine)
    [old] = await queue.claim(engine, "w1", 10, T0, 5.0)
    [new] = await queue.claim(engine, "w1", 10, T0 + 6, 5.0)  # same worker id, a newer attempt
    assert await queue.heartbeat(engine, [old], T0 + 7, 100.0) == 0
    assert await queue.heartbeat(engine, [new], T0 + 7, 100.0) == 1


async def test_one_job_per_key_in_enqueue_order(engine: AsyncEngine) -> None:
    """Only the oldest job of a key is claimable, and only while no job of that key runs."""
    a1, a2 = await add(engine, "a"), await add(engine, "a")
    b1, free = await add(engine, "b"), await add(engine)
    first = await queue.claim(engine, "w1", 10, T0, LEASE_S)
    assert ids(first) == [a1, b1, free]
    assert await queue.claim(engine, "w2", 10, T0, LEASE_S) == []
    await queue.complete(engine, first[:1], T0)
    assert ids(await queue.claim(engine, "w2", 10, T0, LEASE_S)) == [a2]


async def test_a_retrying_job_holds_back_its_key(engine: AsyncEngine) -> None:
    """While a job backs off, later jobs of its key wait behind it; other keys go on."""
    a1, a2, _ = await add(engine, "a"), await add(engine, "a"), await add(engine, "b")
    [job, other] = await queue.claim(engine, "w1", 10, T0, LEASE_S)
    await queue.complete(engine, [other], T0)
    assert await queue.retry(engine, job, T0 + 100, "ValueError: x", T0)
    assert await queue.claim(engine, "w1", 10, T0 + 50, LEASE_S) == []
    [again] = await queue.claim(engine, "w1", 10, T0 + 100, LEASE_S)
    assert (again.id, again.attempts, again.last_error) == (a1, 2, "ValueError: x")
    await queue.complete(engine, [again], T0 + 101)
    assert ids(await queue.claim(engine, "w1", 10, T0 + 101, LEASE_S)) == [a2]


async def test_queueing_lock_allows_one_waiting_job(engine: AsyncEngine) -> None:
    """A second enqueue with the same queueing lock is a no-op while the first waits."""
    first = await queue.enqueue(engine, "test", {}, now=T0, queueing_lock="q")
    assert first is not None
    assert await queue.enqueue(engine, "test", {}, now=T0, queueing_lock="q") is None
    await queue.claim(engine, "w1", 10, T0, LEASE_S)
    assert await queue.enqueue(engine, "test", {}, now=T0, queueing_lock="q") is not None


async def test_retry_collapses_into_a_waiting_duplicate(engine: AsyncEngine) -> None:
    """A failed job whose queueing lock is held by a newer waiting job ends, instead of running twice."""
    await queue.enqueue(engine, "test", {}, now=T0, queueing_lock="q")
    [job] = await queue.claim(engine, "w1", 10, T0, LEASE_S)
    await queue.enqueue(engine, "test", {}, now=T0, queueing_lock="q")
    assert not await queue.retry(engine, job, T0 + 1, "ValueError: x", T0)
    assert [(row.status, row.last_error) for row in await job_rows(engine)] == [
        ("done", "ValueError: x"),
        ("waiting", None),
    ]


async def test_release_gives_the_attempt_back(engine: AsyncEngine) -> None:
    """Released jobs wait again with no lease, and the interrupted attempt is not counted."""
    await add(engine, "a")
    claimed = await queue.claim(engine, "w1", 10, T0, LEASE_S)
    assert await queue.release(engine, claimed, T0) == 1
    [row] = await job_rows(engine)
    assert (row.status, row.attempts, row.lease_expires_at, row.worker_id) == ("waiting", 0, None, None)
    assert [job.attempts for job in await queue.claim(engine, "w2", 10, T0, LEASE_S)] == [1]


async def test_release_with_a_newer_waiting_duplicate(engine: AsyncEngine) -> None:
    """Shutdown releases every job even when one's queueing lock is now held by a newer waiting job:
    that one ends done (the newer job does the same work) and the others still go back to waiting."""
    await queue.enqueue(engine, "test", {}, now=T0, queueing_lock="q")
    await add(engine, "a")
    claimed = await queue.claim(engine, "w1", 10, T0, LEASE_S)
    await queue.enqueue(engine, "test", {}, now=T0, queueing_lock="q")
    assert await queue.release(engine, claimed, T0 + 1) == 1
    assert [(row.kind, row.status, row.attempts) for row in await job_rows(engine)] == [
        ("test", "done", 1),
        ("test", "waiting", 0),
        ("test", "waiting", 0),
    ]


async def test_bring_forward_only_ever_moves_a_waiting_job_earlier(engine: AsyncEngine) -> None:
    """A waiting job holding the lock runs no later than asked; an earlier one is left alone."""
    await queue.enqueue(engine, "test", {}, now=T0, queueing_lock="q", run_at=T0 + 60)
    async with engine.begin() as conn:
        assert await queue.bring_forward(conn, "q", T0 + 10)
        assert not await queue.bring_forward(conn, "q", T0 + 30)  # already due sooner
        assert not await queue.bring_forward(conn, "other", T0)
    assert [row.run_at for row in await job_rows(engine)] == [T0 + 10]


async def test_cancel_waiting_deletes_only_waiting_jobs_of_that_kind_and_those_keys(engine: AsyncEngine) -> None:
    """Running jobs, other kinds and other keys stay; the count says how many went."""
    running_id = await add(engine, "k1")
    [claimed] = await queue.claim(engine, "w1", 1, T0, LEASE_S)
    assert claimed.id == running_id
    await add(engine, "k1")
    await add(engine, "k2")
    await add(engine, "k3")
    await queue.enqueue(engine, "other", {}, now=T0, lock_key="k2")
    async with engine.begin() as conn:
        assert await queue.cancel_waiting(conn, "test", ["k1", "k2"]) == 2
    left = [(row.kind, row.lock_key, row.status) for row in await job_rows(engine)]
    assert left == [("test", "k1", "running"), ("test", "k3", "waiting"), ("other", "k2", "waiting")]


async def test_a_dead_job_retried_runs_as_itself_or_ends_done_when_superseded(engine: AsyncEngine) -> None:
    """`retry_dead` puts a dead job back to waiting (attempts from zero, its error kept); `close_dead` ends
    one done; neither touches a job that is not dead."""
    dead_id = await add(engine)
    [job] = await queue.claim(engine, "w1", 1, T0, LEASE_S)
    assert await queue.fail(engine, job, "boom", T0)
    async with engine.begin() as conn:
        assert await queue.retry_dead(conn, dead_id, T0 + 5)
        assert not await queue.retry_dead(conn, dead_id, T0 + 5)  # waiting now, not dead
        assert not await queue.close_dead(conn, dead_id, T0 + 5)
    [row] = await job_rows(engine)
    assert (row.status, row.attempts, row.run_at, row.last_error) == ("waiting", 0, T0 + 5, "boom")
    assert row.finished_at is None
    [job] = await queue.claim(engine, "w1", 1, T0 + 5, LEASE_S)
    assert await queue.fail(engine, job, "boom again", T0 + 6)
    async with engine.begin() as conn:
        assert await queue.close_dead(conn, dead_id, T0 + 7)
    [row] = await job_rows(engine)
    assert (row.status, row.finished_at) == ("done", T0 + 7)


async def test_supersede_dead_alert_ends_only_that_alert_s_dead_jobs(engine: AsyncEngine) -> None:
    """The replayed alert's dead job ends done, its error kept and naming its successor; another's stays dead."""
    for alert_id in ("a1", "a2"):
        async with engine.begin() as conn:
            await queue.enqueue_row(conn, queue.alert_job(alert_id, "C1", now=T0))
        [job] = await queue.claim(engine, "w1", 1, T0, LEASE_S)
        assert await queue.fail(engine, job, "boom", T0)
    async with engine.begin() as conn:
        assert await queue.supersede_dead_alert(conn, "a1", by_job=99, reason="replayed", now=T0 + 1) == 1
    rows = [(row.payload["alert_id"], row.status, row.last_error) for row in await job_rows(engine)]
    assert rows == [("a1", "done", "boom (superseded by job 99: replayed)"), ("a2", "dead", "boom")]


async def test_claim_and_complete_fold_work_into_their_transaction(engine: AsyncEngine) -> None:
    """`then` runs inside the claim's and the completion's transaction: its writes commit with them, a
    failure in it undoes the claim, and completion hands it only the jobs still ours."""
    await add(engine, "a")
    await add(engine, "b")

    async def explode(_conn: AsyncConnection, _jobs: list[Job]) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await queue.claim(engine, "w1", 10, T0, LEASE_S, then=explode)
    assert {row.status for row in await job_rows(engine)} == {"waiting"}  # the claim was undone

    seen: list[list[int]] = []

    async def remember(conn: AsyncConnection, jobs: list[Job]) -> None:
        seen.append(ids(jobs))
        await queue.enqueue(conn, "follow-up", {}, now=T0, lock_key="follow-up")

    claimed = await queue.claim(engine, "w1", 10, T0, LEASE_S, then=remember)
    [mine, lost] = claimed
    assert seen == [ids(claimed)]
    assert [row.kind for row in await job_rows(engine)] == ["test", "test", "follow-up"]
    await queue.heartbeat(engine, [mine], T0 + LEASE_S - 1, LEASE_S)
    taken = await queue.claim(engine, "w2", 10, T0 + LEASE_S + 1, LEASE_S)  # the lost job and the follow-up
    assert lost.id in ids(taken) and mine.id not in ids(taken)
    assert await queue.complete(engine, claimed, T0 + LEASE_S + 2, then=remember) == 1
    assert seen[1] == [mine.id]


async def test_a_job_that_keeps_losing_its_lease_ends_dead_unrun(engine: AsyncEngine) -> None:
    """A job claimed again after its last attempt (each lost its lease: it likely kills its worker) or,
    under a kind's own policy, past that policy's age, ends dead without running; a first attempt of an
    old job still runs."""
    ran: list[int] = []

    async def record(job: Job, attempt: int) -> None:
        ran.append(job.id)

    lost_thrice = await add(engine, "a")
    for n in range(3):  # three workers die with it
        await queue.claim(engine, f"lost-{n}", 10, T0 + n * (LEASE_S + 1), LEASE_S)
    old_kind_job = await queue.enqueue(engine, "old", {}, now=T0)
    await queue.claim(engine, "lost-3", 10, T0 + 3 * (LEASE_S + 1), LEASE_S)  # `old` loses its lease once
    fresh_old = await queue.enqueue(engine, "old", {}, now=T0)  # queued as long ago, never tried
    clock = FixedClock(T0 + 7_200)
    notifier = RecordingNotifier()
    worker = make_worker(engine, {"test": record, "old": record}, max_attempts=3, clock=clock, notifier=notifier,
                         policies={"old": RetryPolicy(max_attempts=1_000, give_up_after_s=3_600)})  # fmt: skip
    async with running(worker):
        await eventually(lambda: _statuses_settled(engine))
    statuses = {row.id: row.status for row in await job_rows(engine)}
    assert (statuses[lost_thrice], statuses[old_kind_job], statuses[fresh_old]) == ("dead", "dead", "done")
    assert ran == [fresh_old]
    assert sorted(job_id for job_id, _ in notifier.dead) == [lost_thrice, old_kind_job]


async def _statuses_settled(engine: AsyncEngine) -> bool:
    return all(row.status in ("done", "dead") for row in await job_rows(engine))


async def test_worker_runs_jobs_to_done(engine: AsyncEngine) -> None:
    """A worker runs every job once, passing the attempt, and marks them done."""
    seen: list[tuple[int, int]] = []

    async def record(job: Job, attempt: int) -> None:
        seen.append((job.id, attempt))

    job_ids = [await add(engine, f"k{i % 3}") for i in range(20)]
    async with running(make_worker(engine, {"test": record})):
        await eventually(lambda: _all_status(engine, "done"))
    assert sorted(seen) == [(job_id, 1) for job_id in job_ids]


async def test_failing_job_ends_dead_with_last_error(engine: AsyncEngine) -> None:
    """A job failing every attempt is dead after max attempts, keeps its error, and someone is told."""
    notifier = RecordingNotifier()
    calls: list[int] = []

    async def boom(job: Job, attempt: int) -> None:
        calls.append(attempt)
        raise ValueError(f"boom {attempt}")

    job_id = await add(engine)
    async with running(make_worker(engine, {"test": boom}, notifier=notifier, max_attempts=3)):
        await eventually(lambda: _all_status(engine, "dead"))
    [row] = await job_rows(engine)
    assert (calls, row.attempts, row.last_error) == ([1, 2, 3], 3, "ValueError: boom 3")
    assert notifier.dead == [(job_id, "ValueError: boom 3")]


async def test_give_up_is_dead_at_once(engine: AsyncEngine) -> None:
    """GiveUp skips the remaining attempts."""

    async def give_up(job: Job, attempt: int) -> None:
        raise GiveUp("cannot ever work")

    await add(engine)
    async with running(make_worker(engine, {"test": give_up}, max_attempts=10)):
        await eventually(lambda: _all_status(engine, "dead"))
    assert [row.attempts for row in await job_rows(engine)] == [1]


async def test_job_that_keeps_killing_its_worker_ends_dead(engine: AsyncEngine) -> None:
    """A job whose lease expired on its last attempt is made dead, not run again."""
    notifier, calls = RecordingNotifier(), []

    async def never(job: Job, attempt: int) -> None:
        calls.append(attempt)

    job_id = await add(engine)
    await queue.claim(engine, "crashed", 10, T0, 5.0)  # attempt 1 of 1, its worker never returns
    clock = FixedClock(T0 + 10)
    worker = make_worker(engine, {"test": never}, clock=clock, max_attempts=1, notifier=notifier)
    async with running(worker):
        await eventually(lambda: _all_status(engine, "dead"))
    assert calls == []
    assert notifier.dead == [(job_id, f"GiveUp: {queue.LEASE_LOST}")]


async def test_shutdown_releases_unfinished_jobs(engine: AsyncEngine) -> None:
    """On stop, a job still running after the grace period goes back to waiting, lease cleared."""
    started = asyncio.Event()

    async def hang(job: Job, attempt: int) -> None:
        started.set()
        await asyncio.Event().wait()

    await add(engine)
    async with running(make_worker(engine, {"test": hang}, grace_s=0.05)):
        await asyncio.wait_for(started.wait(), 10)
    [row] = await job_rows(engine)
    assert (row.status, row.attempts, row.lease_expires_at, row.worker_id) == ("waiting", 0, None, None)


async def test_shutdown_lets_running_jobs_finish_within_grace(engine: AsyncEngine) -> None:
    """A job that finishes within the grace period is recorded done."""
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(job: Job, attempt: int) -> None:
        started.set()
        await release.wait()

    await add(engine)
    async with running(make_worker(engine, {"test": slow}, grace_s=10.0)) as stop:
        await asyncio.wait_for(started.wait(), 10)
        stop.set()
        release.set()
    assert [row.status for row in await job_rows(engine)] == ["done"]


class ClaimSpy:
    """Wraps `queue.turn` (the worker looks it up on each cycle): what every finished claim returned."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.claimed: list[list[int]] = []
        real = queue.turn

        async def turn(*args: Any, **kwargs: Any) -> tuple[int, list[Job]]:
            finished, jobs = await real(*args, **kwargs)
            if kwargs.get("claim_limit", 0) > 0:
                self.claimed.append(ids(jobs))
            return finished, jobs

        monkeypatch.setattr(queue, "turn", turn)

    async def until_idle(self) -> None:
        """Until one claim came back empty: from then on the worker waits for a wake-up or its poll."""

        async def idle() -> bool:
            return [] in self.claimed

        await eventually(idle, 10)


async def add_silently(engine: AsyncEngine) -> int:
    """Enqueue without NOTIFY (on PostgreSQL `queue.enqueue` would send one): only wake() can tell the worker."""
    async with engine.begin() as conn:
        [job_id] = await queue.insert_many(conn, [queue.job_values("test", {"n": 1}, now=T0)])
        return job_id


# A poll interval no test outlives: a job started within WAKE_DEADLINE_S was started by a wake-up.
IDLE_POLL_S = 3600.0
WAKE_DEADLINE_S = 5.0


async def test_wake_starts_work_without_waiting_for_the_poll(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`wake()` after an in-process enqueue makes an idle worker (its empty claim done, an hour to its next
    poll) claim at once."""
    claims, done = ClaimSpy(monkeypatch), asyncio.Event()

    async def finish(job: Job, attempt: int) -> None:
        done.set()

    worker = make_worker(engine, {"test": finish}, poll_interval_s=IDLE_POLL_S)
    async with running(worker):
        await claims.until_idle()
        job_id = await add_silently(engine)
        worker.wake()
        await asyncio.wait_for(done.wait(), WAKE_DEADLINE_S)
    assert claims.claimed[:2] == [[], [job_id]]


async def test_notify_wakes_worker_on_postgres(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On PostgreSQL an enqueue from anywhere wakes a listening, idle worker (no poll for an hour, no wake())."""
    engine = create_engine(make_settings(postgres_url))
    claims, done = ClaimSpy(monkeypatch), asyncio.Event()

    async def finish(job: Job, attempt: int) -> None:
        done.set()

    try:
        async with running(make_worker(engine, {"test": finish}, poll_interval_s=IDLE_POLL_S)):
            await claims.until_idle()
            job_id = await add(engine)  # commits with a NOTIFY, from a connection of its own
            await asyncio.wait_for(done.wait(), WAKE_DEADLINE_S)
    finally:
        await engine.dispose()
    assert claims.claimed[:2] == [[], [job_id]]


async def test_without_wake_or_notify_an_idle_worker_waits_for_its_poll(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control for the two tests above: a job enqueued silently is not started while the worker sleeps."""
    claims, done = ClaimSpy(monkeypatch), asyncio.Event()

    async def finish(job: Job, attempt: int) -> None:
        done.set()

    async with running(make_worker(engine, {"test": finish}, poll_interval_s=IDLE_POLL_S)):
        await claims.until_idle()
        await add_silently(engine)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(done.wait(), 1.0)
    assert claims.claimed == [[]]
    assert [row.status for row in await job_rows(engine)] == ["waiting"]


async def test_periodic_job_is_never_duplicated(engine: AsyncEngine) -> None:
    """Two workers with the same periodic job run it once per interval, with one successor waiting."""
    clock, runs = FixedClock(T0), []

    async def tick(job: Job, attempt: int) -> None:
        runs.append(job.id)

    every_hour = Periodic("tick", "tick", 3600.0, {"x": 1})
    workers = [make_worker(engine, {"tick": tick}, clock=clock, periodic=[every_hour]) for _ in range(2)]
    async with running(*workers):
        await eventually(lambda: _count(engine, "done", 1))
        clock.advance(3600)
        for worker in workers:
            worker.wake()
        await eventually(lambda: _count(engine, "done", 2))
    rows = await job_rows(engine)
    assert [row.status for row in rows] == ["done", "done", "waiting"]
    assert rows[-1].run_at == T0 + 7200 and rows[-1].queueing_lock == "periodic:tick"
    assert len(runs) == 2


async def test_queue_gauges(engine: AsyncEngine) -> None:
    """The metrics report depth by status and how long the oldest runnable job has been due."""
    await add(engine)
    await add(engine, run_at=T0 + 1000)
    await metrics.refresh_queue_gauges(engine, T0 + 30)
    text = metrics.render().decode()
    assert 'relay_jobs{status="waiting"} 2.0' in text
    assert "relay_jobs_oldest_waiting_seconds 30.0" in text


async def _all_status(engine: AsyncEngine, status: str) -> bool:
    rows = await job_rows(engine)
    return bool(rows) and all(row.status == status for row in rows)


async def _count(engine: AsyncEngine, status: str, expected: int) -> bool:
    return len(await job_rows(engine, status=status)) == expected


async def test_a_round_finishing_a_keyed_job_notifies_named_for_its_worker(postgres_url: str) -> None:
    """The completion statement itself sends the NOTIFY (no statement of its own) when a job it finished has
    a lock key, as the next job of that key may now be another worker's; its payload names the round's
    worker, whose own listener skips it. A keyless job's completion notifies no one."""
    engine = create_engine(make_settings(postgres_url))
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(sa.make_url(postgres_url).set(drivername="postgresql").render_as_string(False))
    await listener.add_listener(queue.NOTIFY_CHANNEL, lambda *args: heard.put_nowait(args[3]))
    try:
        keyless, keyed = await add(engine), await add(engine, lock_key="k")  # each enqueue notifies ''
        claimed = {job.id: job for job in await queue.claim(engine, "w1", 10, T0, LEASE_S)}
        assert (await queue.turn(engine, "w1", done=[claimed[keyless]], now=T0, claim_limit=0, lease_s=LEASE_S))[0]
        assert (await queue.turn(engine, "w1", done=[claimed[keyed]], now=T0, claim_limit=0, lease_s=LEASE_S))[0]
        async with engine.begin() as conn:
            await conn.execute(sa.text(f"SELECT pg_notify('{queue.NOTIFY_CHANNEL}', 'end')"))
        payloads = []
        while not payloads or payloads[-1] != "end":  # notifications arrive in commit order
            payloads.append(await asyncio.wait_for(heard.get(), WAKE_DEADLINE_S))
    finally:
        await listener.close()
        await engine.dispose()
    assert payloads == ["", "", "w1", "end"]


async def test_a_worker_is_not_woken_by_its_own_rounds_notifications(engine: AsyncEngine) -> None:
    """Its round's claim already saw what its completion finished; another's notification wakes it."""
    worker = make_worker(engine, {})
    worker._on_notify(None, 0, queue.NOTIFY_CHANNEL, worker.worker_id)
    assert not worker._wake.is_set()
    worker._on_notify(None, 0, queue.NOTIFY_CHANNEL, "")
    assert worker._wake.is_set()


async def test_a_round_that_fails_on_the_driver_rolls_back_as_a_storage_fault(database_url: str) -> None:
    """The round's statements run on the driver (asyncpg, aiosqlite); a failure there surfaces as SQLAlchemy's
    error (what the worker rides out as a storage fault, `worker.TRANSIENT`), the round's writes are undone,
    and the connection goes back to the pool fit for the next round."""
    engine = create_engine(make_settings(database_url))

    async def failing(conn: AsyncConnection, finished: list[Job]) -> None:
        if conn.dialect.name == "postgresql":
            await (await queue.pg_driver(conn)).execute("SELECT * FROM no_such_table")
        else:
            await queue.sqlite_fetch(conn, "SELECT * FROM no_such_table", ())

    try:
        job_id = await add(engine, lock_key="k")
        claimed = await queue.claim(engine, "w1", 10, T0, LEASE_S)
        with pytest.raises(sa.exc.DBAPIError):
            await queue.turn(engine, "w1", done=claimed, now=T0, claim_limit=0, lease_s=LEASE_S, on_done=failing)
        assert [(row.id, row.status) for row in await job_rows(engine)] == [(job_id, "running")]
        assert await queue.turn(engine, "w1", done=claimed, now=T0, claim_limit=0, lease_s=LEASE_S) == (1, [])
    finally:
        await engine.dispose()


async def _statement_running(engine: AsyncEngine, statement: str) -> bool:
    """Whether a backend of this engine's database is running `statement` (seen from another connection)."""
    async with engine.connect() as conn:
        running = await conn.scalar(sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' "
            "AND query = :statement"), {"statement": statement})  # fmt: skip
    return bool(running)


async def test_a_postgres_round_cancelled_mid_statement_leaves_nothing_behind(postgres_url: str) -> None:
    """Cancelled while PostgreSQL runs one of its statements (shutdown), a round is cancelled, not turned
    into a storage fault; its claim is undone and no connection goes back to the pool inside a transaction."""
    engine = create_engine(make_settings(postgres_url))
    sent = asyncio.Event()

    async def stuck(conn: AsyncConnection, claimed: list[Job]) -> None:
        sent.set()
        await (await queue.pg_driver(conn)).execute("SELECT pg_sleep(30)")

    try:
        job_id = await add(engine)
        round_ = asyncio.create_task(queue.turn(engine, "w1", done=(), now=T0, claim_limit=5, lease_s=LEASE_S,
                                                on_claimed=stuck))  # fmt: skip
        await asyncio.wait_for(sent.wait(), WAKE_DEADLINE_S)
        # Cancel only once the statement runs: PostgreSQL ignores a cancel request that reaches a backend
        # with nothing running, and the round would then wait out pg_sleep (seen through PgBouncer, whose hop
        # can deliver the statement after asyncpg's cancel under load).
        await eventually(lambda: _statement_running(engine, "SELECT pg_sleep(30)"))
        round_.cancel()
        with pytest.raises(asyncio.CancelledError):
            await round_
        assert [(row.id, row.status) for row in await job_rows(engine)] == [(job_id, "waiting")]
        for _ in range(3):  # every pooled connection, the cancelled round's included, is fit for a round
            _, claimed = await queue.turn(engine, "w1", done=(), now=T0, claim_limit=5, lease_s=LEASE_S)
            await queue.release(engine, claimed, T0)
            assert ids(claimed) == [job_id]
    finally:
        await engine.dispose()


async def test_an_sqlite_round_runs_on_the_event_loops_own_thread(engine: AsyncEngine) -> None:
    """On an SQLite file a worker's round (BEGIN IMMEDIATE, claim or completion, COMMIT) runs on the event
    loop's thread, not aiosqlite's: each hop there and back was most of a round's cost (BENCHMARKS.md)."""
    inline = loop_engine(engine)
    if inline is None:
        assert engine.dialect.name == "postgresql"
        pytest.skip("SQLite's")
    traced: list[tuple[int, str]] = []
    async with inline.connect() as conn:  # the loop engine's one connection, traced from now on
        raw = await conn.get_raw_connection()
        await raw.driver_connection.set_trace_callback(lambda sql: traced.append((threading.get_ident(), sql)))
    job_id = await add(engine)
    _, claimed = await queue.turn(engine, "w1", done=(), now=T0, claim_limit=5, lease_s=LEASE_S)
    assert await queue.turn(engine, "w1", done=claimed, now=T0 + 1, claim_limit=0, lease_s=LEASE_S) == (1, [])
    assert ids(claimed) == [job_id]
    assert [row.status for row in await job_rows(engine)] == ["done"]
    statements = [sql.split()[0].upper() for _, sql in traced]
    assert statements.count("BEGIN") == 2 and statements.count("COMMIT") == 2 and "UPDATE" in statements
    assert {thread for thread, _ in traced} == {threading.get_ident()}


async def test_an_sqlite_round_waits_for_another_writer_off_the_event_loop(engine: AsyncEngine) -> None:
    """While another connection holds SQLite's write lock, a round on the loop's thread would block the loop
    for as long as SQLite waits: there it is answered busy at once and the round runs on the pool's thread,
    which waits for the lock. The loop keeps ticking, and the round completes once the lock is released."""
    path = sqlite_path(engine.url)
    if path is None:
        pytest.skip("SQLite's")
    job_id = await add(engine)
    held, release = threading.Event(), threading.Event()

    def hold_the_write_lock() -> None:
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            held.set()
            release.wait(10)
            other.execute("COMMIT")
        finally:
            other.close()

    holder = asyncio.create_task(asyncio.to_thread(hold_the_write_lock))
    await eventually(lambda: _is_set(held))
    round_ = asyncio.create_task(queue.turn(engine, "w1", done=(), now=T0, claim_limit=5, lease_s=LEASE_S))
    gaps: list[float] = []
    last = time.monotonic()
    for _ in range(30):  # 0.3 s or more of the loop's life with the lock held and the round waiting for it
        await asyncio.sleep(0.01)
        gaps.append(time.monotonic() - last)
        last = time.monotonic()
    assert not round_.done()
    release.set()
    _, claimed = await asyncio.wait_for(round_, 10)
    await holder
    assert ids(claimed) == [job_id]
    assert max(gaps) < 2.0  # blocked, the loop would stall until the holder gives up (10 s); 2 s: a busy CI


async def _is_set(event: threading.Event) -> bool:
    return event.is_set()
