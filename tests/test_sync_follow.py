"""Issue 13, sync tracking: after the relay starts a sync it reads the sync's status until the sync ends,
so accepted records become `synced` within a minute with no webhook — Codat sends none for Sync for
Commerce today (FACTS §6; codat-docs docs/using-the-api/webhooks/migrating-to-new-event-types.md).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from service import queue, syncs
from service.db import companies, notifications
from service.tracking import SYNC_KIND, follow_sync
from tests import test_push_correctness
from tests.test_push_correctness import CO, World, accepted

world = test_push_correctness.world  # the relay and the sandbox (PACE_S a sync) on one fixed clock
MINUTE_S = 60.0
STEP_S = 1.0


async def run_due_sync_checks(w: World) -> int:
    """What a worker does at this moment: run every due `check_sync` job (and nothing else)."""
    ran = 0
    for job in await queue.claim(w.engine, "test-worker", 10, w.clock.now(), 60.0):
        assert job.kind == SYNC_KIND, job.kind
        await w.pusher.tracker.check_sync_job(job, 1)
        await queue.complete(w.engine, [job], w.clock.now())
        ran += 1
    return ran


def following(w: World) -> syncs.Follow:
    """What the API and the CLI pass: keep the sync just started (its range), then follow it to its end."""

    async def follow(company_id: str, kind: str, summary: Any) -> None:
        await follow_sync(w.engine, company_id, w.clock.now(), started=(kind, summary))

    return follow


async def test_sync_latest_makes_covered_records_synced_within_a_minute_with_no_webhook(world: World) -> None:
    """`sync latest` through the relay, no webhook, no daily check: the relay polls until the sync ends."""
    w = world
    await accepted(w, "a", "b")
    started = w.clock.now()
    await syncs.sync_latest(w.runtime.codat, CO, follow=following(w))
    while set((await w.states()).values()) != {"synced"}:
        assert w.clock.now() - started <= MINUTE_S, await w.states()
        w.clock.advance(STEP_S)
        await run_due_sync_checks(w)
    async with w.engine.connect() as conn:
        code = await conn.scalar(sa.select(companies.c.last_sync_code).where(companies.c.id == CO))
    assert code == 2000
    while w.clock.now() - started <= 5 * MINUTE_S:  # once the sync ended, the polling stops
        w.clock.advance(10 * STEP_S)
        assert await run_due_sync_checks(w) == 0


async def told(w: World, kind: str) -> list[dict[str, Any]]:
    async with w.engine.connect() as conn:
        rows = await conn.execute(sa.select(notifications).where(notifications.c.kind == kind))
        return [dict(row) for row in rows.mappings()]


async def test_a_failed_sync_learned_by_polling_is_told_to_staff(world: World) -> None:
    """A 4200 sync the relay started: no webhook says so; the poll reads it and staff get `sync_failed` with the
    code's meaning and Codat's message (FACTS §3), once; the records stay accepted."""
    w = world
    await accepted(w, "a")
    await w.sandbox.post("/_sandbox/script/sync", json={"companyId": CO, "code": 4200, "errorMessage": "no account"})
    started = w.clock.now()
    await syncs.sync_latest(w.runtime.codat, CO, follow=following(w))
    while not await told(w, "sync_failed"):
        assert w.clock.now() - started <= MINUTE_S, await w.states()
        w.clock.advance(STEP_S)
        await run_due_sync_checks(w)
    [note] = await told(w, "sync_failed")
    assert (note["details"]["syncStatusCode"], note["details"]["meaning"]) == (4200, "map error")
    assert note["details"]["errorMessage"] == "no account" and set((await w.states()).values()) == {"accepted"}
