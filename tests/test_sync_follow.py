"""A sync codat-relay starts is polled until it ends: no webhook tells its end (FACTS §6).

Codat's Sync for Commerce sends no event when a sync finishes (`SyncCompleted`/`SyncFailed` are Expenses
rules), so `sync/latest` and `sync/historic` (admin API and CLI) queue a `poll_sync` job that reads
`get-sync-status` with backoff until the sync is terminal, then marks the accepted records synced or tells
staff the sync failed. Sandbox and relay share one fixed clock: time moves only when the test moves it.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from service import tracking
from service.clock import FixedClock
from service.db import jobs, writer
from service.pusher import Pusher
from service.queue import Job
from service.testing import SANDBOX_API_KEY, running_app, running_sandbox
from service.tracking import SYNC_POLL_KIND, SyncPollPolicy
from service.web.app import AppOptions
from tests.conftest import ADMIN_TOKEN, make_settings
from tests.test_other_handlers import COMPANY, Relay, accepted_orders

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


async def poll_jobs(relay: Relay) -> list[dict[str, Any]]:
    async with relay.runtime.engine.connect() as conn:
        rows = await conn.execute(sa.select(jobs.c.id, jobs.c.payload, jobs.c.run_at, jobs.c.status)
                                  .where(jobs.c.kind == SYNC_POLL_KIND).order_by(jobs.c.id))  # fmt: skip
        return [dict(row) for row in rows.mappings()]


async def run_poll(relay: Relay, row: dict[str, Any]) -> None:
    job = Job(id=row["id"], kind=SYNC_POLL_KIND, payload=row["payload"], lock_key=None, queueing_lock=None,
              attempts=1, run_at=row["run_at"], created_at=0.0)  # fmt: skip
    await Pusher(relay.runtime).tracker.poll_sync(job, 1)


async def start_followed_sync(relay: Relay, clock: FixedClock) -> dict[str, Any]:
    assert relay.runtime.codat is not None
    answer = await relay.runtime.codat.sync_latest(COMPANY)
    async with writer(relay.runtime.engine).begin() as conn:
        await tracking.follow_sync(conn, COMPANY, answer, clock.now())
    return dict(answer) if isinstance(answer, dict) else {}


async def test_starting_a_sync_through_the_admin_api_queues_its_poll(database_url: str) -> None:
    """POST /v1/companies/{id}/sync/latest answers Codat's SyncSummary and queues a poll of that sync."""
    settings = make_settings(database_url, codat_base_url="http://sandbox", codat_api_key=SANDBOX_API_KEY)
    async with (
        running_sandbox(companies=[COMPANY]) as (_, transport),
        running_app(settings, options=AppOptions(transport=transport)) as (app, client),
    ):
        answer = await client.post(f"/v1/companies/{COMPANY}/sync/latest", json={}, headers=ADMIN)
        async with app.state.runtime.engine.connect() as conn:
            payloads = (await conn.execute(sa.select(jobs.c.payload).where(jobs.c.kind == SYNC_POLL_KIND))).scalars()
            queued = list(payloads)
    assert answer.status_code == 200
    assert [p["commerce_sync_id"] for p in queued] == [answer.json()["commerceSyncId"]]


async def test_a_running_sync_is_polled_with_backoff_until_it_ends_then_records_are_synced(
    database_url: str,
) -> None:
    """1000 → polled again 2 s later (then 4 s …); once Codat says 2000 the accepted records become `synced`."""
    clock = FixedClock(1_900_000_000.0)
    async with accepted_orders(database_url, clock) as relay:
        await relay.sandbox.post("/_sandbox/config", json={"paceSeconds": 10})
        answer = await start_followed_sync(relay, clock)
        assert answer["syncStatusCode"] == 1000
        [first] = await poll_jobs(relay)
        assert first["run_at"] == clock.now() + SyncPollPolicy().delay(0)
        clock.advance(1)
        await run_poll(relay, first)
        second = (await poll_jobs(relay))[-1]
        assert (second["payload"]["polls"], second["run_at"]) == (1, clock.now() + SyncPollPolicy().delay(1))
        assert set((await relay.states()).values()) == {"accepted"}
        clock.advance(10)
        await run_poll(relay, second)
        assert await relay.states() == {"o-1": "synced", "o-2": "synced"}
        assert len(await poll_jobs(relay)) == 2  # ended: no third poll
        assert await relay.told() == []


async def test_a_failed_sync_learned_by_polling_is_told_to_staff(database_url: str) -> None:
    """A scripted 4200 seen by the poll: records stay accepted, staff get `sync_failed` with the code's meaning."""
    clock = FixedClock(1_900_000_000.0)
    async with accepted_orders(database_url, clock) as relay:
        await relay.sandbox.post("/_sandbox/script/sync", json={"companyId": COMPANY, "code": 4200,
                                                                "errorMessage": "Account 400 is missing"})  # fmt: skip
        await start_followed_sync(relay, clock)
        [poll] = await poll_jobs(relay)
        await run_poll(relay, poll)
        states, told = await relay.states(), await relay.told()
    assert set(states.values()) == {"accepted"}
    [note] = told
    assert (note["kind"], note["details"]["syncStatusCode"], note["details"]["meaning"]) == ("sync_failed", 4200,
                                                                                            "map error")  # fmt: skip
