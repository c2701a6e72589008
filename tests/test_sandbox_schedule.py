"""The sandbox's Sync for Commerce configuration and the scheduled syncs it runs on its own clock.

Held to sync-commerce-current.json: `get-configuration` / `set-configuration`
(`/config/companies/{companyId}/sync/commerce`) answer a `Configuration` whose `schedule` carries
`selectedFrequency`, `syncHour` ("the hour you want to trigger a sync"), `timeZone` and `startDate`; Codat
syncs a configured company (latest) at that hour (FACTS §6). Where the docs are silent (no documented
request body, unconfigured companies, DST gaps, catch-up) the README's sandbox section says what the
sandbox does.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from service.clock import FixedClock
from tests.specs import response_schema, spec_errors
from tests.test_sandbox import COMPANY, ORDERS, MakeHarness, make_harness, order

__all__ = ["make_harness"]  # the fixture is shared by import
CURRENT = "sync-commerce-current.json"
CONFIG = f"/config/companies/{COMPANY}/sync/commerce"
TEMPLATE = "/config/companies/{companyId}/sync/commerce"
NEW_YORK_2AM = {"selectedFrequency": "Daily", "syncHour": 2, "timeZone": "America/New_York"}


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def fits(body: Any, method: str, status: int = 200) -> None:
    assert spec_errors(body, CURRENT, response_schema(CURRENT, TEMPLATE, method, status)) == []


async def syncs(h: Any) -> list[dict[str, Any]]:
    answer = await h.client.get(f"/companies/{COMPANY}/sync/commerce/syncs/list/status")
    return list(answer.json()) if answer.status_code == 200 else []


async def test_a_new_company_has_a_schedule_but_is_not_configured_and_never_synced_by_it(
    make_harness: MakeHarness,
) -> None:
    """`get-configuration` answers the spec's Configuration; unconfigured (no sync flow here), so no sync runs."""
    clock = FixedClock(at("2027-06-10T00:00"))
    h = await make_harness(clock=clock)
    body = await h.get(CONFIG)
    fits(body, "get")
    assert (body["companyId"], body["configured"], body["enable"]) == (COMPANY, False, False)
    assert set(body["schedule"]) == {"selectedFrequency", "frequencyOptions", "startDate", "syncHour", "timeZone"}
    clock.advance(3 * 86_400)
    await h.client.post("/_sandbox/tick")
    assert await syncs(h) == []


async def test_a_configured_company_is_synced_at_its_hour_in_its_time_zone(make_harness: MakeHarness) -> None:
    """Daily at 02:00 America/New_York (EDT in June): nothing at 05:59Z, a `latest` sync started at 06:00Z that
    takes the records Complete then."""
    clock = FixedClock(at("2027-06-10T03:00"))
    h = await make_harness(clock=clock)
    answer = await h.client.post(CONFIG, json={"schedule": NEW_YORK_2AM})
    assert answer.status_code == 200, answer.text
    fits(answer.json(), "post")
    assert answer.json()["schedule"]["syncHour"] == 2 and answer.json()["configured"] is True
    assert (await h.get(CONFIG))["schedule"]["timeZone"] == "America/New_York"
    await h.push(ORDERS, "orders", [order("o-1") | {"createdDate": "2027-06-09T12:00:00Z"}])
    clock.set(at("2027-06-10T05:59"))
    await h.client.post("/_sandbox/tick")
    assert await syncs(h) == []
    clock.set(at("2027-06-10T06:03"))  # the sandbox settles lazily: the sync still starts at 06:00
    await h.client.post("/_sandbox/tick")
    [sync] = await syncs(h)
    assert sync["syncUtc"].startswith("2027-06-10T06:00:00")
    status = await h.get(f"/meta/companies/{COMPANY}/sync/commerce/status")
    assert status["syncStatusCode"] == 2000  # the pushed order went to the books
    clock.set(at("2027-06-11T06:01"))  # and again the next day, once
    await h.client.post("/_sandbox/tick")
    assert [s["syncUtc"][:16] for s in await syncs(h)] == ["2027-06-10T06:00", "2027-06-11T06:00"]


async def test_set_configuration_refuses_what_is_no_schedule(make_harness: MakeHarness) -> None:
    """A bad hour or time zone is a 400 in the spec's ErrorMessage shape, and changes nothing."""
    h = await make_harness()
    for schedule in ({"syncHour": 24}, {"timeZone": "Mars/Olympus"}, {"selectedFrequency": "Weekly"}):
        answer = await h.client.post(CONFIG, json={"schedule": schedule})
        assert answer.status_code == 400, schedule
        assert spec_errors(answer.json(), CURRENT, "/components/schemas/ErrorMessage") == []
    assert (await h.get(CONFIG))["configured"] is False


async def test_the_sandbox_clock_moves_forward_by_its_control_endpoint_and_runs_what_fell_due(
    make_harness: MakeHarness,
) -> None:
    """`POST /_sandbox/clock` (a sandbox process has no other clock seam): set or advance, never back."""
    h = await make_harness(clock=FixedClock(at("2027-06-10T03:00")))
    await h.client.post("/_sandbox/companies/" + COMPANY + "/schedule", json=NEW_YORK_2AM)
    moved = await h.client.post("/_sandbox/clock", json={"now": "2027-06-10T06:30:00Z"})
    assert moved.status_code == 200 and moved.json()["now"].startswith("2027-06-10T06:30:00")
    assert len(await syncs(h)) == 1
    assert (await h.client.post("/_sandbox/clock", json={"advanceSeconds": 60})).json()["now"].startswith(
        "2027-06-10T06:31:00")
    back = await h.client.post("/_sandbox/clock", json={"now": "2027-06-10T00:00:00Z"})
    assert back.status_code == 400
    assert (await h.get("/_sandbox/clock"))["now"].startswith("2027-06-10T06:31:00")
