"""A real `codat-relay worker` process serves /healthz, /readyz and its own /metrics (admin token)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest

from service import queue
from service.db import create_engine
from tests.conftest import ADMIN_TOKEN, make_settings
from tests.integration.harness import free_port, relay_env, start, stop, wait_http
from tests.queue_helpers import eventually, job_rows

pytestmark = pytest.mark.integration

KIND = "kind_no_worker_knows"
FINISHED = f'relay_jobs_finished_total{{kind="{KIND}",outcome="dead"}} 1.0'


async def enqueue_and_wait_dead(database_url: str) -> None:
    """A job of a kind the worker has no function for: it ends dead at once, a finished run of its own kind."""
    engine = create_engine(make_settings(database_url))
    try:
        job_id = await queue.enqueue(engine, KIND, {}, now=time.time())

        async def dead() -> bool:
            return [row.status for row in await job_rows(engine, id=job_id)] == ["dead"]

        await eventually(dead, 30.0)
    finally:
        await engine.dispose()


def test_worker_serves_health_and_its_own_metrics(database_url: str, tmp_path: Path) -> None:
    """Probes answer 200, /metrics needs the admin token and counts the job this very process finished."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    proc = start(["worker"], relay_env(database_url, port), tmp_path / "worker.log")
    try:
        wait_http(f"{base}/healthz", proc)
        assert httpx.get(f"{base}/healthz").status_code == 200
        assert httpx.get(f"{base}/readyz").json() == {"status": "ready"}
        assert httpx.get(f"{base}/metrics").status_code == 401
        assert FINISHED not in httpx.get(f"{base}/metrics", headers=admin).text
        assert httpx.post(f"{base}/webhooks/codat", content=b"{}").status_code == 404  # health and metrics only

        asyncio.run(enqueue_and_wait_dead(database_url))
        scrape = httpx.get(f"{base}/metrics", headers=admin)
        assert scrape.status_code == 200
        assert FINISHED in scrape.text
        assert 'relay_job_duration_seconds_count{kind="' + KIND + '"} 1.0' in scrape.text
    finally:
        status = stop(proc)
    # Like `serve`, the worker runs under uvicorn, which re-raises SIGTERM after a clean shutdown.
    assert status == -signal.SIGTERM, (tmp_path / "worker.log").read_text()[-2000:]


def test_worker_that_cannot_work_exits(tmp_path: Path) -> None:
    """A worker whose loop dies (an unmigrated database) exits 1 with a one-line reason, not a live 200."""
    port = free_port()
    env = relay_env(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}", port)
    proc = start(["worker"], env, tmp_path / "worker.log")
    try:
        status = proc.wait(30)
    finally:
        stop(proc)
    log = (tmp_path / "worker.log").read_text()
    assert status == 1, log[-2000:]
    assert "codat-relay: worker stopped: OperationalError" in log
