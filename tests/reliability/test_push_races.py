"""Issue 12's randomized race: bursts of versions of the same ids, two workers, datasets finishing in between.

Two workers (each with its own engine, as two processes would have) push one company to the in-process
sandbox while intake keeps sending new versions — changes, deletes, reverts to older content — of a
small set of ids, so pushes, held-back versions and datasets ending (some in FetchError, re-pushed)
overlap all the time. Afterwards the sandbox is the oracle: no `update_after_sync`, `concurrent_push`
or `duplicate_record`, and it holds every record's latest version (none lost). The fast form runs in
`make test`; `make reliability` runs the full size.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import httpx
import sqlalchemy as sa

from service.clock import SystemClock
from service.db import create_engine, jobs, records
from service.outbox import store_records
from service.records import validate_records
from service.runtime import build_runtime
from service.testing import SANDBOX_API_KEY, SANDBOX_AUTH, running_sandbox
from tests.conftest import make_settings
from tests.queue_helpers import running
from tests.reliability.common import FULL, backend, report

CO, ORDERS = "co-race", "commerce-orders"
BAD = ("update_after_sync", "concurrent_push", "duplicate_record")
BURSTS = 40 if FULL else 6
IDS = 30
DEADLINE_S = 240.0 if FULL else 90.0


def version(record_id: str, n: int) -> dict[str, Any]:
    if n % 7 == 6:
        return {"id": record_id}  # a delete
    content = n % 3  # only three contents: later versions often revert to earlier ones
    stamp = f"2027-01-0{content + 1}T10:00:00Z"
    return {"id": record_id, "currency": "GBP", "totalAmount": 10.0 + content,
            "createdDate": "2027-01-01T09:00:00Z", "sourceModifiedDate": stamp}  # fmt: skip


async def _quiet(engine: Any) -> bool:
    async with engine.connect() as conn:
        busy = await conn.scalar(sa.select(sa.func.count()).where(
            jobs.c.kind.in_(["push", "poll_dataset"]), jobs.c.status.in_(["waiting", "running"])))  # fmt: skip
        moving = await conn.scalar(sa.select(sa.func.count()).where(
            records.c.state.in_(["pending", "pushed"])))  # fmt: skip
    return not busy and not moving


async def test_bursts_of_versions_across_two_workers_lose_nothing_and_breach_nothing(database_url: str) -> None:
    """Every latest version reaches Codat exactly as sent; 0 breaches of rules 3 and 7, 0 duplicates."""
    rng = random.Random(12)
    async with running_sandbox(companies=[CO], pace_seconds=0.3, push_processing_seconds=0.02) as (_, transport):
        settings = make_settings(database_url, codat_base_url="http://sandbox", codat_api_key=SANDBOX_API_KEY,
                                 push_debounce_seconds=0, max_push_records=7, worker_concurrency=2,
                                 repush_backoff_seconds=0.2)  # fmt: skip
        engines = [create_engine(settings) for _ in range(2)]
        runtimes = [await build_runtime(settings, e, SystemClock(), transport=transport) for e in engines]
        sandbox = httpx.AsyncClient(transport=transport, base_url="http://sandbox", headers=SANDBOX_AUTH)
        latest: dict[str, dict[str, Any]] = {}
        versions = 0
        try:
            async with running(*(r.build_worker() for r in runtimes)):
                for burst in range(BURSTS):
                    if rng.random() < 0.3:  # some datasets end in an error a re-push may clear
                        await sandbox.post("/_sandbox/script/dataset", json={
                            "companyId": CO, "dataType": ORDERS, "status": "FetchError"})  # fmt: skip
                    ids = rng.sample([f"r-{i:02d}" for i in range(IDS)], rng.randint(3, IDS))
                    batch = [version(i, burst + rng.randint(0, 6)) for i in ids]
                    valid, errors = validate_records(ORDERS, batch)
                    assert errors == []
                    runtime = runtimes[burst % 2]
                    await store_records(runtime.engine, CO, ORDERS, valid, now=time.time(), after=_schedule(runtime))
                    latest.update({r["id"]: r for r in batch})
                    versions += len(batch)
                    for r in runtimes:
                        r.wake_workers()
                    await asyncio.sleep(rng.uniform(0.0, 0.4))  # bursts arrive at random moments, not a wait for work
                give_up = time.monotonic() + DEADLINE_S
                while not await _quiet(engines[0]):
                    assert time.monotonic() < give_up, "the pushes never settled"
                    await asyncio.sleep(0.1)
            breaches = (await sandbox.get("/_sandbox/breaches", params={"companyId": CO})).json()["results"]
            held = {r["id"]: r["data"] for r in
                    (await sandbox.get("/_sandbox/records", params={"companyId": CO})).json()["results"]}  # fmt: skip
            pushes = len((await sandbox.get("/_sandbox/pushes", params={"companyId": CO})).json()["results"])
        finally:
            await sandbox.aclose()
            for r in runtimes:
                await r.close()
            for e in engines:
                await e.dispose()
    lost = sorted(i for i, body in latest.items() if held.get(i) != body)
    bad = [b for b in breaches if b["kind"] in BAD]
    report(f"push-races-{'full' if FULL else 'fast'}-{backend(database_url)}", {
        "bursts": BURSTS, "workers": len(runtimes), "versions": versions, "ids": len(latest), "pushes": pushes,
        "lost": len(lost), "breaches": len(bad), "warnings": len(breaches) - len(bad)})  # fmt: skip
    assert bad == []
    assert lost == []


def _schedule(runtime: Any) -> Any:
    from service.outbox import schedule_push

    async def after(conn: Any, result: Any) -> None:
        if result.pending:
            await schedule_push(conn, CO, ORDERS, now=runtime.clock.now())

    return after
