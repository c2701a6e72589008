"""Issue 14, each merchant's sync schedule: the relay reads Codat's schedule, pushes before the sync hour,
tells staff once when a sync is at risk, and follows the sync Codat runs by itself.

The relay's jobs run step by step on an injected clock; Codat is the sandbox served over real HTTP (uvicorn
on a free port) on the same clock, so "before 01:30 local" is checked on the sandbox's own clock. The
schedule is Sync for Commerce's `get-configuration` (`GET /config/companies/{companyId}/sync/commerce`,
sync-commerce-current.json: `schedule.syncHour`, `timeZone`); Codat's rule is to push before the
configured sync time (FACTS §6); a sync's outcome is learned by polling (no webhook, FACTS §6).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import sqlalchemy as sa

from service import queue
from service.clock import FixedClock
from service.db import companies, create_engine, jobs, notifications, records
from service.notifications import NOTIFY_JOB_KIND, NotifyJob
from service.outbox import store_records
from service.pusher import Pusher
from service.records import validate_records
from service.runtime import Runtime, build_runtime
from service.sandbox import SandboxConfig, create_sandbox_app
from service.schedules import SCHEDULE_KIND, Scheduler, queue_refresh
from service.testing import SANDBOX_API_KEY, SANDBOX_AUTH
from service.worker import JobFunction
from tests.conftest import make_settings
from tests.test_notifications import serving

CO, ORDERS = "co-new-york", "commerce-orders"
NEW_YORK = ZoneInfo("America/New_York")
DAILY_2AM = {"selectedFrequency": "Daily", "syncHour": 2, "timeZone": "America/New_York"}
STEP_S = 120.0  # how far the shared clock moves between two rounds of due jobs
LEASE_S = 3600.0


def local(text: str) -> float:
    """A New York wall-clock time as UNIX seconds."""
    return datetime.fromisoformat(text).replace(tzinfo=NEW_YORK).timestamp()


def order(record_id: str) -> dict[str, Any]:
    return {"id": record_id, "currency": "USD", "totalAmount": 12.5, "createdDate": "2027-06-09T15:00:00Z"}


@contextlib.asynccontextmanager
async def served_sandbox(clock: FixedClock, **config: Any) -> AsyncIterator[str]:
    """The sandbox on a real socket, on the test's clock (uvicorn in this event loop)."""
    app = create_sandbox_app(SandboxConfig(api_key=SANDBOX_API_KEY, push_processing_seconds=0.0, **config),
                             clock=clock)  # fmt: skip
    async with serving(app, lifespan="on") as url:
        yield url


class Relay:
    """The relay's job functions run as a worker would, one round at a time, on the shared clock."""

    def __init__(self, runtime: Runtime, sandbox: httpx.AsyncClient, clock: FixedClock) -> None:
        self.runtime, self.engine, self.sandbox, self.clock = runtime, runtime.engine, sandbox, clock
        self.scheduler = Scheduler(runtime)
        self.jobs: dict[str, JobFunction] = {
            **Pusher(runtime).jobs(), SCHEDULE_KIND: self.scheduler.run,
            NOTIFY_JOB_KIND: NotifyJob(runtime.engine, runtime.senders),
        }  # fmt: skip

    async def run_due(self) -> None:
        while claimed := await queue.claim(self.engine, "test-worker", 20, self.clock.now(), LEASE_S):
            for job in claimed:
                await self.jobs[job.kind](job, 1)
            await queue.complete(self.engine, claimed, self.clock.now())

    async def step_until(self, moment: float, check: Callable[[], Any] | None = None) -> None:
        """Move the clock to `moment` in steps; the sandbox settles (over HTTP) and due jobs run at each."""
        while self.clock.now() < moment:
            self.clock.set(min(moment, self.clock.now() + STEP_S))
            assert (await self.sandbox.post("/_sandbox/tick")).status_code == 200
            await self.run_due()

    async def intake(self, *ids: str) -> None:
        valid, errors = validate_records(ORDERS, [order(i) for i in ids])
        assert errors == []

        async def no_push(*_: Any) -> None:
            return None  # the debounced push is not what this test is about: the schedule's push is

        await store_records(self.engine, CO, ORDERS, valid, now=self.clock.now(), after=no_push)

    async def states(self) -> set[str]:
        async with self.engine.connect() as conn:
            return set((await conn.execute(sa.select(records.c.state).where(records.c.company_id == CO))).scalars())

    async def company(self) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            return dict((await conn.execute(sa.select(companies).where(companies.c.id == CO))).mappings().one())

    async def told(self, kind: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(notifications).where(notifications.c.kind == kind))
            return [dict(row) for row in rows.mappings()]

    async def sandbox_datasets(self) -> list[dict[str, Any]]:
        answer = await self.sandbox.get("/_sandbox/datasets", params={"companyId": CO})
        return list(answer.json()["results"])

    async def sandbox_now(self) -> float:
        now = (await self.sandbox.get("/_sandbox/clock")).json()["now"]
        return datetime.fromisoformat(now.replace("Z", "+00:00")).timestamp()


