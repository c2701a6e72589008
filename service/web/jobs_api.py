"""The dead-jobs admin API (`Authorization: Bearer $RELAY_ADMIN_TOKEN`): list jobs, retry a dead one.

A retried job runs again as itself (same id, payload and lock key), so the jobs of its key that were
queued after it still wait behind it, as they did before it died.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service import queue
from service.clock import iso
from service.db import jobs, writer
from service.errors import InvalidRequest, NotFound, Rejected
from service.ids import query_id
from service.queue import JobStatus
from service.replays import revive_dead
from service.web.auth import require
from service.web.responses import json_response

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_KIND_CHARS = 64  # the width of jobs.kind
MAX_JOB_ID = 2**63 - 1  # BIGINT: a larger id in a URL is simply not a job (PostgreSQL would refuse the bind)


class NotDead(Rejected):
    """Only a dead job can be retried: a waiting or running one is already going to run."""

    status_code = 409
    code = "not_dead"


def job_json(row: RowMapping) -> dict[str, Any]:
    return {
        "id": row["id"],
        "kind": row["kind"],
        "lockKey": row["lock_key"],
        "status": row["status"],
        "attempts": row["attempts"],
        "lastError": row["last_error"],
        "runAt": iso(row["run_at"]),
        "createdAt": iso(row["created_at"]),
        "finishedAt": iso(row["finished_at"]),
        "payload": row["payload"],
    }


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit") or str(DEFAULT_LIMIT)
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise InvalidRequest(f"limit: must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)


def _status(request: Request) -> str | None:
    value = request.query_params.get("status") or None
    if value is not None and value not in {s.value for s in JobStatus}:
        raise InvalidRequest(f"status: must be one of {', '.join(s.value for s in JobStatus)}")
    return value


def _kind(request: Request) -> str | None:
    return query_id(request, "kind", MAX_KIND_CHARS)


async def list_jobs(engine: AsyncEngine, *, status: str | None, kind: str | None, limit: int) -> list[RowMapping]:
    """Newest first; the UI shares this query."""
    query = sa.select(jobs).order_by(jobs.c.id.desc()).limit(limit)
    if status is not None:
        query = query.where(jobs.c.status == status)
    if kind is not None:
        query = query.where(jobs.c.kind == kind)
    async with engine.connect() as conn:
        return list((await conn.execute(query)).mappings().all())


async def retry_dead_job(engine: AsyncEngine, job_id: int, now: float) -> RowMapping:
    """Put a dead job back to waiting; raises NotFound / NotDead. Returns the job as it now stands.

    When a waiting job already holds the same queueing lock, that job does the same work (a periodic
    push, say): this one ends `done`, as `queue.retry` does, instead of running twice.
    """
    if job_id > MAX_JOB_ID:
        raise NotFound(f"no job {job_id}")
    by_id = sa.select(jobs).where(jobs.c.id == job_id)
    try:
        async with writer(engine).begin() as conn:
            row = (await conn.execute(by_id.with_for_update())).mappings().first()
            if row is None:
                raise NotFound(f"no job {job_id}")
            if row["status"] != JobStatus.DEAD.value:
                raise NotDead(f"job {job_id} is {row['status']}, not dead")
            await revive_dead(conn, row, now)
    except IntegrityError:
        async with writer(engine).begin() as conn:
            await queue.close_dead(conn, job_id, now)
    async with engine.connect() as conn:
        return (await conn.execute(by_id)).mappings().one()


@require("admin")
async def list_endpoint(request: Request) -> Response:
    rows = await list_jobs(
        request.app.state.runtime.engine, status=_status(request), kind=_kind(request), limit=_limit(request)
    )
    return json_response({"results": [job_json(row) for row in rows]})


@require("admin")
async def retry_endpoint(request: Request) -> Response:
    runtime = request.app.state.runtime
    row = await retry_dead_job(runtime.engine, request.path_params["jobId"], runtime.clock.now())
    runtime.wake_workers()
    return json_response(job_json(row), 202)


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/jobs", list_endpoint, methods=["GET"]),
        Route("/v1/jobs/{jobId:int}/retry", retry_endpoint, methods=["POST"]),
    ]
