"""The push pipeline against a real sandbox process over HTTP, on SQLite and PostgreSQL.

The relay runs in-process with its workers; Codat is the `codat-relay sandbox` process on a free port.
Each test uses its own company id, so one sandbox serves the module.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from service.db import push_records
from service.db import pushes as pushes_table
from service.db import records as records_table
from service.testing import SANDBOX_API_KEY, SANDBOX_AUTH, running_app, sandbox_company
from service.web.app import AppOptions
from tests.conftest import ADMIN_TOKEN, API_TOKEN, make_settings
from tests.integration.harness import sandbox_process
from tests.queue_helpers import eventually

API = {"authorization": f"Bearer {API_TOKEN}"}
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
DEADLINE_S = 30.0


def order(order_id: str, amount: float = 10.0, modified: str = "2025-06-01T10:00:00Z") -> dict[str, Any]:
    return {"id": order_id, "orderNumber": order_id, "currency": "GBP", "totalAmount": amount,
            "createdDate": "2025-06-01T09:00:00Z", "sourceModifiedDate": modified}  # fmt: skip


@pytest.fixture(scope="module")
def sandbox_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `codat-relay sandbox` process: datasets end Complete at once, pushes take 20 ms."""
    with sandbox_process(tmp_path_factory.mktemp("sandbox") / "sandbox.log", "--pace-seconds", "0",
                         "--push-processing-seconds", "0.02") as base:  # fmt: skip
        yield base


class Env:
    """The relay (in-process, workers on) plus a client of the sandbox's inspection API."""

    def __init__(self, relay: httpx.AsyncClient, sandbox: httpx.AsyncClient, runtime: Any) -> None:
        self.relay, self.sandbox, self.runtime, self.engine = relay, sandbox, runtime, runtime.engine
        self.company = f"co-{uuid.uuid4().hex[:10]}"

    async def put(self, items: list[dict[str, Any]], data_type: str = "orders") -> httpx.Response:
        return await self.relay.put(f"/v1/companies/{self.company}/records/{data_type}",
                                    json={"records": items}, headers=API)  # fmt: skip

    async def pushes(self) -> list[dict[str, Any]]:
        answer = await self.sandbox.get("/_sandbox/pushes", params={"companyId": self.company})
        return list(answer.json()["results"])

    async def breaches(self) -> list[dict[str, Any]]:
        answer = await self.sandbox.get("/_sandbox/breaches", params={"companyId": self.company})
        return list(answer.json()["results"])

    async def states(self) -> dict[str, str]:
        query = sa.select(records_table.c.record_id, records_table.c.state).where(
            records_table.c.company_id == self.company)
        async with self.engine.connect() as conn:
            return {row.record_id: row.state for row in await conn.execute(query)}

    async def until_states(self, expected: str, count: int) -> None:
        async def done() -> bool:
            states = await self.states()
            return len(states) == count and set(states.values()) == {expected}

        await eventually(done, DEADLINE_S)

    async def until_pushes(self, count: int) -> list[dict[str, Any]]:
        async def done() -> bool:
            return len(await self.pushes()) >= count

        await eventually(done, DEADLINE_S)
        return await self.pushes()


EnvFactory = Callable[..., Awaitable[Env]]


@pytest.fixture
async def env(database_url: str, sandbox_url: str) -> AsyncIterator[Env]:
    settings = make_settings(database_url, codat_base_url=sandbox_url, codat_api_key=SANDBOX_API_KEY,
                             push_debounce_seconds=0)  # fmt: skip
    async with running_app(settings, options=AppOptions(run_workers=True)) as (app, relay):
        async with httpx.AsyncClient(base_url=sandbox_url, timeout=10, headers=SANDBOX_AUTH) as sandbox:
            created = Env(relay, sandbox, app.state.runtime)
            # Records here are dated 2025: the company's syncs must cover them (Codat syncs from its start date).
            await asyncio.to_thread(sandbox_company, sandbox_url, created.company, sync_start="2025-01-01T00:00:00Z")
            yield created


