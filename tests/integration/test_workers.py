"""Worker processes sharing one PostgreSQL queue: exactly-once completion, per-key order, crash recovery."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service import queue
from service.db import jobs
from tests.pgbouncer import engine_for
from tests.queue_helpers import eventually, job_rows

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
JOBS, KEYS, WORKERS = 2_000, 50, 3
DEADLINE_S = 40.0


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(database_url: str, *args: str) -> subprocess.Popen[bytes]:
        with (tmp_path / f"worker-{len(procs)}.log").open("ab") as log:  # the child keeps its own copy
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.integration.worker_proc", database_url, str(tmp_path), *args],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def runs(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in out.glob("runs-*.jsonl") for line in path.read_text().splitlines()]


async def enqueue_keyed(engine: AsyncEngine) -> None:
    """Enqueue in several transactions while the workers already run, as a receiver would."""
    seq: Counter[str] = Counter()
    for start in range(0, JOBS, 200):
        rows = []
        for n in range(start, start + 200):
            key = f"key-{n % KEYS}"
            seq[key] += 1
            rows.append(queue.job_values("record", {"seq": seq[key]}, now=time.time(), lock_key=key))
        async with engine.begin() as conn:
            await queue.insert_many(conn, rows)
            await queue.notify(conn)


async def all_done(engine: AsyncEngine, expected: int) -> bool:
    async with engine.connect() as conn:
        done = await conn.scalar(sa.select(sa.func.count()).where(jobs.c.status == "done"))
    return done == expected


async def test_three_workers_keep_per_key_order(postgres_url: str, spawn: Any, tmp_path: Path) -> None:
    """2,000 jobs over 50 keys and 3 processes: each runs once, keys never overlap, order is kept."""
    procs = [spawn(postgres_url, "--concurrency", "8") for _ in range(WORKERS)]
    engine = engine_for(postgres_url)
    try:
        await enqueue_keyed(engine)
        await eventually(lambda: all_done(engine, JOBS), DEADLINE_S)
        rows = await job_rows(engine)
    finally:
        await engine.dispose()
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    assert all(proc.wait(timeout=10) == 0 for proc in procs)

    records = runs(tmp_path)
    assert Counter(r["job"] for r in records) == Counter({row.id: 1 for row in rows})
    assert {row.attempts for row in rows} == {1}
    assert len({r["pid"] for r in records}) == WORKERS  # the work really was shared
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_key[record["key"]].append(record)
    assert len(by_key) == KEYS
    for key, key_runs in by_key.items():
        key_runs.sort(key=lambda r: r["start"])
        assert [r["seq"] for r in key_runs] == list(range(1, JOBS // KEYS + 1)), key
        for earlier, later in itertools.pairwise(key_runs):
            assert earlier["end"] < later["start"], f"{key}: jobs {earlier['job']} and {later['job']} overlap"


async def test_killed_worker_job_is_completed_once_by_another(
    postgres_url: str, spawn: Any, tmp_path: Path
) -> None:
    """A worker SIGKILLed mid-job: once its lease expires, another worker completes the job, once."""
    engine = engine_for(postgres_url)
    try:
        job_id = await queue.enqueue(engine, "record", {"seq": 1}, now=time.time(), lock_key="k")
        doomed = spawn(postgres_url, "--mode", "block", "--lease", "1")
        started = tmp_path / f"started-{doomed.pid}"
        await eventually(lambda: _exists(started), DEADLINE_S)
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait(timeout=10)
        rescuer = spawn(postgres_url, "--lease", "1")
        await eventually(lambda: all_done(engine, 1), DEADLINE_S)
        [row] = await job_rows(engine)
    finally:
        await engine.dispose()
    [record] = runs(tmp_path)
    assert (record["job"], record["pid"], record["attempt"]) == (job_id, rescuer.pid, 2)
    assert (row.attempts, row.last_error) == (2, queue.LEASE_LOST)


async def _exists(path: Path) -> bool:
    return await asyncio.to_thread(path.exists)


async def test_a_worker_killed_with_jobs_claimed_ahead_loses_none(
    database_url: str, spawn: Any, tmp_path: Path
) -> None:
    """A worker SIGKILLed while holding jobs beyond its one slot (claimed ahead, never started): once their
    leases expire another worker runs every job exactly once, each key's in order — nothing is lost."""
    engine = engine_for(database_url)
    try:
        now = time.time()
        rows = [queue.job_values("record", {"seq": n}, now=now) for n in range(4)]
        rows += [queue.job_values("record", {"seq": seq}, now=now, lock_key=key)
                 for seq in (1, 2) for key in ("key-a", "key-b")]  # fmt: skip
        async with engine.begin() as conn:
            ids = await queue.insert_many(conn, rows)
        doomed = spawn(database_url, "--mode", "block", "--lease", "1", "--concurrency", "1", "--claim-ahead", "5")

        async def six_held() -> bool:  # four free jobs and the first of each key: one running, five ahead
            return len(await job_rows(engine, status="running")) == 6

        await eventually(six_held, DEADLINE_S)
        # Its one slot's job has started (it writes this file just after the claim that held the six commits).
        await eventually(lambda: _exists(tmp_path / f"started-{doomed.pid}"), DEADLINE_S)
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait(timeout=10)
        spawn(database_url, "--lease", "1")
        await eventually(lambda: all_done(engine, len(ids)), DEADLINE_S)
        final = await job_rows(engine)
    finally:
        await engine.dispose()
    records = runs(tmp_path)
    assert Counter(r["job"] for r in records) == Counter(dict.fromkeys(ids, 1))
    held, later = [row for row in final if row.attempts == 2], [row for row in final if row.attempts == 1]
    assert len(held) == 6 and {row.last_error for row in held} == {queue.LEASE_LOST}
    assert sorted(row.payload["seq"] for row in later) == [2, 2]
    for key in ("key-a", "key-b"):
        key_runs = sorted((r for r in records if r["key"] == key), key=lambda r: r["start"])
        assert [r["seq"] for r in key_runs] == [1, 2], key
