"""Syncs cover a date range, as sync-commerce-current.json says, and only records in it reach the books.

`request-sync` (POST /companies/{companyId}/sync/commerce/latest): "Run a Commerce sync from the last
successful sync up to the date provided (optional), otherwise UtcNow is used. If there was no previously
successful sync, the start date in the config is used." `request-sync-for-date-range` (…/historic): "for the
specified start date to the specified finish date". Both answer `SyncSummary` (`syncDateRangeUtc{start,
finish}`, `commerceSyncId`). The record date a range is matched on is undocumented (FACTS §6): the sandbox
reads `createdDate`, and a record without one is covered (README, "What the sandbox models").
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from service.clock import FixedClock
from tests.specs import response_schema, spec_errors
from tests.test_sandbox import COMPANY, ORDERS, MakeHarness, make_harness, order

__all__ = ["make_harness"]  # the fixture is shared by import
CURRENT = "sync-commerce-current.json"
LATEST = f"/companies/{COMPANY}/sync/commerce/latest"
HISTORIC = f"/meta/companies/{COMPANY}/sync/commerce/historic"
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC).timestamp()


def dated(order_id: str, created: str | None) -> dict[str, Any]:
    return order(order_id) | ({"createdDate": created} if created else {})


async def synced_ids(h: Any) -> set[str]:
    return {r["id"] for r in (await h.get("/_sandbox/records"))["results"] if r["synced"]}


async def test_latest_runs_from_the_configured_start_to_sync_to_then_from_the_last_success(
    make_harness: MakeHarness,
) -> None:
    """First `latest`: configured start → syncTo; the next starts where it ended; a record lands once covered."""
    h = await make_harness(clock=FixedClock(NOW), companies=())
    await h.client.post("/_sandbox/companies", json={"id": COMPANY, "syncStartDate": "2026-03-01T00:00:00Z"})
    await h.push(ORDERS, "orders", [dated("before", "2026-02-28T23:59:59Z"), dated("march-2", "2026-03-02T09:00:00Z"),
                                    dated("march-5", "2026-03-05T09:00:00Z"), dated("undated", None)])  # fmt: skip
    first = (await h.client.post(LATEST, json={"syncTo": "2026-03-04T00:00:00Z"})).json()
    assert spec_errors(first, CURRENT, response_schema(CURRENT, "/companies/{companyId}/sync/commerce/latest",
                                                        "post", 200)) == []  # fmt: skip
    assert first["syncDateRangeUtc"] == {"start": "2026-03-01T00:00:00.000Z", "finish": "2026-03-04T00:00:00.000Z"}
    assert await synced_ids(h) == {"march-2", "undated"}
    second = (await h.client.post(LATEST, json={})).json()  # syncTo defaults to now
    assert second["syncDateRangeUtc"] == {"start": "2026-03-04T00:00:00.000Z", "finish": "2026-03-10T12:00:00.000Z"}
    assert (second["syncStatusCode"], await synced_ids(h)) == (2000, {"march-2", "march-5", "undated"})
    assert first["commerceSyncId"] != second["commerceSyncId"]


async def test_historic_covers_its_range_and_never_moves_the_last_sync_back(make_harness: MakeHarness) -> None:
    """A historic sync of an old range takes that range's records; the next `latest` still starts at the last end."""
    h = await make_harness(clock=FixedClock(NOW))
    await h.push(ORDERS, "orders", [dated("old", "2025-06-15T00:00:00Z"), dated("new", "2026-03-09T00:00:00Z")])
    await h.client.post(LATEST, json={"syncTo": "2026-03-10T00:00:00Z"})
    assert await synced_ids(h) == {"new"}  # "old" is before the configured start (a month back)
    body = {"dateRange": {"start": "2025-06-01T00:00:00Z", "finish": "2025-07-01T00:00:00Z"}}
    historic = (await h.client.post(HISTORIC, json=body)).json()
    assert historic["syncDateRangeUtc"] == {"start": "2025-06-01T00:00:00.000Z", "finish": "2025-07-01T00:00:00.000Z"}
    assert await synced_ids(h) == {"new", "old"}
    after = (await h.client.post(LATEST, json={})).json()
    assert after["syncDateRangeUtc"]["start"] == "2026-03-10T00:00:00.000Z"
    assert after["syncStatusCode"] == 2040  # nothing new in range: success, no data written


async def test_a_failed_sync_does_not_move_the_last_sync(make_harness: MakeHarness) -> None:
    """Only a successful sync moves "last sync": after a failure the next `latest` covers the same start again."""
    h = await make_harness(clock=FixedClock(NOW))
    await h.push(ORDERS, "orders", [dated("o-1", "2026-03-09T00:00:00Z")])
    await h.client.post("/_sandbox/script/sync", json={"companyId": COMPANY, "code": 5130})
    failed = (await h.client.post(LATEST, json={"syncTo": "2026-03-09T12:00:00Z"})).json()
    retried = (await h.client.post(LATEST, json={})).json()
    assert failed["syncDateRangeUtc"]["start"] == retried["syncDateRangeUtc"]["start"]
    assert (failed["syncStatusCode"], retried["syncStatusCode"], await synced_ids(h)) == (5130, 2000, {"o-1"})


async def test_sync_status_endpoints_answer_the_specs_shapes_with_their_own_ids(make_harness: MakeHarness) -> None:
    """get-sync-status has both ids; get-latest-sync, list-syncs, get-sync-by-id and lastSuccessful `syncId` only."""
    h = await make_harness(clock=FixedClock(NOW), pace_seconds=5.0)
    await h.push(ORDERS, "orders", [dated("o-1", "2026-03-09T00:00:00Z")])
    h.clock.advance(5)
    summary = (await h.client.post(LATEST, json={})).json()
    status = await h.get(f"/meta/companies/{COMPANY}/sync/commerce/status")
    assert spec_errors(status, CURRENT, "/components/schemas/SyncStatus") == []
    assert status["commerceSyncId"] == summary["commerceSyncId"] and status["syncId"] != summary["commerceSyncId"]
    syncs = f"/companies/{COMPANY}/sync/commerce/syncs"
    running = await h.get(f"{syncs}/latest/status")
    assert (running["syncId"], running["syncStatusCode"]) == (status["syncId"], 1000)
    assert (await h.client.get(f"{syncs}/lastSuccessful/status")).status_code == 404
    h.clock.advance(5)
    for path in (f"{syncs}/latest/status", f"{syncs}/lastSuccessful/status", f"{syncs}/{status['syncId']}/status"):
        found = await h.get(path)
        assert spec_errors(found, CURRENT, "/components/schemas/CompanySyncStatus") == [], path
        assert (found["syncId"], found["syncStatusCode"]) == (status["syncId"], 2000)
    assert [s["syncId"] for s in await h.get(f"{syncs}/list/status")] == [status["syncId"]]
    assert (await h.client.get(f"{syncs}/{summary['commerceSyncId']}/status")).status_code == 404