async def test_first_push_sends_all_then_only_changes(env: Env) -> None:
    """First push = every record; the second = only the new and changed ones, each as a whole object."""
    first = [order(f"o-{i}") for i in range(5)]
    assert (await env.put(first)).json() == {"accepted": 5, "unchanged": 0, "deleted": 0, "conflicts": []}
    await env.until_states("accepted", 5)
    assert [sorted(p["recordIds"]) for p in await env.pushes()] == [[f"o-{i}" for i in range(5)]]

    second = [*first[:3], order("o-3", 99.0, "2025-06-02T10:00:00Z"), first[4], order("o-5")]
    answer = (await env.put(second)).json()
    assert answer == {"accepted": 2, "unchanged": 4, "deleted": 0, "conflicts": []}
    pushes = await env.until_pushes(2)
    assert sorted(pushes[1]["recordIds"]) == ["o-3", "o-5"]
    await env.until_states("accepted", 6)
    records = (await env.sandbox.get("/_sandbox/records", params={"companyId": env.company})).json()["results"]
    assert next(r for r in records if r["id"] == "o-3")["data"] == second[3]  # the whole object
    assert await env.breaches() == []
    await assert_bookkeeping(env, [(p["datasetId"], p["idempotencyKey"]) for p in pushes],
                             [{(f"o-{i}", 1) for i in range(5)}, {("o-3", 2), ("o-5", 1)}])  # fmt: skip


async def assert_bookkeeping(env: Env, datasets: list[tuple[str, str]], versions: list[set[tuple[str, int]]]) -> None:
    """The relay's `pushes`/`push_records` say which version of which record went into which dataset, when,
    and what came of it — the same datasets, under the same keys, as Codat saw."""
    async with env.engine.connect() as conn:
        rows = (await conn.execute(
            sa.select(pushes_table).where(pushes_table.c.company_id == env.company)
            .order_by(pushes_table.c.started_at))).mappings().all()  # fmt: skip
        sent = [{(r.record_id, r.version) for r in await conn.execute(
            sa.select(push_records.c.record_id, push_records.c.version).where(push_records.c.push_id == row["id"])
        )} for row in rows]  # fmt: skip
    assert [(row["dataset_id"], row["id"]) for row in rows] == datasets  # the push id is the Idempotency-Key
    assert sent == versions
    assert [row["record_count"] for row in rows] == [len(v) for v in versions]
    assert {(row["outcome"], row["payload"], row["error"], row["data_type"]) for row in rows} == {
        ("pushed", None, None, "commerce-orders")}  # fmt: skip
    assert all(row["started_at"] <= row["finished_at"] <= time.time() for row in rows)
    assert rows[0]["finished_at"] <= rows[1]["started_at"]


async def test_unchanged_resubmits_push_nothing(env: Env) -> None:
    """Re-submitting records exactly as before stores nothing new and pushes nothing."""
    items = [order(f"u-{i}") for i in range(3)]
    await env.put(items)
    await env.until_states("accepted", 3)
    assert (await env.put(items)).json()["unchanged"] == 3
    await env.sandbox.post("/_sandbox/tick")
    async with env.engine.connect() as conn:
        waiting = await conn.scalar(sa.text("SELECT count(*) FROM jobs WHERE kind = 'push' AND status = 'waiting'"))
    assert waiting == 0
    assert len(await env.pushes()) == 1


async def test_deletes_are_sparse(env: Env) -> None:
    """A record holding only its id is pushed as exactly `{"id": …}`."""
    await env.put([order("d-1"), order("d-2")])
    await env.until_states("accepted", 2)
    assert (await env.put([{"id": "d-1"}])).json()["deleted"] == 1
    await env.until_pushes(2)
    await env.until_states("accepted", 2)
    records = (await env.sandbox.get("/_sandbox/records", params={"companyId": env.company})).json()["results"]
    deleted = next(r for r in records if r["id"] == "d-1")
    assert deleted["data"] == {"id": "d-1"} and deleted["deleted"] is True
    assert [b["kind"] for b in await env.breaches()] == []


