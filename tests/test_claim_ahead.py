"""Claim-ahead: a worker holds a few jobs beyond its free slots, on both backends.

Held jobs are `running` under the worker's lease (so no other worker takes them and per-key order holds
as for running jobs), renewed by its heartbeat, started the moment a slot frees, and released on
shutdown. A crash with a buffer is in tests/integration/test_workers.py (a real process, SIGKILLed).
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import defaultdict
from dataclasses import replace

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service import queue
from service import worker as worker_module
from service.clock import SystemClock
from service.db import jobs
from service.queue import Job
from service.retry import RetryPolicy
from service.worker import JobFunction, Worker, default_claim_ahead
from tests.queue_helpers import RecordingNotifier, eventually, job_rows, running

T0 = 1_750_000_000.0


def worker(engine: AsyncEngine, function: JobFunction, *, concurrency: int, claim_ahead: int,
           lease_s: float = 30.0, worker_id: str | None = None, grace_s: float = 1.0) -> Worker:  # fmt: skip
    return Worker(
        engine, {"test": function}, concurrency=concurrency, claim_ahead=claim_ahead, lease_s=lease_s,
        clock=SystemClock(), notifier=RecordingNotifier(), retry=replace(RetryPolicy(), max_attempts=3),
        poll_interval_s=0.05, grace_s=grace_s, worker_id=worker_id,
    )  # fmt: skip


async def add(engine: AsyncEngine, count: int, lock_key: str | None = None) -> list[int]:
    return [
        job_id
        for n in range(count)
        if (job_id := await queue.enqueue(engine, "test", {"n": n}, now=T0, lock_key=lock_key)) is not None
    ]


async def running_rows(engine: AsyncEngine, worker_id: str) -> int:
    async with engine.connect() as conn:
        count = await conn.scalar(
            sa.select(sa.func.count()).where(jobs.c.status == "running", jobs.c.worker_id == worker_id)
        )
    return int(count or 0)


class Blocker:
    """A job function that blocks until told; records which jobs started."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.go = asyncio.Event()

    async def __call__(self, job: Job, attempt: int) -> None:
        self.started.append(job.id)
        await self.go.wait()


def test_default_claim_ahead_is_for_many_slots_only() -> None:
    """A small worker (the default 4 slots) claims nothing ahead; one with many claims half its slots again."""
    assert [default_claim_ahead(n) for n in (1, 4, 7, 8, 10, 50)] == [0, 0, 0, 4, 5, 25]


async def test_a_worker_holds_jobs_beyond_its_slots_but_runs_only_its_slots(engine: AsyncEngine) -> None:
    """Two slots and two ahead: four jobs are claimed (leased to it), two run; as they finish the held two
    start without another worker being able to take them; all end done once."""
    blocker = Blocker()
    ids = await add(engine, 5)
    w = worker(engine, blocker, concurrency=2, claim_ahead=2, worker_id="ahead")
    other = Blocker()
    async with running(w):

        async def four_held() -> bool:
            return await running_rows(engine, "ahead") == 4

        await eventually(four_held)
        assert blocker.started == ids[:2]
        async with running(worker(engine, other, concurrency=4, claim_ahead=0, worker_id="other")):
            await eventually(lambda: _started(other, [ids[4]]))  # the one job nobody held
            other.go.set()
            blocker.go.set()
            await eventually(lambda: _all_done(engine))
    assert blocker.started == ids[:4]
    assert other.started == [ids[4]]
    assert {row.attempts for row in await job_rows(engine)} == {1}


async def test_claimed_ahead_leases_are_renewed_while_they_wait(engine: AsyncEngine) -> None:
    """A job held ahead for longer than a lease is still this worker's: the heartbeat renews it, so another
    worker never takes it over (attempt 1, no lost-lease error)."""
    blocker = Blocker()
    ids = await add(engine, 2)
    lease_s = 1.5  # heartbeats every 0.5 s: a margin of a second for a busy machine
    async with running(worker(engine, blocker, concurrency=1, claim_ahead=1, lease_s=lease_s, worker_id="ahead")):

        async def both_held() -> bool:
            return await running_rows(engine, "ahead") == 2

        await eventually(both_held)
        thief = Blocker()
        async with running(worker(engine, thief, concurrency=2, claim_ahead=0, worker_id="thief")):
            await asyncio.sleep(lease_s * 3)  # let three leases' worth of time pass (the point of the test)
            assert thief.started == []
            [_, held] = await job_rows(engine)
            assert (held.status, held.worker_id) == ("running", "ahead")
            blocker.go.set()
            await eventually(lambda: _all_done(engine))
    assert blocker.started == ids
    rows = await job_rows(engine)
    assert [(row.attempts, row.last_error) for row in rows] == [(1, None), (1, None)]


async def test_shutdown_releases_jobs_claimed_ahead(engine: AsyncEngine) -> None:
    """On stop, the jobs held ahead (never started) and the unfinished running one all go back to waiting,
    their attempts given back."""
    blocker = Blocker()
    await add(engine, 3)
    async with running(worker(engine, blocker, concurrency=1, claim_ahead=2, worker_id="ahead", grace_s=0.05)):

        async def three_held() -> bool:
            return await running_rows(engine, "ahead") == 3

        await eventually(three_held)
    rows = await job_rows(engine)
    assert [(row.status, row.attempts, row.worker_id) for row in rows] == [("waiting", 0, None)] * 3
    assert len(blocker.started) == 1


