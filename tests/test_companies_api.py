"""`POST /v1/companies/{id}/repush`, in-process (no workers): what goes again, what is skipped, 401/404/422."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from service.clock import FixedClock
from service.db import jobs, records, writer
from service.testing import running_app
from tests.conftest import ADMIN_TOKEN, API_TOKEN, make_settings

API = {"authorization": f"Bearer {API_TOKEN}"}
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
COMPANY = "co-repush"
URL = f"/v1/companies/{COMPANY}/repush"


def order(order_id: str) -> dict[str, Any]:
    return {"id": order_id, "currency": "GBP", "totalAmount": 10.0, "createdDate": "2025-06-01T09:00:00Z"}


@pytest.fixture
async def relay(database_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, Any, FixedClock]]:
    clock = FixedClock()
    async with running_app(make_settings(database_url), clock=clock) as (app, client):
        yield client, app.state.runtime.engine, clock


async def _set(engine: Any, record_id: str, **values: Any) -> None:
    if values.get("synced_at") is not None:  # the books hold its content (the version-level fact)
        values["synced_hash"] = records.c.content_hash
    async with writer(engine).begin() as conn:
        await conn.execute(records.update().where(records.c.record_id == record_id).values(**values))


async def _states(engine: Any) -> dict[str, str]:
    async with engine.connect() as conn:
        return dict((await conn.execute(sa.select(records.c.record_id, records.c.state))).all())  # type: ignore[arg-type]


async def test_repush_needs_the_admin_token(relay: tuple[httpx.AsyncClient, Any, FixedClock]) -> None:
    """No token or the intake token: 401."""
    client, _, _ = relay
    assert (await client.post(URL)).status_code == 401
    assert (await client.post(URL, headers=API)).status_code == 401


async def test_repush_of_an_unknown_company_is_404(relay: tuple[httpx.AsyncClient, Any, FixedClock]) -> None:
    """A company codat-relay never heard of: 404."""
    client, _, _ = relay
    answer = await client.post(URL, headers=ADMIN)
    assert answer.status_code == 404 and answer.json()["error"] == "not_found"


@pytest.mark.parametrize(
    ("body", "field"),
    [(b'{"dataType": "invoices"}', "dataType"), (b'{"datatype": "orders"}', "datatype"), (b"[1]", "object"),
     (b"{nope", "JSON"), (b'{"dataType": 3}', "dataType")],
)  # fmt: skip
async def test_repush_with_an_invalid_body_is_422(
    relay: tuple[httpx.AsyncClient, Any, FixedClock], body: bytes, field: str
) -> None:
    """An unknown data type, an unknown field, or not a JSON object: 422 naming it."""
    client, _, _ = relay
    await client.put(f"/v1/companies/{COMPANY}/records/orders", json={"records": [order("a")]}, headers=API)
    answer = await client.post(URL, content=body, headers=ADMIN)
    assert answer.status_code == 422 and field in answer.json()["detail"]


async def test_repush_requeues_all_but_synced_conflicts_and_in_flight(
    relay: tuple[httpx.AsyncClient, Any, FixedClock],
) -> None:
    """accepted and failed go to pending; synced, conflict and in-flight stay; the push is due now."""
    client, engine, clock = relay
    ids = ["accepted", "failed", "pending", "synced", "conflict", "inflight", "was-synced"]
    await client.put(f"/v1/companies/{COMPANY}/records/orders", json={"records": [order(i) for i in ids]}, headers=API)
    for state in ("accepted", "failed", "synced", "conflict"):
        await _set(engine, state, state=state, synced_at=clock.now() if state == "synced" else None)
    await _set(engine, "inflight", state="pushed", inflight=True)
    await _set(engine, "was-synced", state="accepted", synced_at=clock.now())  # in the books, newer accepted
    answer = await client.post(URL, json={"dataType": "orders"}, headers=ADMIN)
    assert answer.status_code == 202
    assert {k: v for k, v in answer.json().items() if k != "byDataType"} == {
        "id": COMPANY, "paused": False, "requeued": 2, "alreadyPending": 1, "skippedSynced": 2,
        "skippedConflicts": 1, "inFlight": 1,
    }  # fmt: skip
    assert list(answer.json()["byDataType"]) == ["commerce-orders"]
    assert await _states(engine) == {"accepted": "pending", "failed": "pending", "pending": "pending",
                                     "synced": "synced", "conflict": "conflict", "inflight": "pushed",
                                     "was-synced": "accepted"}  # fmt: skip
    async with engine.connect() as conn:
        due = (await conn.execute(sa.select(jobs.c.lock_key, jobs.c.run_at).where(jobs.c.status == "waiting"))).all()
    assert (f"push:{COMPANY}:commerce-orders", clock.now()) in due


async def test_repush_of_every_data_type_without_a_body(relay: tuple[httpx.AsyncClient, Any, FixedClock]) -> None:
    """No body: every data type is surveyed; nothing to send schedules nothing new."""
    client, engine, _ = relay
    await client.put(f"/v1/companies/{COMPANY}/records/payments", json={"records": [{"id": "p", "amount": 1.0}]},
                     headers=API)  # fmt: skip
    await _set(engine, "p", state="synced")
    answer = await client.post(URL, headers=ADMIN)
    assert answer.status_code == 202
    body = answer.json()
    assert sorted(body["byDataType"]) == ["commerce-orders", "commerce-payments", "commerce-transactions"]
    assert (body["requeued"], body["skippedSynced"]) == (0, 1)
    assert await _states(engine) == {"p": "synced"}