@contextlib.asynccontextmanager
async def relay_and_sandbox(database_url: str, start: float, **sandbox_config: Any) -> AsyncIterator[Relay]:
    clock = FixedClock(start)
    async with served_sandbox(clock, **sandbox_config) as url:
        settings = make_settings(database_url, codat_base_url=url, codat_api_key=SANDBOX_API_KEY)
        engine = create_engine(settings)
        runtime = await build_runtime(settings, engine, clock)
        try:
            async with httpx.AsyncClient(base_url=url, headers=SANDBOX_AUTH) as sandbox:
                assert (await sandbox.post("/_sandbox/companies", json={"id": CO, "name": "Bodega Uno"})).is_success
                configured = await sandbox.post(f"/config/companies/{CO}/sync/commerce", json={"schedule": DAILY_2AM})
                assert configured.status_code == 200, configured.text
                yield Relay(runtime, sandbox, clock)
        finally:
            await runtime.close()
            await engine.dispose()


async def test_records_are_complete_in_codat_before_0130_new_york_for_a_0200_sync(database_url: str) -> None:
    """Pending at 20:00; the schedule's push goes at 01:15 (02:00 - 30 min margin - 15 min lead); every
    dataset is Complete on the sandbox's clock before 01:30 local; the 02:00 sync Codat runs by itself takes
    them, and the relay, following it, has them `synced` and "last sync" right within minutes."""
    async with relay_and_sandbox(database_url, local("2027-06-09T20:00"), pace_seconds=300.0) as r:
        await r.intake("o-1", "o-2")
        await queue_refresh(r.engine, CO, r.clock.now())
        await r.run_due()
        row = await r.company()
        assert (row["name"], row["sync_hour"], row["sync_time_zone"]) == ("Bodega Uno", 2, "America/New_York")
        assert row["next_sync_at"] == local("2027-06-10T02:00")
        await r.step_until(local("2027-06-10T01:14"))
        assert await r.states() == {"pending"} and await r.sandbox_datasets() == []  # nothing pushed early
        await r.step_until(local("2027-06-10T01:29"))
        assert await r.sandbox_now() < local("2027-06-10T01:30")
        found = await r.sandbox_datasets()
        assert found and {d["status"] for d in found} == {"Complete"}, found
        assert await r.states() == {"accepted"}
        await r.step_until(local("2027-06-10T02:20"))  # the sync takes 5 minutes of the sandbox's clock
        assert await r.states() == {"synced"}
        row = await r.company()
        assert (row["last_sync_code"], row["last_sync_at"]) == (2000, local("2027-06-10T02:00"))
        assert row["next_sync_at"] == local("2027-06-11T02:00")  # the next one is planned
        assert await r.told("sync_at_risk") == []


async def test_a_stuck_dataset_at_the_margin_gets_exactly_one_sync_at_risk(database_url: str) -> None:
    """A dataset Codat takes 4 hours over, and a record arriving after the push: at 01:30 staff hear
    `sync_at_risk` with what is late and by how much, once, though the schedule is read and planned again."""
    async with relay_and_sandbox(database_url, local("2027-06-09T20:00"), pace_seconds=4 * 3600.0) as r:
        await r.intake("o-1")
        await queue_refresh(r.engine, CO, r.clock.now())
        await r.step_until(local("2027-06-10T01:20"))
        await r.intake("o-late")
        await r.step_until(local("2027-06-10T01:32"))
        [note] = await r.told("sync_at_risk")
        details = note["details"]
        assert details["counts"] == {"pendingRecords": 1, "unfinishedDatasets": 1}
        assert details["syncAt"] == "2027-06-10T06:00:00Z"
        assert details["unfinishedDatasets"][0]["ageMinutes"] == pytest.approx(15.0, abs=STEP_S / 60)
        assert details["pendingRecords"][ORDERS]["count"] == 1 and details["paused"] is False
        await queue_refresh(r.engine, CO, r.clock.now())  # a connection event re-plans the same sync
        await r.step_until(local("2027-06-10T02:10"))
        assert len(await r.told("sync_at_risk")) == 1


def test_the_next_sync_is_stored_in_utc_for_the_zone_given() -> None:
    """The fixture's own arithmetic: 02:00 New York in June is 06:00 UTC (EDT)."""
    assert datetime.fromtimestamp(local("2027-06-10T02:00"), UTC).hour == 6