async def test_per_key_order_holds_with_claim_ahead_across_two_workers(engine: AsyncEngine) -> None:
    """300 jobs over 6 keys, two workers of 8 slots each claiming 4 ahead: every job runs once, and each
    key's jobs run one at a time in enqueue order."""
    timeline: list[tuple[str, str, int]] = []  # (event, key, job id), in the order they happened

    async def record(job: Job, attempt: int) -> None:
        timeline.append(("start", job.lock_key or "", job.id))
        await asyncio.sleep(random.uniform(0, 0.002))
        timeline.append(("end", job.lock_key or "", job.id))

    keyed: dict[str, list[int]] = defaultdict(list)
    for n in range(300):
        key = f"key-{n % 6}"
        [job_id] = await add(engine, 1, lock_key=key)
        keyed[key].append(job_id)
    workers = [worker(engine, record, concurrency=8, claim_ahead=4, worker_id=f"w{i}") for i in range(2)]
    async with running(*workers):
        await eventually(lambda: _all_done(engine), 60)
    for key, expected in keyed.items():
        events = [(event, job_id) for event, k, job_id in timeline if k == key]
        assert [job_id for event, job_id in events if event == "start"] == expected, key
        for (first, a), (second, b) in itertools.pairwise(events):  # start, end, start, end …: never overlapping
            assert (first, second) in {("start", "end"), ("end", "start")} and (first == "end" or a == b), key
    assert {row.attempts for row in await job_rows(engine)} == {1}


async def test_a_round_claims_keyed_jobs_only_within_its_keyed_limit(engine: AsyncEngine) -> None:
    """One claim with a keyed limit of 3 and a keyless one of 8: of the 8 oldest candidates, a keyed job is
    taken only among the first 3 (as a claim of 3 would), a keyless one anywhere."""
    order = [("a", "key-a"), ("x1", None), ("b", "key-b"), ("x2", None), ("x3", None), ("c", "key-c"),
             ("x4", None), ("x5", None)]  # fmt: skip
    ids = {name: job_id for name, key in order for job_id in await add(engine, 1, lock_key=key)}
    _, claimed = await queue.turn(
        engine, "w", done=(), now=T0, claim_limit=3, keyless_limit=8, lease_s=30.0
    )  # fmt: skip
    assert sorted(job.id for job in claimed) == sorted(ids[name] for name in ("a", "x1", "b", "x2", "x3", "x4", "x5"))
    status = {row.id: row.status for row in await job_rows(engine)}
    assert status[ids["c"]] == "waiting"


async def test_a_round_without_a_keyless_limit_claims_as_one_limit(engine: AsyncEngine) -> None:
    """No keyless limit: the oldest `claim_limit` candidates, keyed or not, as before."""
    ids = [job_id for n in range(4) for job_id in await add(engine, 1, lock_key=f"key-{n}" if n % 2 else None)]
    _, claimed = await queue.turn(engine, "w", done=(), now=T0, claim_limit=3, lease_s=30.0)
    assert sorted(job.id for job in claimed) == ids[:3]


async def test_a_fast_worker_holds_keyless_jobs_further_ahead_but_not_keyed_ones(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once it has been finishing keyless jobs quickly, a worker of 8 slots (4 ahead) holds up to 3x its
    slots of keyless jobs beyond them, but keyed ones no further than before: with its slots and the
    keyless buffer full, it takes no keyed job, and another worker runs them."""
    monkeypatch.setattr(worker_module, "KEYLESS_AHEAD_S", 60.0)  # any measured rate paces to the cap
    fast_ids = await add(engine, 40)

    async def fast_or_block(job: Job, attempt: int) -> None:
        if job.id not in fast_ids:
            await blocker(job, attempt)

    blocker = Blocker()
    async with running(worker(engine, fast_or_block, concurrency=8, claim_ahead=4, worker_id="ahead")):

        async def fast_done() -> bool:
            return {row.status for row in await job_rows(engine) if row.id in fast_ids} == {"done"}

        await eventually(fast_done)
        keyless = await add(engine, 40)
        keyed = [job_id for n in range(6) for job_id in await add(engine, 1, lock_key=f"key-{n}")]

        async def slots_and_buffer_full() -> bool:
            return await running_rows(engine, "ahead") == 8 + 3 * 8

        await eventually(slots_and_buffer_full)
        held = {row.id for row in await job_rows(engine) if row.worker_id == "ahead" and row.status == "running"}
        assert held <= set(keyless)
        other = Blocker()
        async with running(worker(engine, other, concurrency=6, claim_ahead=0, worker_id="other")):
            await eventually(lambda: _started(other, [*keyless[32:38]]))  # the keyless jobs nobody held
            other.go.set()
            await eventually(lambda: _started(other, [*keyless[32:], *keyed]))
            blocker.go.set()
            await eventually(lambda: _all_done(engine))
    assert {row.attempts for row in await job_rows(engine)} == {1}


async def _started(blocker: Blocker, expected: list[int]) -> bool:
    return blocker.started == expected


async def _all_done(engine: AsyncEngine) -> bool:
    return {row.status for row in await job_rows(engine)} == {"done"}
