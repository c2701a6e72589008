"""`GET /v1/jobs` and `POST /v1/jobs/{id}/retry`: admin token, filters, retrying dead jobs, 401/404/409/422."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service.clock import FixedClock
from service.db import alerts, create_engine, jobs
from service.testing import running_app
from service.web.app import AppOptions
from tests import ui_factories as f
from tests.conftest import ADMIN_TOKEN, API_TOKEN, make_settings
from tests.queue_helpers import eventually

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
NOW = 1_750_000_000.0
JOB_KEYS = {"id", "kind", "lockKey", "status", "attempts", "lastError", "runAt", "createdAt", "finishedAt", "payload"}


Seeded = tuple[httpx.AsyncClient, AsyncEngine, dict[str, int]]


RETAINED = ("alerts", "jobs", "pushes", "record_versions", "datasets", "notifications")


@asynccontextmanager
async def seeded(database_url: str, **options: Any) -> AsyncIterator[Seeded]:
    """The app on a database holding `ui_factories.world`, and an engine to look at the rows."""
    engine = create_engine(make_settings(database_url))
    async with engine.begin() as conn:
        ids = await conn.run_sync(f.world, NOW)
    clock = options.pop("clock", FixedClock(NOW + 60))
    try:
        # The world is dated NOW (2025): with the real clock, the retention prune a worker runs at start would
        # take its finished alerts and jobs from under the test. Kept forever here.
        keep = {f"retain_{table}_days": 0 for table in RETAINED}
        settings = make_settings(database_url, **keep)
        async with running_app(settings, clock=clock, options=AppOptions(**options)) as (_, client):
            yield client, engine, ids
    finally:
        await engine.dispose()


async def row(engine: AsyncEngine, table: sa.Table, key: object) -> sa.RowMapping:
    async with engine.connect() as conn:
        return (await conn.execute(sa.select(table).where(table.c.id == key))).mappings().one()


async def test_jobs_are_listed_newest_first_and_filtered(database_url: str) -> None:
    """Status and kind filter; newest first; `limit` caps; each job has the documented keys."""
    async with seeded(database_url) as (client, engine, ids):
        async with engine.begin() as conn:
            waiting = await conn.run_sync(f.job, "notify", {"notification_id": "n-1"}, "waiting", NOW)
        dead = (await client.get("/v1/jobs?status=dead", headers=ADMIN)).json()["results"]
        pushes = (await client.get("/v1/jobs?status=dead&kind=push", headers=ADMIN)).json()["results"]
        everything = (await client.get("/v1/jobs", headers=ADMIN)).json()["results"]
        one = (await client.get("/v1/jobs?limit=1", headers=ADMIN)).json()["results"]
    assert [j["id"] for j in dead] == [ids["push_job"], ids["alert_job"]]
    assert [j["id"] for j in pushes] == [ids["push_job"]]
    assert [j["id"] for j in everything] == [waiting, ids["push_job"], ids["alert_job"]]
    assert [j["id"] for j in one] == [waiting]
    assert set(dead[0]) == JOB_KEYS
    assert dead[1]["payload"] == {"alert_id": f.DEAD_ALERT}
    assert (dead[1]["lockKey"], dead[1]["attempts"], dead[1]["status"]) == (f"company:{f.FAILING}", 10, "dead")
    assert dead[1]["lastError"].startswith("RuntimeError") and dead[1]["finishedAt"].endswith("Z")


async def test_retrying_a_dead_alert_job_makes_job_and_alert_pending_again(database_url: str) -> None:
    """The same job goes back to waiting, run now, attempts from zero; its alert goes from dead to pending."""
    async with seeded(database_url) as (client, engine, ids):
        response = await client.post(f"/v1/jobs/{ids['alert_job']}/retry", headers=ADMIN)
        job, alert = await row(engine, jobs, ids["alert_job"]), await row(engine, alerts, f.DEAD_ALERT)
        async with engine.connect() as conn:
            count = await conn.scalar(sa.select(sa.func.count()).select_from(jobs))
    assert response.status_code == 202
    assert response.json()["status"] == "waiting" and response.json()["id"] == ids["alert_job"]
    assert (job["status"], job["attempts"], job["run_at"], job["finished_at"]) == ("waiting", 0, NOW + 60, None)
    assert alert["status"] == "pending"
    assert count == 2  # retried in place: no new job


async def test_a_retried_job_runs_and_its_alert_follows(database_url: str) -> None:
    """With workers running, the retried alert job is claimed at once and its alert ends `ignored` (no handler)."""
    async with seeded(database_url, run_workers=True, clock=None) as (client, engine, ids):
        assert (await client.post(f"/v1/jobs/{ids['alert_job']}/retry", headers=ADMIN)).status_code == 202

        async def processed() -> bool:
            job = await row(engine, jobs, ids["alert_job"])
            return job["status"] == "done" and (await row(engine, alerts, f.DEAD_ALERT))["status"] == "ignored"

        await eventually(processed)
        job, alert = await row(engine, jobs, ids["alert_job"]), await row(engine, alerts, f.DEAD_ALERT)
    assert (job["attempts"], alert["attempts"]) == (1, 4)  # the alert counts every run, the retry included


async def test_a_dead_job_whose_work_is_already_queued_ends_done(database_url: str) -> None:
    """A waiting job holding the same queueing lock does the same work: the dead one ends `done`, not twice."""
    async with seeded(database_url) as (client, engine, ids):
        lock = f"push:{f.FAILING}:orders"
        async with engine.begin() as conn:
            other = await conn.run_sync(f.job, "push", {"company_id": f.FAILING, "data_type": "orders"}, "waiting",
                                        NOW, lock_key=lock, queueing_lock=lock)  # fmt: skip
        response = await client.post(f"/v1/jobs/{ids['push_job']}/retry", headers=ADMIN)
        dead, waiting = await row(engine, jobs, ids["push_job"]), await row(engine, jobs, other)
    assert response.status_code == 202 and response.json()["status"] == "done"
    assert (dead["status"], waiting["status"]) == ("done", "waiting")


@pytest.mark.parametrize("status", ["waiting", "running", "done"])
async def test_only_dead_jobs_can_be_retried(database_url: str, status: str) -> None:
    """409 for a job that is not dead, and the job is left as it was."""
    async with seeded(database_url) as (client, engine, _):
        async with engine.begin() as conn:
            job_id = await conn.run_sync(f.job, "notify", {}, status, NOW)
        response = await client.post(f"/v1/jobs/{job_id}/retry", headers=ADMIN)
        after = await row(engine, jobs, job_id)
    assert response.status_code == 409
    assert response.json() == {"error": "not_dead", "detail": f"job {job_id} is {status}, not dead"}
    assert after["status"] == status


@pytest.mark.parametrize("job_id", ["999999", "abc", str(2**70)])
async def test_unknown_jobs_are_404(database_url: str, job_id: str) -> None:
    async with running_app(make_settings(database_url)) as (_, client):
        assert (await client.post(f"/v1/jobs/{job_id}/retry", headers=ADMIN)).status_code == 404


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer wrong"}, {"authorization": f"Bearer {API_TOKEN}"}],
    ids=["missing", "wrong", "api-token-is-not-admin"],
)
async def test_jobs_endpoints_need_the_admin_token(database_url: str, headers: dict[str, str]) -> None:
    """401 before anything is read or changed."""
    async with seeded(database_url) as (client, engine, ids):
        listed = await client.get("/v1/jobs", headers=headers)
        retried = await client.post(f"/v1/jobs/{ids['alert_job']}/retry", headers=headers)
        job = await row(engine, jobs, ids["alert_job"])
    assert (listed.status_code, retried.status_code) == (401, 401)
    assert job["status"] == "dead"


@pytest.mark.parametrize("query", ["status=nope", "limit=0", "limit=abc", "limit=1001", f"kind={'k' * 65}"])
async def test_invalid_queries_are_422_naming_the_field(database_url: str, query: str) -> None:
    async with running_app(make_settings(database_url)) as (_, client):
        response = await client.get(f"/v1/jobs?{query}", headers=ADMIN)
    assert response.status_code == 422
    assert response.json()["detail"].startswith(query.split("=")[0])
