"""`GET /v1/companies` and a company known only from its alerts: filters, search, cursor pages, 401/422."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from service.clock import FixedClock
from service.db import create_engine
from service.testing import running_app
from tests import ui_factories as f
from tests.conftest import ADMIN_TOKEN, API_TOKEN, make_settings

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
NOW = 1_760_000_000.0
ALERTS_ONLY = "co-alerts-only"


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The UI's world (a failing and a healthy company), a company known only from an alert, a paused one."""
    engine = create_engine(make_settings(database_url))
    async with engine.begin() as conn:
        await conn.run_sync(f.world, NOW)
        await conn.run_sync(lambda c: f.alert(c, "alert-only-1", ALERTS_ONLY, "done", NOW - 60))
        await conn.run_sync(lambda c: f.company(c, "co-paused", NOW - 60, paused=True, pause_reason="manual"))
    await engine.dispose()
    async with running_app(make_settings(database_url), clock=FixedClock(NOW)) as (_, http):
        yield http


async def ids(client: httpx.AsyncClient, query: str = "") -> list[str]:
    answer = await client.get(f"/v1/companies{query}", headers=ADMIN)
    assert answer.status_code == 200, answer.text
    return [c["id"] for c in answer.json()["results"]]


async def test_every_known_company_is_listed_in_id_order(client: httpx.AsyncClient) -> None:
    """Rows of the outbox and companies known only from alerts alike, each with its failing mark and problems."""
    answer = (await client.get("/v1/companies", headers=ADMIN)).json()
    assert [c["id"] for c in answer["results"]] == [ALERTS_ONLY, f.FAILING, f.HEALTHY, "co-paused"]
    assert answer["total"] == 4 and answer["nextCursor"] is None
    by_id: dict[str, Any] = {c["id"]: c for c in answer["results"]}
    assert by_id[ALERTS_ONLY]["known"] == "alerts" and by_id[ALERTS_ONLY]["failing"] is False
    kinds = {p["kind"] for p in by_id[f.FAILING]["problems"]}
    assert kinds == {"dataset_failed", "sync_failed", "dead_alerts", "dead_jobs", "records_conflict"}
    assert by_id[f.HEALTHY]["failing"] is False and by_id[f.HEALTHY]["records"]["synced"] == 3


@pytest.mark.parametrize(("query", "expected"), [
    ("?failing=true", [f.FAILING]),
    ("?failing=false", [ALERTS_ONLY, f.HEALTHY, "co-paused"]),
    ("?paused=true", ["co-paused"]),
    ("?paused=false", [ALERTS_ONLY, f.FAILING, f.HEALTHY]),
    ("?problem=dead_jobs", [f.FAILING]),
    ("?problem=connection_deleted", []),
    ("?search=HEALTH", [f.HEALTHY]),
    ("?search=co-", [ALERTS_ONLY, f.FAILING, f.HEALTHY, "co-paused"]),
    ("?search=%25", []),  # a literal %, not a wildcard
    ("?search=alerts&failing=false", [ALERTS_ONLY]),
    ("?search=harbour%20BAK", [f.HEALTHY]),  # Codat's name of the company, any case (issue 15)
    ("?search=bakery&failing=true", []),
])  # fmt: skip
async def test_filters_and_search(client: httpx.AsyncClient, query: str, expected: list[str]) -> None:
    """Each filter narrows the list; search matches part of the id or the name in any case, `%` and `_` literally."""
    assert await ids(client, query) == expected


async def test_cursor_pages_cover_every_company_once(client: httpx.AsyncClient) -> None:
    """limit=1 pages through all four with nextCursor; `total` counts them all on every page."""
    seen, cursor = [], ""
    while True:
        page = (await client.get(f"/v1/companies?limit=1{cursor}", headers=ADMIN)).json()
        assert page["total"] == 4 and len(page["results"]) <= 1
        seen += [c["id"] for c in page["results"]]
        if page["nextCursor"] is None:
            break
        cursor = f"&cursor={page['nextCursor']}"
    assert seen == [ALERTS_ONLY, f.FAILING, f.HEALTHY, "co-paused"]


@pytest.mark.parametrize("query", ["?limit=0", "?limit=501", "?limit=x", "?failing=yes", "?problem=nope",
                                   "?cursor=%FF%FE"])  # fmt: skip
async def test_bad_queries_are_422_naming_the_parameter(client: httpx.AsyncClient, query: str) -> None:
    answer = await client.get(f"/v1/companies{query}", headers=ADMIN)
    assert answer.status_code == 422
    assert query[1:].split("=")[0] in answer.json()["detail"]


async def test_the_list_needs_the_admin_token(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/companies")).status_code == 401
    assert (await client.get("/v1/companies", headers={"authorization": f"Bearer {API_TOKEN}"})).status_code == 401


async def test_a_company_known_only_from_alerts_is_shown_and_can_be_paused(client: httpx.AsyncClient) -> None:
    """`companies show` used to say "no company" for it; now it is a company, and pause/resume work."""
    shown = await client.get(f"/v1/companies/{ALERTS_ONLY}", headers=ADMIN)
    assert shown.status_code == 200
    view = shown.json()
    assert view["known"] == "alerts" and view["paused"] is False and view["lastAlertAt"] is not None
    assert view["lastSync"]["checkedAt"] is None and view["failing"] is False
    assert (await client.post(f"/v1/companies/{ALERTS_ONLY}/pause", headers=ADMIN)).status_code == 200
    assert (await client.get(f"/v1/companies/{ALERTS_ONLY}", headers=ADMIN)).json()["paused"] is True
    assert (await client.post(f"/v1/companies/{ALERTS_ONLY}/resume", headers=ADMIN)).status_code == 200
    assert (await client.get("/v1/companies/never-heard-of", headers=ADMIN)).status_code == 404
    assert (await client.post("/v1/companies/never-heard-of/pause", headers=ADMIN)).status_code == 404


async def test_the_name_and_next_sync_are_in_the_list_and_the_company(client: httpx.AsyncClient) -> None:
    """Codat's name, the next scheduled sync and the schedule it comes from (issue 14), list and detail alike."""
    [listed] = [c for c in (await client.get("/v1/companies", headers=ADMIN)).json()["results"] if c["id"] == f.HEALTHY]
    detail = (await client.get(f"/v1/companies/{f.HEALTHY}", headers=ADMIN)).json()
    for shown in (listed, detail):
        assert shown["name"] == f.HEALTHY_NAME
        assert shown["nextSyncAt"] == "2025-10-09T11:53:20Z"  # NOW + 3 h
        assert shown["syncSchedule"] == {"frequency": "Daily", "syncHour": 2, "timeZone": "America/New_York",
                                         "startDate": None, "fetchedAt": "2025-10-09T07:53:20Z", "error": None}
    unread = (await client.get(f"/v1/companies/{f.FAILING}", headers=ADMIN)).json()
    assert (unread["name"], unread["nextSyncAt"], unread["syncSchedule"]) == (None, None, None)