# -- reading the schedule: when, and what Codat's refusals leave ------------------------------------------


@contextlib.asynccontextmanager
async def fake_codat(database_url: str, answers: dict[str, httpx.Response]) -> AsyncIterator[tuple[Relay, list[str]]]:
    """The relay against a Codat whose answers are given per path (recorded, in order); no sandbox."""
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return answers.get(request.url.path, httpx.Response(404, json={"statusCode": 404, "error": "Not Found"}))

    clock = FixedClock(local("2027-06-09T20:00"))
    settings = make_settings(database_url, codat_base_url="http://codat.test", codat_api_key="k" * 8)
    engine = create_engine(settings)
    runtime = await build_runtime(settings, engine, clock, transport=httpx.MockTransport(handler))
    try:
        async with httpx.AsyncClient(base_url="http://unused.test") as unused:
            yield Relay(runtime, unused, clock), asked
    finally:
        await runtime.close()
        await engine.dispose()


async def test_the_sweep_reads_schedules_never_read_or_a_day_old_and_no_others(database_url: str) -> None:
    """A company first seen (its first records) is read by the next sweep; read again only a day later."""
    config = {"configured": True, "enable": True, "schedule": DAILY_2AM}
    answers = {f"/config/companies/{CO}/sync/commerce": httpx.Response(200, json=config),
               f"/companies/{CO}": httpx.Response(200, json={"id": CO, "name": "Bodega Uno"})}  # fmt: skip
    async with fake_codat(database_url, answers) as (r, asked):
        await r.intake("o-1")
        for _ in range(2):
            await r.scheduler.sweep(None, 1)  # type: ignore[arg-type]  # the periodic job reads no payload
            await r.run_due()
        assert asked.count(f"/config/companies/{CO}/sync/commerce") == 1
        assert (await r.company())["next_sync_at"] == local("2027-06-10T02:00")
        r.clock.advance(86_400 + 60)
        await r.scheduler.sweep(None, 1)  # type: ignore[arg-type]
        await r.run_due()
        assert asked.count(f"/config/companies/{CO}/sync/commerce") == 2


@pytest.mark.parametrize(("status", "config", "reason"), [
    (404, None, "no Sync for Commerce configuration"),
    (403, None, "refused the configuration read (403)"),
    (200, {"configured": False, "enable": False, "schedule": DAILY_2AM}, "not configured"),
    (200, {"schedule": {"selectedFrequency": "Daily", "syncHour": 2, "timeZone": "Mars/Olympus"}}, "Mars/Olympus"),
])  # fmt: skip
async def test_a_schedule_codat_will_not_give_is_a_stored_reason_not_a_dead_job(
    database_url: str, status: int, config: dict[str, Any] | None, reason: str
) -> None:
    """No next sync, the reason shown (`syncSchedule.error`), the job done: the sweep asks again tomorrow."""
    body = config if config is not None else {"statusCode": status, "error": "no"}
    answers = {f"/config/companies/{CO}/sync/commerce": httpx.Response(status, json=body)}
    async with fake_codat(database_url, answers) as (r, _):
        await r.intake("o-1")
        await queue_refresh(r.engine, CO, r.clock.now())
        await r.run_due()  # raises if the job failed
        row = await r.company()
        assert row["next_sync_at"] is None and row["sync_hour"] is None
        assert reason in row["schedule_error"] and row["schedule_fetched_at"] == r.clock.now()


async def test_a_changed_schedule_replans_the_steps_of_the_next_sync(database_url: str) -> None:
    """Codat's hour moves from 02:00 to 05:00: the steps planned for 02:00 are replaced, one per step."""
    path = f"/config/companies/{CO}/sync/commerce"
    answers = {path: httpx.Response(200, json={"schedule": DAILY_2AM})}
    async with fake_codat(database_url, answers) as (r, _):
        await r.intake("o-1")
        await r.scheduler.refresh(CO)
        answers[path] = httpx.Response(200, json={"schedule": {**DAILY_2AM, "syncHour": 5}})
        await r.scheduler.refresh(CO)
        async with r.engine.connect() as conn:
            steps = (await conn.execute(sa.select(jobs.c.payload, jobs.c.run_at).where(
                jobs.c.kind == SCHEDULE_KIND, jobs.c.status == "waiting"))).all()  # fmt: skip
        sync = local("2027-06-10T05:00")
        assert sorted((p["phase"], p["sync_at"], run_at) for p, run_at in steps) == [
            ("check", sync, sync - 1800), ("follow", sync, sync + 60), ("push", sync, sync - 2700)]
        assert (await r.company())["next_sync_at"] == sync
