"""SIGTERM to a real `codat-relay worker` with a job in flight: finished within the grace period, or released.

The worker is the real command (tests/integration/relay_worker_proc.py adds a `sleep` job kind). Like
`serve`, it runs under uvicorn, which re-raises SIGTERM after the clean shutdown: the status is -15 (143 in
a shell), never a crash.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from service import queue
from service.db import create_engine, notifications
from tests.conftest import make_settings
from tests.integration.harness import ROOT, free_port, relay_env
from tests.queue_helpers import eventually, job_rows

pytestmark = pytest.mark.integration

START_DEADLINE_S = 120.0  # an upper bound, not a wait: a loaded 2-core machine starts a process slowly
# the worker schedules these itself at start
PERIODIC_KINDS = {"push_sweep", "prune_jobs", "schedule_sweep", "index_alert_texts"}


async def rows(database_url: str) -> dict[int, dict[str, Any]]:
    engine = create_engine(make_settings(database_url))
    try:
        return {row["id"]: dict(row) for row in await job_rows(engine)}
    finally:
        await engine.dispose()


async def enqueue(database_url: str, seconds: float) -> tuple[int, int]:
    """The job that will be in flight, and a bystander scheduled for later that nothing may touch."""
    engine = create_engine(make_settings(database_url))
    now = time.time()
    try:
        job_id = await queue.enqueue(engine, "sleep", {"seconds": seconds}, now=now, lock_key="k-1")
        later = await queue.enqueue(engine, "sleep", {"seconds": 0}, now=now, lock_key="k-2", run_at=now + 3600)
    finally:
        await engine.dispose()
    return job_id, later


async def notification_count(database_url: str) -> int:
    engine = create_engine(make_settings(database_url))
    try:
        async with engine.connect() as conn:
            return int(await conn.scalar(sa.select(sa.func.count()).select_from(notifications)) or 0)
    finally:
        await engine.dispose()


def in_flight(database_url: str, job_id: int, started: Path, proc: subprocess.Popen[bytes]) -> None:
    """Wait until the job function runs and its row says running, attempt 1."""

    async def running() -> bool:
        assert proc.poll() is None, f"worker exited with {proc.returncode}"
        row = (await rows(database_url))[job_id]
        return await asyncio.to_thread(started.exists) and (row["status"], row["attempts"]) == ("running", 1)

    asyncio.run(eventually(running, START_DEADLINE_S))


def start_worker(database_url: str, tmp_path: Path, grace_s: float) -> subprocess.Popen[bytes]:
    env = relay_env(database_url, free_port(), RELAY_SHUTDOWN_GRACE_SECONDS=str(grace_s), RELAY_LOG_LEVEL="info")
    with (tmp_path / "worker.log").open("ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "tests.integration.relay_worker_proc", str(tmp_path)],
                                env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip


def stopped_events(log: str) -> list[int]:
    """How many jobs each `worker_stopped` line of the (JSON) log says were released."""
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [event["released"] for event in events if event.get("event") == "worker_stopped"]


def terminate(proc: subprocess.Popen[bytes], timeout_s: float) -> tuple[int, float]:
    """SIGTERM; the exit status and how long the process took to exit."""
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        status = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"worker still running {timeout_s} s after SIGTERM") from None
    return status, time.monotonic() - sent


def sigterm_in_flight(database_url: str, tmp_path: Path, job_id: int, *, grace_s: float,
                      timeout_s: float) -> tuple[float, str]:  # fmt: skip
    """Start the worker, SIGTERM it once `job_id` runs; it must exit by that signal. (seconds taken, its log)"""
    proc = start_worker(database_url, tmp_path, grace_s=grace_s)
    try:
        in_flight(database_url, job_id, tmp_path / f"started-{job_id}", proc)
        status, took = terminate(proc, timeout_s=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "worker.log").read_text()
    assert status == -signal.SIGTERM, log[-2000:]
    return took, log


def test_sigterm_releases_a_job_the_grace_period_cannot_finish(database_url: str, tmp_path: Path) -> None:
    """A job still running when the 0.5 s grace ends is cancelled and waiting again with its attempt given back;
    its row is exactly as before it was claimed, the bystander is untouched, and nobody is told of anything."""
    job_id, later = asyncio.run(enqueue(database_url, seconds=3600))
    before = asyncio.run(rows(database_url))
    took, log = sigterm_in_flight(database_url, tmp_path, job_id, grace_s=0.5, timeout_s=20)
    assert took < 10, took  # the grace period, not the job's hour
    after = asyncio.run(rows(database_url))
    assert after[job_id] == before[job_id]  # waiting, attempts 0, no worker, lease, start or error
    assert (after[job_id]["status"], after[job_id]["attempts"]) == ("waiting", 0)
    assert after[later] == before[later]
    assert {row["kind"] for i, row in after.items() if i not in before} <= PERIODIC_KINDS
    assert not (tmp_path / f"finished-{job_id}").exists()
    assert asyncio.run(notification_count(database_url)) == 0
    assert stopped_events(log) == [1]


def test_sigterm_lets_a_job_finish_within_the_grace_period(database_url: str, tmp_path: Path) -> None:
    """A job that ends within the 15 s grace runs to the end and is `done` (attempt 1); the worker exits right after."""
    job_id, later = asyncio.run(enqueue(database_url, seconds=1.0))
    before = asyncio.run(rows(database_url))
    took, log = sigterm_in_flight(database_url, tmp_path, job_id, grace_s=15, timeout_s=30)
    assert took < 15, took  # it left once the job was done, without sitting out the grace period
    after = asyncio.run(rows(database_url))
    assert (after[job_id]["status"], after[job_id]["attempts"], after[job_id]["last_error"]) == ("done", 1, None)
    assert (tmp_path / f"finished-{job_id}").read_text() == "1"
    assert after[later] == before[later]
    assert {row["kind"] for i, row in after.items() if i not in before} <= PERIODIC_KINDS
    assert stopped_events(log) == [0]
