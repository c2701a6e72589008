"""The sandbox enforces Codat's rate limits (codatio/codat-docs `docs/using-the-api/rate-limits.md`) and sends
its rate-limit events (webhooks-2024-10.yaml `client.rateLimit.reached` / `client.rateLimit.reset`).

rate-limits.md: "10 concurrent requests per ACC"; "Codat will return a `429` status code for all requests to
the API that are received while rate limiting is active ... The response will also include a `Retry-After`
header"; the daily quota "reset[s] at 00:00 UTC each day".
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import httpx

from service.clock import FixedClock
from tests.queue_helpers import eventually
from tests.specs import WEBHOOKS_SPEC, spec_errors
from tests.test_sandbox import COMPANY, ORDERS, SECRET, MakeHarness, make_harness, order
from tests.test_sandbox_webhook_bodies import documented_schema

__all__ = ["make_harness"]  # the fixture is shared by import
STATUS = f"/companies/{COMPANY}"  # any Codat endpoint about the company
NOON = datetime(2026, 3, 2, 12, 0, tzinfo=UTC).timestamp()
RATE_EVENTS = ["client.rateLimit.reached", "client.rateLimit.reset"]


async def _subscribe(h: Any, url: str = "http://receiver.test/webhooks/codat") -> None:
    answer = await h.client.post("/webhooks", json={"url": url, "eventTypes": RATE_EVENTS})
    assert answer.status_code == 201, answer.text


async def test_the_eleventh_concurrent_request_for_a_company_is_a_429_with_retry_after(
    make_harness: MakeHarness,
) -> None:
    """rate-limits.md: 10 concurrent requests per company; the 11th in flight is answered 429 + Retry-After,
    another company is unaffected, and `/_sandbox/rate-limits` reports the most seen at once."""
    h = await make_harness(push_processing_seconds=0.5, companies=(COMPANY, "co-2"))
    pushes = [asyncio.create_task(h.push(ORDERS, "orders", [order(f"o-{n}")])) for n in range(10)]

    async def ten_in_flight() -> bool:
        return bool(h.sandbox.state.concurrency.in_flight[COMPANY] == 10)

    await eventually(ten_in_flight)  # the pushes are being handled: poll the state with a deadline
    eleventh = await h.client.get(STATUS)
    other = await h.client.get("/companies/co-2")
    answers = await asyncio.gather(*pushes)
    assert eleventh.status_code == 429 and eleventh.headers["retry-after"] == "1"
    assert eleventh.json()["statusCode"] == 429
    assert other.status_code == 200
    assert [a.status_code for a in answers] == [200] * 10
    seen = await h.get("/_sandbox/rate-limits")
    assert seen["companies"][COMPANY] == {"maxInFlight": 10, "refusedOverLimit": 1}
    assert seen["companies"]["co-2"] == {"maxInFlight": 1, "refusedOverLimit": 0}
    assert (await h.client.get(STATUS)).status_code == 200  # the 11th goes once one has ended


async def test_reached_when_the_quota_is_spent_and_reset_by_the_control_endpoint(make_harness: MakeHarness) -> None:
    """The answer spending the last request says Remaining 0 and `client.rateLimit.reached` goes to its
    consumers (ClientRateLimitWebhook); later requests are 429 and counted; `POST /_sandbox/rate-limits/reset`
    makes the quota whole and sends `client.rateLimit.reset`."""
    h = await make_harness(clock=FixedClock(NOON), webhook_shape="envelope", webhook_secret=SECRET)
    await _subscribe(h)  # costs one request of the quota: POST /webhooks is a Codat endpoint
    await h.client.post("/_sandbox/config", json={"dailyQuota": 3})
    answers = [await h.client.get(STATUS) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert [a.headers["X-Rate-Limit-Remaining"] for a in answers] == ["1", "0", "0"]
    await h.settle()
    seen = await h.get("/_sandbox/rate-limits")
    assert (seen["reachedAt"], seen["refusedWhileSpent"], seen["remaining"]) == ("2026-03-02T12:00:00.000Z", 1, 0)
    reset = await h.client.post("/_sandbox/rate-limits/reset")
    assert reset.json()["remaining"] == 3 and reset.json()["reachedAt"] is None
    await h.settle()
    # Signed with the consumer's own secret (test_sandbox_consumers.py checks that); here: what they say.
    bodies = [json.loads(r.content) for r in h.receiver.requests]
    assert [b["eventType"] for b in bodies] == RATE_EVENTS
    for body in bodies:
        assert spec_errors(body, WEBHOOKS_SPEC, documented_schema(body["eventType"])) == []
    assert [b["payload"] for b in bodies] == [
        {"dailyQuota": 3, "quotaRemaining": 0, "expiryDate": "2026-03-03T00:00:00.000Z"},
        {"dailyQuota": 3, "quotaRemaining": 3, "expiryDate": "2026-03-03T00:00:00.000Z"},
    ]
    assert (await h.client.get(STATUS)).status_code == 200


async def test_the_clock_passing_midnight_resets_a_spent_quota(make_harness: MakeHarness) -> None:
    """00:00 UTC: a spent quota is whole again and `client.rateLimit.reset` is sent, once."""
    h = await make_harness(clock=FixedClock(NOON), webhook_shape="envelope", webhook_secret=SECRET, daily_quota=2)
    await _subscribe(h)
    assert (await h.client.get(STATUS)).headers["X-Rate-Limit-Remaining"] == "0"
    h.clock.advance(12 * 3600)
    await h.settle()
    await h.settle()
    assert [json.loads(r.content)["eventType"] for r in h.receiver.requests] == RATE_EVENTS
    assert (await h.client.get(STATUS)).headers["X-Rate-Limit-Remaining"] == "1"


async def test_a_quota_spent_with_no_consumer_sends_nothing(make_harness: MakeHarness) -> None:
    """With the envelope shape and no consumer of the rate-limit events, nothing is delivered for them."""
    h = await make_harness(clock=FixedClock(NOON), daily_quota=1)
    assert (await h.client.get(STATUS)).status_code == 200
    await h.settle()
    assert isinstance(h.receiver.requests, list) and h.receiver.requests == []
    assert httpx.codes.TOO_MANY_REQUESTS == (await h.client.get(STATUS)).status_code
