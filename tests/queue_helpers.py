"""Fakes and helpers shared by the queue, worker and dispatch tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import jobs
from service.queue import Job
from service.worker import Worker

DEADLINE_S = 15.0


class RecordingNotifier:
    def __init__(self) -> None:
        self.dead: list[tuple[int, str]] = []

    async def job_dead(self, job: Job, error: str) -> None:
        self.dead.append((job.id, error))


async def eventually(condition: Callable[[], Awaitable[bool]], deadline_s: float = DEADLINE_S) -> None:
    """Poll `condition` until it holds; fail after the deadline."""
    give_up = time.monotonic() + deadline_s
    while not await condition():
        if time.monotonic() > give_up:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.01)


@asynccontextmanager
async def running(*workers: Worker) -> AsyncIterator[asyncio.Event]:
    """Run workers for the duration of the block; leaving it stops them gracefully and waits."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(worker.run(stop)) for worker in workers]
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def job_rows(engine: AsyncEngine, **where: Any) -> list[sa.RowMapping]:
    query = sa.select(jobs).order_by(jobs.c.id)
    for column, value in where.items():
        query = query.where(jobs.c[column] == value)
    async with engine.connect() as conn:
        return list((await conn.execute(query)).mappings().all())


LEASE_S = 3600.0


async def leased_job(engine: AsyncEngine, kind: str, payload: dict[str, Any], now: float,
                     lease_s: float = LEASE_S) -> Job:  # fmt: skip
    """A job as a worker hands it to its function: a real row, running under a live lease (attempt 1).

    Job functions that call outside services fence each call on that lease, so a made-up `Job` is refused.
    """
    from service.queue import job_values

    row = {**job_values(kind, payload, now=now), "status": "running", "attempts": 1, "started_at": now,
           "lease_expires_at": now + lease_s, "worker_id": "test-worker"}  # fmt: skip
    async with engine.begin() as conn:
        job_id = await conn.scalar(jobs.insert().values(row).returning(jobs.c.id))
    return Job(id=int(job_id), kind=kind, payload=payload, lock_key=None, queueing_lock=None, attempts=1,
               run_at=now, created_at=now)  # fmt: skip
