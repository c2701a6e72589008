"""A worker stopped while its PostgreSQL has gone silent (connections open, nothing answering) still finishes
shutting down: each database step of its drain and of its UNLISTEN gets `shutdown_step_s`, what it could not
do is logged, and the lease it still holds expires for another worker to take the job over."""

from __future__ import annotations

import asyncio
import time

import pytest
from structlog.testing import capture_logs

from service import queue
from service.clock import SystemClock
from service.db import create_engine
from service.queue import Job
from service.retry import RetryPolicy
from service.worker import Worker
from tests.conftest import _dsn, make_settings
from tests.queue_helpers import RecordingNotifier, job_rows
from tests.silent_proxy import silent_proxy

LEASE_S = 30.0
STEP_S = 0.5
# With no bound, the steps wait for the driver's command timeout (30 s each), or for ever on a listener's own
# connection (no command timeout); bounded, they take STEP_S each.
SHUTDOWN_DEADLINE_S = 10.0
START_DEADLINE_S = 10.0


@pytest.mark.parametrize("listen", ["pooled", "own_connection"])
async def test_a_worker_stopped_while_its_database_is_silent_finishes_shutting_down(
    postgres_url: str, listen: str
) -> None:
    """Stopped with a job running and its database silent, a worker still returns within a deadline: it logs
    that it could not release the job nor UNLISTEN, drops the listener's connection (never pooled with our
    callback on it), and the job's lease, once expired, lets another worker claim it: nothing is lost."""
    started = asyncio.Event()

    async def hang(job: Job, attempt: int) -> None:
        started.set()
        await asyncio.Event().wait()

    direct = create_engine(make_settings(postgres_url))
    job_id = await queue.enqueue(direct, "test", {}, now=time.time())
    async with silent_proxy(postgres_url) as proxy:
        engine = create_engine(make_settings(proxy.url(postgres_url)))
        stop = asyncio.Event()
        with capture_logs() as logs:
            worker = Worker(
                engine, {"test": hang}, concurrency=1, lease_s=LEASE_S, clock=SystemClock(),
                notifier=RecordingNotifier(), retry=RetryPolicy(), poll_interval_s=0.05, grace_s=0.05,
                shutdown_step_s=STEP_S, listen_via_pool=listen == "pooled",
                listen_dsn=_dsn(proxy.url(postgres_url)) if listen == "own_connection" else None,
            )  # fmt: skip
            task = asyncio.create_task(worker.run(stop))
            try:
                await asyncio.wait_for(started.wait(), START_DEADLINE_S)
                assert worker._listener is not None
                raw, listener = worker._listener
                assert (raw is not None) == (listen == "pooled")
                proxy.silence()
                stop.set()
                done, _ = await asyncio.wait({task}, timeout=SHUTDOWN_DEADLINE_S)
                assert task in done, "the worker did not finish shutting down"
                task.result()
            finally:
                await proxy.close()  # sockets aborted: whatever still waits on them fails now
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await engine.dispose()
    try:
        events = {entry["event"]: entry for entry in logs}
        assert events["worker_release_failed"]["jobs"] == 1
        assert events["worker_release_failed"]["error"].startswith("TimeoutError: releasing jobs")
        assert events["unlisten_failed"]["error"].startswith("TimeoutError: UNLISTEN")
        assert "worker_stopped" not in events
        assert listener.is_closed()
        [row] = await job_rows(direct)
        assert (row.id, row.status, row.worker_id) == (job_id, "running", worker.worker_id)
        assert await queue.claim(direct, "w2", 10, row.lease_expires_at - 1, LEASE_S) == []
        [taken_over] = await queue.claim(direct, "w2", 10, row.lease_expires_at + 1, LEASE_S)
        assert taken_over.id == job_id
    finally:
        await direct.dispose()