async def test_12001_records_go_in_three_pushes_of_at_most_5000(env: Env) -> None:
    """12,001 records waiting at once → exactly 3 pushes of 5,000, 5,000 and 2,001, in id order, no rule breached."""
    assert (await env.put([])).status_code == 202  # the company exists, so it can be paused before any push
    assert (await env.relay.post(f"/v1/companies/{env.company}/pause", headers=ADMIN)).status_code == 200
    for start_at in range(0, 12_001, 5_000):
        batch = [order(f"b-{i:05d}") for i in range(start_at, min(start_at + 5_000, 12_001))]
        assert (await env.put(batch)).status_code == 202
    assert (await env.relay.post(f"/v1/companies/{env.company}/resume", headers=ADMIN)).status_code == 200
    await env.until_states("accepted", 12_001)
    pushes = await env.pushes()
    assert [p["count"] for p in pushes] == [5_000, 5_000, 2_001]
    assert [rid for p in pushes for rid in p["recordIds"]] == [f"b-{i:05d}" for i in range(12_001)]
    assert await env.breaches() == []


async def test_paused_company_takes_intake_and_pushes_only_after_resume(env: Env) -> None:
    """Paused: intake still answers 202, nothing is pushed; resume pushes what waited."""
    assert (await env.put([])).status_code == 202  # codat-relay knows the company: only a known one is paused
    assert (await env.relay.post(f"/v1/companies/{env.company}/pause", headers=ADMIN)).status_code == 200
    assert (await env.put([order("p-1")])).status_code == 202
    view = (await env.relay.get(f"/v1/companies/{env.company}", headers=ADMIN)).json()
    assert view["paused"] is True and view["records"]["commerce-orders"]["pending"] == 1
    await eventually(lambda: _no_waiting_push(env.engine), DEADLINE_S)  # the push job ran and left it
    assert await env.pushes() == []
    assert (await env.relay.post(f"/v1/companies/{env.company}/resume", headers=ADMIN)).status_code == 200
    await env.until_states("accepted", 1)
    assert len(await env.pushes()) == 1


async def _no_waiting_push(engine: Any) -> bool:
    query = sa.text("SELECT count(*) FROM jobs WHERE kind = 'push' AND status IN ('waiting', 'running')")
    async with engine.connect() as conn:
        return bool(await conn.scalar(query) == 0)


async def test_synced_records_are_never_resent(env: Env) -> None:
    """After a successful sync, a changed record is a conflict: reported, kept, never pushed."""
    await env.put([order("s-1"), order("s-2")])
    await env.until_states("accepted", 2)
    sync = await env.sandbox.post(f"/companies/{env.company}/sync/commerce/latest", json={})
    assert sync.json()["syncStatusCode"] in (1000, 2000)
    await env.sandbox.post("/_sandbox/tick")
    await _check_sync(env.runtime, env.company)
    await env.until_states("synced", 2)

    answer = (await env.put([order("s-1", 55.0, "2025-07-01T00:00:00Z"), order("s-3")])).json()
    assert answer["conflicts"] == [{"id": "s-1", "reason": "already_synced"}]
    assert answer["accepted"] == 1
    await env.until_pushes(2)
    assert (await env.pushes())[1]["recordIds"] == ["s-3"]
    assert (await env.states())["s-1"] == "conflict"
    assert [b for b in await env.breaches() if b["kind"] == "update_after_sync"] == []
    async with env.engine.connect() as conn:
        told = await conn.scalar(sa.text("SELECT count(*) FROM notifications WHERE kind = 'update_conflict'"))
    assert told == 1


async def _check_sync(runtime: Any, company_id: str) -> None:
    from service.db import writer
    from service.queue import enqueue
    from service.tracking import SYNC_KIND

    await enqueue(writer(runtime.engine), SYNC_KIND, {"company_id": company_id}, now=time.time())
    runtime.wake_workers()


async def test_failed_dataset_marks_its_records_failed(env: Env) -> None:
    """A dataset ending in an error leaves its records `failed` and tells staff once."""
    await env.sandbox.post("/_sandbox/script/dataset", json={
        "companyId": env.company, "dataType": "commerce-orders", "status": "ValidationError"})
    await env.put([order("f-1")])
    await env.until_states("failed", 1)
    view = (await env.relay.get(f"/v1/companies/{env.company}", headers=ADMIN)).json()
    assert view["recentDatasets"][0]["status"] == "ValidationError"

