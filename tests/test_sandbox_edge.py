"""The sandbox's edge held to Codat's docs: auth, companies, idempotency, rate limits, ids, routes.

Sources (codatio/codat-docs unless said): `docs/using-the-api/errors.md` (401 "The supplied Codat API key
is incorrect"; 404; 405), `docs/using-the-api/write-data/idempotency.md`, `docs/using-the-api/rate-limits.md`,
and the specs' `create-company`/`get-company` and their 404 example "No company was found with ID …".
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from service.clock import FixedClock
from tests.specs import response_schema, spec_errors
from tests.test_sandbox import COMPANY, ORDERS, MakeHarness, make_harness, order

__all__ = ["make_harness"]  # the fixture is shared by import
CURRENT = "sync-commerce-current.json"
STATUS = f"/meta/companies/{COMPANY}/sync/commerce/status"
NOON = datetime(2026, 3, 2, 12, 0, tzinfo=UTC).timestamp()


def _is_codat_error(answer: httpx.Response, status: int) -> bool:
    body = answer.json()
    return answer.status_code == status and body["statusCode"] == status and spec_errors(
        body, CURRENT, "/components/schemas/ErrorMessage") == []  # fmt: skip


# -- authentication --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic "}, {"Authorization": "Bearer abc"}, {"Authorization": "Basic not*base64"}],
    ids=["missing", "empty", "bearer", "garbage"],
)
async def test_codat_endpoints_refuse_requests_without_basic_credentials(
    make_harness: MakeHarness, headers: dict[str, str]
) -> None:
    """errors.md: 401 "Unauthorized" (the spec's example) without `Authorization: Basic …`, on every endpoint."""
    h = await make_harness()
    anonymous = httpx.AsyncClient(transport=h.transport, base_url="http://sandbox.test", headers=headers)
    async with anonymous:
        answers = [await anonymous.post(ORDERS, json={"orders": [order("o-1")]}), await anonymous.get(STATUS),
                   await anonymous.post("/companies", json={"name": "Ann"})]  # fmt: skip
    assert all(_is_codat_error(a, 401) and a.json()["error"] == "Unauthorized" for a in answers)
    assert (await h.get("/_sandbox/pushes"))["results"] == []


async def test_with_a_configured_key_only_that_key_is_accepted(make_harness: MakeHarness) -> None:
    """`--api-key`: any other key is a 401; the right one goes through."""
    h = await make_harness(api_key="sandbox-key")
    right = {"Authorization": "Basic " + base64.b64encode(b"sandbox-key").decode()}
    assert _is_codat_error(await h.client.post(ORDERS, json={"orders": [order("o-1")]}), 401)  # AUTH: another key
    assert (await h.client.post(ORDERS, json={"orders": [order("o-1")]}, headers=right)).status_code == 200


# -- companies -------------------------------------------------------------------------------------


async def test_a_company_exists_only_once_created(make_harness: MakeHarness) -> None:
    """Unknown company → 404 "No company was found with ID …" on every company endpoint; POST /companies makes one."""
    h = await make_harness(companies=())
    ghost = str(uuid.uuid4())
    answers = [
        await h.client.post(f"/data/companies/{ghost}/sync/commerce-orders", json={"orders": [order("o-1")]}),
        await h.client.get(f"/meta/companies/{ghost}/pull/history/{uuid.uuid4()}"),
        await h.client.get(f"/meta/companies/{ghost}/sync/commerce/status"),
        await h.client.post(f"/companies/{ghost}/sync/commerce/latest", json={}),
        await h.client.get(f"/companies/{ghost}"),
        await h.client.get(f"/companies/{ghost}/connections/{uuid.uuid4()}"),
    ]
    assert all(_is_codat_error(a, 404) and a.json()["error"] == f"No company was found with ID {ghost}"
               for a in answers), [a.text for a in answers]  # fmt: skip
    created = await h.client.post("/companies", json={"name": "Toft stores", "description": "POS 7"})
    assert created.status_code == 200
    company = created.json()
    assert spec_errors(company, CURRENT, response_schema(CURRENT, "/companies", "post", 200)) == []
    assert (company["name"], company["description"]) == ("Toft stores", "POS 7") and uuid.UUID(company["id"])
    assert {c["sourceType"] for c in company["dataConnections"]} == {"Commerce", "Accounting"}
    pushed = await h.push(f"/data/companies/{company['id']}/sync/commerce-orders", "orders", [order("o-1")])
    assert pushed.status_code == 200
    assert (await h.get(f"/companies/{company['id']}"))["id"] == company["id"]


async def test_sandbox_companies_are_seeded_with_a_chosen_id_once(make_harness: MakeHarness) -> None:
    """POST /_sandbox/companies {id}: created once (again: left as it is), sends no webhook; GET lists it."""
    h = await make_harness(companies=())
    first = (await h.client.post("/_sandbox/companies", json={"id": "co-chosen"})).json()
    again = (await h.client.post("/_sandbox/companies", json={"id": "co-chosen"})).json()
    assert (first["created"], again["created"], first["connections"] == again["connections"]) == (True, False, True)
    assert [c["id"] for c in (await h.get("/_sandbox/companies"))["results"]] == ["co-chosen"]
    await h.settle()
    assert h.receiver.requests == []
    unknown = await h.client.post("/_sandbox/companies/nobody/delete-connection")
    assert unknown.status_code == 404


# -- idempotency -----------------------------------------------------------------------------------


async def test_every_answer_to_a_keyed_post_is_cached_even_a_5xx(make_harness: MakeHarness) -> None:
    """idempotency.md: "Codat caches every other response … including deterministic 4xx … and 5xx server errors"."""
    h = await make_harness()
    await h.client.put("/_sandbox/faults/push", json={"errorRate": 1.0, "errorStatuses": [503]})
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = await h.push(ORDERS, "orders", [order("o-1")], headers=key)
    await h.client.delete("/_sandbox/faults")
    replay = await h.push(ORDERS, "orders", [order("o-1")], headers=key)
    fresh = await h.push(ORDERS, "orders", [order("o-1")], headers={"Idempotency-Key": str(uuid.uuid4())})
    assert (first.status_code, replay.status_code, fresh.status_code) == (503, 503, 200)
    assert replay.json() == first.json()  # the same answer, correlation id and all
    bad_key = {"Idempotency-Key": str(uuid.uuid4())}
    refused = [await h.client.post(ORDERS, json={"orders": [{"colour": 1}]}, headers=bad_key) for _ in range(2)]
    assert [r.status_code for r in refused] == [400, 400] and refused[0].json() == refused[1].json()
    h.clock.advance(91 * 60)  # "This cache lasts 90 minutes"
    assert (await h.push(ORDERS, "orders", [order("o-1")], headers=key)).status_code == 200


async def test_a_429_is_never_cached_and_releases_the_key(make_harness: MakeHarness) -> None:
    """idempotency.md: Codat "doesn't cache the resulting 429 … releases the key": the same key retries afresh."""
    h = await make_harness()
    await h.client.put("/_sandbox/faults/push", json={"burst429": 1, "retryAfterS": 3})
    key = {"Idempotency-Key": str(uuid.uuid4())}
    limited = await h.push(ORDERS, "orders", [order("o-1")], headers=key)
    retried = await h.push(ORDERS, "orders", [order("o-1")], headers=key)
    assert (limited.status_code, limited.headers["retry-after"], retried.status_code) == (429, "3", 200)
    assert len((await h.get("/_sandbox/pushes"))["results"]) == 1


async def test_a_key_is_in_progress_until_its_held_answer_is_due(make_harness: MakeHarness) -> None:
    """idempotency.md: a key "matching an existing in-progress request" → 409, even when its client gave up."""
    h = await make_harness()
    await h.client.put("/_sandbox/faults/push", json={"timeouts": 1, "hangS": 30})
    key = {"Idempotency-Key": str(uuid.uuid4())}
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(h.push(ORDERS, "orders", [order("o-1")], headers=key), timeout=0.2)
    assert (await h.push(ORDERS, "orders", [order("o-1")], headers=key)).status_code == 409
    h.clock.advance(31)
    assert (await h.push(ORDERS, "orders", [order("o-1")], headers=key)).status_code == 504  # the held answer
    assert (await h.push(ORDERS, "orders", [order("o-2")], headers=key)).status_code == 422  # another body


async def test_a_key_that_is_not_a_guid_is_recorded_as_a_breach(make_harness: MakeHarness) -> None:
    """idempotency.md: "The Idempotency-Key header must be a unique GUID" (the answer otherwise is undocumented)."""
    h = await make_harness()
    assert (await h.push(ORDERS, "orders", [order("o-1")], headers={"Idempotency-Key": "push-1"})).status_code == 200
    [breach] = (await h.get("/_sandbox/breaches"))["results"]
    assert (breach["kind"], breach["severity"]) == ("idempotency_key_not_guid", "error")


# -- rate limits -----------------------------------------------------------------------------------


async def test_rate_limit_headers_count_down_a_daily_quota_of_codats_formula(make_harness: MakeHarness) -> None:
    """rate-limits.md: 1,000 x (1 + active connected companies) a day; Remaining counts down; Reset is 00:00 UTC."""
    h = await make_harness(clock=FixedClock(NOON), companies=(COMPANY, "co-2"))
    first, second = await h.client.get(STATUS), await h.client.get(STATUS)
    assert first.headers["X-Rate-Limit-Limit"] == "3000"
    remaining = [int(a.headers["X-Rate-Limit-Remaining"]) for a in (first, second)]
    assert remaining == [2999, 2998]
    assert first.headers["X-Rate-Limit-Reset"] == "2026-03-03T00:00:00Z"
    await h.client.post("/companies", json={"name": "Third shop"})
    assert (await h.client.get(STATUS)).headers["X-Rate-Limit-Limit"] == "4000"


async def test_a_spent_quota_answers_429_with_retry_after_until_midnight_utc(make_harness: MakeHarness) -> None:
    """rate-limits.md: over the quota every request is a 429 with Retry-After; the quota resets at 00:00 UTC."""
    h = await make_harness(clock=FixedClock(NOON), daily_quota=2)
    answers = [await h.client.get(STATUS) for _ in range(3)]
    assert [a.headers["X-Rate-Limit-Remaining"] for a in answers] == ["1", "0", "0"]
    assert _is_codat_error(answers[2], 429) and answers[2].headers["retry-after"] == str(12 * 3600)
    h.clock.advance(12 * 3600)
    assert (await h.client.get(STATUS)).headers["X-Rate-Limit-Remaining"] == "1"


async def test_every_scripted_429_carries_retry_after(make_harness: MakeHarness) -> None:
    """rate-limits.md: every 429 has `Retry-After` — a 429 drawn from `errorStatuses` too."""
    h = await make_harness()
    await h.client.put("/_sandbox/faults/*", json={"errorRate": 1.0, "errorStatuses": [429], "retryAfterS": 4})
    answer = await h.client.get(STATUS)
    assert _is_codat_error(answer, 429) and answer.headers["retry-after"] == "4"


# -- ids and routes --------------------------------------------------------------------------------


async def test_ids_differ_between_runs_with_the_same_seed(make_harness: MakeHarness) -> None:
    """A restarted sandbox never reissues a dataset, sync, connection or consumer id, nor a consumer's secret
    (only faults follow the seed)."""
    runs = []
    for _ in range(2):
        h = await make_harness(seed=7)
        dataset = (await h.push(ORDERS, "orders", [order("o-1")])).json()["datasetId"]
        sync = (await h.client.post(f"/companies/{COMPANY}/sync/commerce/latest", json={})).json()["commerceSyncId"]
        connections = [c["id"] for c in (await h.get(f"/companies/{COMPANY}"))["dataConnections"]]
        consumer = (await h.client.post("/webhooks", json={"url": "https://r.example/h", "eventTypes": ["x"]})).json()
        secret = (await h.get("/_sandbox/consumers"))["results"][0]["signingSecret"]
        runs.append({dataset, sync, *connections, consumer["id"], secret})
    assert not runs[0] & runs[1]


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
async def test_routes_codat_does_not_serve_get_its_json_404(make_harness: MakeHarness, method: str) -> None:
    """errors.md 404 "The requested resource could not be found", as Codat's error JSON, not text."""
    h = await make_harness()
    answer = await h.client.request(method, "/data/companies/x/nothing/here")
    assert _is_codat_error(answer, 404) and "X-Rate-Limit-Limit" in answer.headers


# A fixed id: test ids must be the same in every collection (pytest-xdist compares its workers' lists).
UNKNOWN_CONNECTION = "5f0c3c1e-2a44-4d0b-9a51-0d7e6c1b2a90"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("GET", ORDERS, {"POST"}), ("PUT", STATUS, {"GET", "HEAD"}), ("DELETE", "/companies", {"POST"}),
     ("PUT", f"/companies/{COMPANY}/connections/{UNKNOWN_CONNECTION}", {"GET", "HEAD", "DELETE"})],
)  # fmt: skip
async def test_a_wrong_method_is_a_405_whose_allow_names_every_method(
    make_harness: MakeHarness, method: str, path: str, allowed: set[str]
) -> None:
    """errors.md 405 "Method Not Allowed"; HTTP (RFC 9110 §15.5.6) wants `Allow` listing what the path takes."""
    h = await make_harness()
    answer = await h.client.request(method, path, json={})
    assert _is_codat_error(answer, 405)
    assert {m.strip() for m in answer.headers["allow"].split(",")} == allowed
