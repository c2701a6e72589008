"""Admin sync endpoints relay Codat's answers; dates are validated; Codat's refusals map to clear statuses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TypeAlias

import httpx
import pytest
import sqlalchemy as sa

from service.db import syncs
from service.testing import SANDBOX_API_KEY, running_app, running_sandbox
from service.web.app import AppOptions
from tests.conftest import ADMIN_TOKEN, make_settings

Clients: TypeAlias = tuple[httpx.AsyncClient, httpx.AsyncClient]
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
CO = "co-sync-1"


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """(relay client, sandbox client): codat-relay's Codat client talks to the in-process sandbox."""
    async with running_sandbox(companies=[CO]) as (_, transport):
        settings = make_settings(database_url, codat_base_url="http://sandbox.test", codat_api_key=SANDBOX_API_KEY)
        async with running_app(settings, options=AppOptions(transport=transport)) as (_, relay):
            async with httpx.AsyncClient(transport=transport, base_url="http://sandbox.test") as sandbox:
                yield relay, sandbox


async def test_sync_latest_relays_codat_and_status_follows(client: Clients) -> None:
    """`sync/latest` answers Codat's SyncSummary; `sync/status` then shows that sync."""
    relay, sandbox = client
    latest = await relay.post(f"/v1/companies/{CO}/sync/latest", json={"syncTo": "2030-11-01T00:00:00Z"}, headers=ADMIN)
    await sandbox.post("/_sandbox/tick")
    status = await relay.get(f"/v1/companies/{CO}/sync/status", headers=ADMIN)
    assert latest.status_code == 200, latest.text
    assert "commerceSyncId" in latest.json() and "syncDateRangeUtc" in latest.json()
    assert status.status_code == 200
    [current] = status.json()
    assert current["commerceSyncId"] == latest.json()["commerceSyncId"]
    assert current["syncStatusCode"] in (2000, 2040)


async def test_sync_historic_sends_the_range(client: Clients) -> None:
    relay, _ = client
    answer = await relay.post(f"/v1/companies/{CO}/sync/historic",
                              json={"start": "2026-01-01T00:00:00Z", "end": "2026-02-01T00:00:00+00:00"}, headers=ADMIN)
    assert answer.status_code == 200, answer.text
    assert answer.json()["syncDateRangeUtc"]["start"].startswith("2026-01-01")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [("historic", {"start": "2026-02-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "end"),
     ("historic", {"start": "yesterday", "end": "2026-01-01T00:00:00Z"}, "start"),
     ("historic", {"start": "2026-01-01T00:00:00", "end": "2026-01-02T00:00:00Z"}, "start"),
     ("historic", {"end": "2026-01-02T00:00:00Z"}, "start"),
     ("latest", {"syncTo": 12}, "syncTo")],
)
async def test_invalid_dates_are_422_naming_the_field(
    client: Clients, path: str, body: dict[str, object], field: str
) -> None:
    relay, _ = client
    answer = await relay.post(f"/v1/companies/{CO}/sync/{path}", json=body, headers=ADMIN)
    assert answer.status_code == 422 and answer.json()["detail"].startswith(field)


async def test_codat_refusals_are_relayed_with_clear_statuses(client: Clients) -> None:
    """No sync yet → Codat's 404 relayed; Codat failing → 503 with Retry-After, never a 500."""
    relay, sandbox = client
    missing = await relay.get("/v1/companies/never-synced/sync/status", headers=ADMIN)
    await sandbox.put("/_sandbox/faults/sync_latest", json={"errorRate": 1.0, "errorStatuses": [503]})
    failing = await relay.post(f"/v1/companies/{CO}/sync/latest", json={}, headers=ADMIN)
    assert (missing.status_code, missing.json()["error"]) == (404, "codat_not_found")
    assert failing.status_code == 503 and "retry-after" in failing.headers


async def test_a_rate_limit_is_relayed_with_the_wait_codat_asked_for(client: Clients) -> None:
    """Codat's 429 + Retry-After 120 (past the client's budget) → 503 `codat_rate_limited`, Retry-After: 120."""
    relay, sandbox = client
    await sandbox.put("/_sandbox/faults/sync_latest", json={"burst429": 1, "retryAfterS": 120})
    answer = await relay.post(f"/v1/companies/{CO}/sync/latest", json={}, headers=ADMIN)
    assert (answer.status_code, answer.json()["error"]) == (503, "codat_rate_limited")
    assert answer.headers["retry-after"] == "120"


async def test_sync_endpoints_need_the_admin_token(client: Clients) -> None:
    relay, _ = client
    assert (await relay.get(f"/v1/companies/{CO}/sync/status")).status_code == 401
    assert (await relay.post(f"/v1/companies/{CO}/sync/latest", json={})).status_code == 401


async def test_a_sync_started_through_the_api_is_kept_with_the_range_of_codats_answer(database_url: str) -> None:
    """`sync/historic` keeps the sync with the range of Codat's `SyncSummary.syncDateRangeUtc`
    (sync-commerce-current.json): what it covers when it succeeds (service/coverage.py)."""
    async with running_sandbox(companies=[CO]) as (_, transport):
        settings = make_settings(database_url, codat_base_url="http://sandbox.test", codat_api_key=SANDBOX_API_KEY)
        async with running_app(settings, options=AppOptions(transport=transport)) as (app, relay):
            january = {"start": "2026-01-01T00:00:00Z", "end": "2026-02-01T00:00:00Z"}
            answer = await relay.post(f"/v1/companies/{CO}/sync/historic", headers=ADMIN, json=january)
            assert answer.status_code == 200, answer.text
            async with app.state.runtime.engine.connect() as conn:
                kept = (await conn.execute(sa.select(syncs))).mappings().one()
    assert (kept["id"], kept["company_id"], kept["kind"]) == (answer.json()["commerceSyncId"], CO, "historic")
    assert (kept["range_start"], kept["range_finish"]) == (
        datetime(2026, 1, 1, tzinfo=UTC).timestamp(), datetime(2026, 2, 1, tzinfo=UTC).timestamp())  # fmt: skip
