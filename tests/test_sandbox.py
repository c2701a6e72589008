"""The Codat sandbox: pushes, dataset statuses, webhooks in three shapes, syncs, connection deletion.

Runs in-process (httpx.ASGITransport), with a fixed clock and a recording webhook receiver; response
shapes are checked against Codat's own OpenAPI component schemas.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from svix.webhooks import Webhook, WebhookVerificationError

from service.clock import FixedClock
from service.sandbox import SandboxConfig, create_sandbox_app
from service.sandbox.edge import Sandbox
from tests.specs import load_spec

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
HOOK_URL = "http://receiver.test/webhooks/codat"
COMPANY = "8a210b68-6988-11ed-a1eb-0242ac120002"
ORDERS = f"/data/companies/{COMPANY}/sync/commerce-orders"
PAYMENTS = f"/data/companies/{COMPANY}/sync/commerce-payments"
# Codat endpoints need `Authorization: Basic base64(key)`; with no key configured any non-empty one does.
AUTH = {"Authorization": "Basic " + base64.b64encode(b"sandbox-test-key").decode()}


# -- helpers shared with test_sandbox_faults.py ----------------------------------------------------


@dataclass
class Receiver:
    """A recording webhook target: answers from `script` (then 200), keeps every request it got."""

    requests: list[httpx.Request] = field(default_factory=list)
    script: deque[httpx.Response] = field(default_factory=deque)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.script.popleft() if self.script else httpx.Response(200)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]


@dataclass
class Harness:
    client: httpx.AsyncClient
    clock: FixedClock
    receiver: Receiver
    sandbox: Sandbox
    transport: httpx.AsyncBaseTransport

    async def push(self, path: str, key: str, records: list[dict[str, Any]], **kw: Any) -> httpx.Response:
        return await self.client.post(path, json={key: records}, **kw)

    async def settle(self) -> None:
        """Let due datasets/syncs finish and wait for every webhook delivery to end."""
        await self.client.post("/_sandbox/tick")
        await self.sandbox.sender.drain()

    async def get(self, path: str) -> Any:
        response = await self.client.get(path)
        assert response.status_code == 200, response.text
        return response.json()


MakeHarness = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make_harness() -> AsyncIterator[MakeHarness]:
    """Build a sandbox (config from keywords) running its lifespan, with a client and a receiver."""
    stack: list[Any] = []

    async def make(
        *, clock: FixedClock | None = None, companies: tuple[str, ...] = (COMPANY,), **config: Any
    ) -> Harness:
        config.setdefault("webhook_url", HOOK_URL)
        config.setdefault("pace_seconds", 0.0)
        config.setdefault("push_processing_seconds", 0.0)
        config.setdefault("webhook_retry_delays", (0.0, 0.0, 0.0))
        receiver = Receiver()
        clock = clock or FixedClock()
        app = create_sandbox_app(
            SandboxConfig(**config), clock=clock, transport=httpx.MockTransport(receiver.handler)
        )
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        transport = httpx.ASGITransport(app=app)
        client = httpx.AsyncClient(transport=transport, base_url="http://sandbox.test", headers=AUTH)
        stack.append((lifespan, client))
        for company in companies:  # Codat has no company until it is created
            assert (await client.post("/_sandbox/companies", json={"id": company})).status_code == 200
        return Harness(client, clock, receiver, app.state.sandbox, transport)

    yield make
    for lifespan, client in reversed(stack):
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


def svix_verified(request: httpx.Request) -> dict[str, Any]:
    """The body, once the svix library (the independent oracle) has accepted its signature."""
    Webhook(SECRET).verify(request.content, dict(request.headers))  # raises WebhookVerificationError
    body: dict[str, Any] = json.loads(request.content)
    return body


def order(order_id: str, amount: float = 10.0, modified: str = "2025-06-01T10:00:00Z") -> dict[str, Any]:
    return {"id": order_id, "currency": "GBP", "totalAmount": amount, "sourceModifiedDate": modified}


@cache
def _registry() -> Registry:
    registry: Registry = Registry()
    for name in (
        "sync-commerce-2023-03-push-beta.json",
        "sync-commerce-current.json",
        "platform-current.json",
    ):
        contents = load_spec(name)
        registry = registry.with_resource(f"urn:{name}", Resource.from_contents(contents, DRAFT202012))
    return registry


def assert_matches_spec(instance: Any, spec: str, pointer: str) -> None:
    validator = Draft202012Validator({"$ref": f"urn:{spec}#{pointer}"}, registry=_registry())
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(instance)]
    assert errors == []


PUSH_RESULT = "/paths/" + "/".join(
    [
        "~1data~1companies~1{companyId}~1sync~1commerce-orders",
        "post/responses/200/content/application~1json/schema",
    ]
)


# -- pushes and datasets ---------------------------------------------------------------------------


async def test_push_answers_echo_and_dataset_id_matching_the_spec(make_harness: MakeHarness) -> None:
    """A push answers 200 {data: <echo>, datasetId} in the spec's PushResult shape."""
    h = await make_harness()
    body = {"orders": [order("o-1")], "contractVersion": "1.0"}
    response = await h.client.post(ORDERS, json=body)
    assert response.status_code == 200
    assert response.json()["data"] == body
    uuid.UUID(response.json()["datasetId"])
    assert_matches_spec(response.json(), "sync-commerce-2023-03-push-beta.json", PUSH_RESULT)
    assert "X-Rate-Limit-Remaining" in response.headers


async def test_dataset_walks_codat_statuses_to_complete_with_a_fixed_clock(make_harness: MakeHarness) -> None:
    """Status is a function of elapsed time: Initial→Queued→Fetching→MapQueued→Mapping→Complete."""
    h = await make_harness(pace_seconds=10.0)
    dataset_id = (await h.push(ORDERS, "orders", [order("o-1")])).json()["datasetId"]
    seen = []
    for _ in range(6):
        body = await h.get(f"/meta/companies/{COMPANY}/pull/history/{dataset_id}")
        assert_matches_spec(body, "platform-current.json", "/components/schemas/PullOperation")
        seen.append((body["status"], body["isCompleted"], "completed" in body))
        h.clock.advance(2.0)
    assert seen == [
        ("Initial", False, False), ("Queued", False, False), ("Fetching", False, False),
        ("MapQueued", False, False), ("Mapping", False, False), ("Complete", True, True),
    ]  # fmt: skip
    alias = await h.get(f"/companies/{COMPANY}/data/history/{dataset_id}")
    assert (
        alias["status"] == "Complete" and alias["progress"] == 100 and alias["dataType"] == "commerce-orders"
    )


async def test_unknown_dataset_and_bad_bodies_get_codat_errors(make_harness: MakeHarness) -> None:
    """404 for an unknown dataset; 400 with validation errors for a malformed push; the spec's error shape."""
    h = await make_harness()
    missing = await h.client.get(f"/meta/companies/{COMPANY}/pull/history/{uuid.uuid4()}")
    assert missing.status_code == 404
    bad = await h.client.post(ORDERS, json={"orders": [{"id": "o-1", "colour": "red"}, {"amount": 1}]})
    assert bad.status_code == 400
    error = bad.json()
    assert_matches_spec(error, "sync-commerce-current.json", "/components/schemas/ErrorMessage")
    assert error["statusCode"] == 400
    assert [e["itemId"] for e in error["validation"]["errors"]] == ["o-1", "orders[1]"]
    assert (await h.client.post(ORDERS, content=b"{not json")).status_code == 400
    assert (await h.client.post(ORDERS, json={"payments": []})).status_code == 400


# -- webhooks, three shapes ------------------------------------------------------------------------


async def _fetch_error(h: Harness) -> str:
    script = {
        "companyId": COMPANY,
        "dataType": "commerce-payments",
        "status": "FetchError",
        "errorMessage": "boom",
    }
    assert (await h.client.post("/_sandbox/script/dataset", json=script)).status_code == 200
    dataset_id: str = (await h.push(PAYMENTS, "payments", [{"id": "p-1", "amount": 5}])).json()["datasetId"]
    h.clock.advance(5.0)
    await h.settle()
    return dataset_id


async def test_fetch_error_sends_a_legacy_alert_with_the_client_authorization(
    make_harness: MakeHarness,
) -> None:
    """legacy: PascalCase body, unsigned, Authorization + X-Codat-ClientId headers."""
    h = await make_harness(webhook_shape="legacy", legacy_auth_header="Bearer shared", pace_seconds=5.0)
    dataset_id = await _fetch_error(h)
    dataset = await h.get(f"/meta/companies/{COMPANY}/pull/history/{dataset_id}")
    assert (dataset["status"], dataset["isErrored"], dataset["errorMessage"]) == ("FetchError", True, "boom")
    [request] = h.receiver.requests
    body = json.loads(request.content)
    assert body["RuleType"] == "Data Sync Status Changed To Error"
    assert body["CompanyId"] == COMPANY and body["ClientId"] == request.headers["x-codat-clientid"]
    assert body["Data"] == {
        "dataType": "commerce-payments",
        "datasetStatus": "FetchError",
        "datasetId": dataset_id,
    }
    assert body["DataConnectionId"] == dataset["connectionId"]
    assert uuid.UUID(body["AlertId"]) and "FetchError" in body["Message"]
    assert request.headers["authorization"] == "Bearer shared"
    assert "webhook-signature" not in request.headers


@pytest.mark.parametrize("prefix", ["webhook", "svix"])
async def test_fetch_error_legacy_signed_verifies_with_svix(make_harness: MakeHarness, prefix: str) -> None:
    """legacy_signed: the same body, signed so that the svix library verifies it; webhook-id = AlertId."""
    h = await make_harness(
        webhook_shape="legacy_signed",
        webhook_secret=SECRET,
        svix_headers=prefix == "svix",
        clock=FixedClock(time.time()),
    )
    dataset_id = await _fetch_error(h)
    [request] = h.receiver.requests
    verified = svix_verified(request)
    assert verified["Data"]["datasetId"] == dataset_id
    assert request.headers[f"{prefix}-id"] == verified["AlertId"]
    assert "authorization" not in request.headers
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(request.content.replace(b"FetchError", b"MapError"), dict(request.headers))


async def test_fetch_error_envelope_is_read_completed_without_dataset_id(make_harness: MakeHarness) -> None:
    """envelope: read.completed naming data type, status and connection, signed, never the dataset id."""
    h = await make_harness(webhook_shape="envelope", webhook_secret=SECRET, clock=FixedClock(time.time()))
    dataset_id = await _fetch_error(h)
    [request] = h.receiver.requests
    body = svix_verified(request)
    assert body["eventType"] == "read.completed" and request.headers["webhook-id"] == body["id"]
    assert body["payload"]["referenceCompany"]["id"] == COMPANY
    [entry] = body["payload"]["dataTypes"]
    assert entry["dataType"] == "commerce-payments" and entry["status"] == "FetchError"
    assert entry["recordsModified"] is False and "datasetId" not in entry
    assert dataset_id not in request.content.decode()


async def test_scripted_error_applies_times_then_datasets_complete(make_harness: MakeHarness) -> None:
    """`times: 2` fails the next two datasets; the third completes and sends `Data sync completed`."""
    h = await make_harness()
    script = {"companyId": COMPANY, "dataType": "commerce-orders", "status": "MapError", "times": 2}
    await h.client.post("/_sandbox/script/dataset", json=script)
    for n in range(3):
        await h.push(ORDERS, "orders", [order(f"o-{n}")])
    await h.settle()
    datasets = (await h.get("/_sandbox/datasets"))["results"]
    assert [d["status"] for d in datasets] == ["MapError", "MapError", "Complete"]
    rule_types = sorted(b["RuleType"] for b in h.receiver.bodies())
    assert rule_types == ["Data Sync Status Changed To Error"] * 2 + ["Data sync completed"]
    held = (await h.get("/_sandbox/records"))["results"]
    assert [r["id"] for r in held] == ["o-2"]  # records of errored datasets never reach Codat


async def test_webhook_shape_can_change_at_runtime(make_harness: MakeHarness) -> None:
    """POST /_sandbox/config switches shape and secret; the next webhook uses them."""
    h = await make_harness(clock=FixedClock(time.time()))
    changed = await h.client.post(
        "/_sandbox/config", json={"webhookShape": "envelope", "webhookSecret": SECRET}
    )
    assert changed.json()["webhookShape"] == "envelope" and changed.json()["webhookSecret"] is True
    await h.push(ORDERS, "orders", [order("o-1")])
    await h.settle()
    [request] = h.receiver.requests
    assert svix_verified(request)["eventType"] == "read.completed"
    refused = await h.client.post("/_sandbox/config", json={"apiKey": "x"})
    assert refused.status_code == 400


# -- syncs -----------------------------------------------------------------------------------------


async def test_sync_marks_complete_records_synced_and_reports_status(make_harness: MakeHarness) -> None:
    """sync latest → 2000 and records synced; a second sync with nothing new → 2040; status follows."""
    h = await make_harness()
    await h.push(ORDERS, "orders", [order("o-1"), order("o-2")])
    first = await h.client.post(f"/companies/{COMPANY}/sync/commerce/latest", json={})
    assert first.status_code == 200
    assert_matches_spec(first.json(), "sync-commerce-current.json", "/components/schemas/SyncSummary")
    assert (first.json()["syncStatusCode"], first.json()["dataPushed"]) == (2000, True)
    assert all(r["synced"] for r in (await h.get("/_sandbox/records"))["results"])
    second = await h.client.post(
        f"/companies/{COMPANY}/sync/commerce/latest", json={"syncTo": "2030-01-01T00:00:00Z"}
    )
    assert second.json()["syncStatusCode"] == 2040
    assert second.json()["syncDateRangeUtc"]["start"] == first.json()["syncDateRangeUtc"]["finish"]
    status = await h.get(f"/meta/companies/{COMPANY}/sync/commerce/status")
    assert_matches_spec(status, "sync-commerce-current.json", "/components/schemas/SyncStatus")
    assert status["commerceSyncId"] == second.json()["commerceSyncId"] and status["syncStatusCode"] == 2040
    await h.settle()
    # *Sync Completed* is an Expenses rule: a Sync for Commerce sync sends no webhook (FACTS §6).
    assert [b["RuleType"] for b in h.receiver.bodies()] == ["Data sync completed"]


async def test_scripted_sync_failure_leaves_records_unsynced(make_harness: MakeHarness) -> None:
    """A scripted 4200 fails the sync and synchronises nothing; no webhook says so (it is learned by polling)."""
    h = await make_harness()
    await h.push(ORDERS, "orders", [order("o-1")])
    await h.client.post(
        "/_sandbox/script/sync", json={"companyId": COMPANY, "code": 4200, "errorMessage": "map"}
    )
    answer = (await h.client.post(f"/companies/{COMPANY}/sync/commerce/latest")).json()
    assert (answer["syncStatusCode"], answer["errorMessage"], answer["dataPushed"]) == (4200, "map", False)
    await h.settle()
    assert not any(r["synced"] for r in (await h.get("/_sandbox/records"))["results"])
    assert [b["RuleType"] for b in h.receiver.bodies()] == ["Data sync completed"]


async def test_sync_is_in_progress_until_pace_elapses(make_harness: MakeHarness) -> None:
    """With a pace, a sync answers 1000 and records are synced only once it completes."""
    h = await make_harness(pace_seconds=4.0)
    await h.push(ORDERS, "orders", [order("o-1")])
    h.clock.advance(4.0)
    answer = (await h.client.post(f"/companies/{COMPANY}/sync/commerce/latest")).json()
    assert answer["syncStatusCode"] == 1000
    assert (await h.get(f"/meta/companies/{COMPANY}/sync/commerce/status"))["syncStatusCode"] == 1000
    h.clock.advance(4.0)
    assert (await h.get(f"/meta/companies/{COMPANY}/sync/commerce/status"))["syncStatusCode"] == 2000
    assert (await h.get("/_sandbox/records"))["results"][0]["synced"] is True


@pytest.mark.parametrize(
    "body",
    [
        {"dateRange": {"start": "2025-01-01T00:00:00Z", "finish": "2025-02-01T00:00:00Z"}},
        {"start": "2025-01-01T00:00:00Z", "end": "2025-02-01T00:00:00Z"},
    ],
)
async def test_historic_sync_takes_the_spec_and_docs_forms(
    make_harness: MakeHarness, body: dict[str, Any]
) -> None:
    """sync/commerce/historic accepts {dateRange{start,finish}} and {start,end}; bad ranges get 400."""
    h = await make_harness()
    response = await h.client.post(f"/meta/companies/{COMPANY}/sync/commerce/historic", json=body)
    assert response.status_code == 200
    assert response.json()["syncDateRangeUtc"] == {
        "start": "2025-01-01T00:00:00.000Z",
        "finish": "2025-02-01T00:00:00.000Z",
    }
    assert_matches_spec(response.json(), "sync-commerce-current.json", "/components/schemas/SyncSummary")
    backwards = {"start": "2025-02-01T00:00:00Z", "end": "2025-01-01T00:00:00Z"}
    assert (
        await h.client.post(f"/meta/companies/{COMPANY}/sync/commerce/historic", json=backwards)
    ).status_code == 400


# -- connections -----------------------------------------------------------------------------------


async def test_deleting_the_connection_sends_legacy_alert_and_blocks_pushes(
    make_harness: MakeHarness,
) -> None:
    """DELETE …/connections/{id} → `Sync Connection Deleted` (no connection id); pushes 404 until relinked."""
    h = await make_harness()
    dataset_id = (await h.push(ORDERS, "orders", [order("o-1")])).json()["datasetId"]
    connection_id = (await h.get(f"/meta/companies/{COMPANY}/pull/history/{dataset_id}"))["connectionId"]
    assert (await h.client.delete(f"/companies/{COMPANY}/connections/{connection_id}")).status_code == 200
    assert (await h.client.delete(f"/companies/{COMPANY}/connections/{connection_id}")).status_code == 404
    await h.settle()
    deleted = [b for b in h.receiver.bodies() if b["RuleType"] == "Sync Connection Deleted"]
    assert deleted[0]["CompanyId"] == COMPANY and "DataConnectionId" not in deleted[0]
    assert (await h.push(ORDERS, "orders", [order("o-2")])).status_code == 404
    await h.client.post(f"/_sandbox/companies/{COMPANY}/reconnect")
    assert (await h.push(ORDERS, "orders", [order("o-2")])).status_code == 200


async def test_sandbox_triggered_deletion_sends_connection_deleted_envelope(
    make_harness: MakeHarness,
) -> None:
    """POST /_sandbox/companies/{id}/delete-connection → signed `connection.deleted` envelope."""
    h = await make_harness(webhook_shape="envelope", webhook_secret=SECRET, clock=FixedClock(time.time()))
    answer = (await h.client.post(f"/_sandbox/companies/{COMPANY}/delete-connection")).json()
    await h.settle()
    [request] = h.receiver.requests
    body = svix_verified(request)
    assert body["eventType"] == "connection.deleted"
    assert body["payload"]["connection"]["id"] == answer["connectionId"]
    assert body["payload"]["referenceCompany"]["id"] == COMPANY


async def test_api_key_requires_basic_auth(make_harness: MakeHarness) -> None:
    """With api_key set, Codat endpoints need `Authorization: Basic base64(key)`; 401 otherwise."""
    h = await make_harness(api_key="sandbox-key")
    assert (await h.push(ORDERS, "orders", [order("o-1")])).status_code == 401
    wrong = await h.push(ORDERS, "orders", [order("o-1")], headers={"Authorization": "Basic d3Jvbmc="})
    assert wrong.status_code == 401
    ok = await h.push(ORDERS, "orders", [order("o-1")], headers={"Authorization": "Basic c2FuZGJveC1rZXk="})
    assert ok.status_code == 200
    counts = (await h.get("/_sandbox/requests"))["results"]
    assert {"endpoint": "push", "status": 401, "count": 2} in counts
    assert {"endpoint": "push", "status": 200, "count": 1} in counts


async def test_request_counts_can_be_read_per_company(make_harness: MakeHarness) -> None:
    """`/_sandbox/requests?companyId=` counts only that company's requests (tests sharing a sandbox)."""
    h = await make_harness(companies=(COMPANY, "other-co"))
    other = "/data/companies/other-co/sync/commerce-orders"
    dataset_id = (await h.push(ORDERS, "orders", [order("o-1")])).json()["datasetId"]
    await h.push(other, "orders", [order("o-1")])
    await h.push(other, "orders", [order("o-2")])
    assert (await h.client.get(f"/meta/companies/{COMPANY}/pull/history/{dataset_id}")).status_code == 200
    mine = (await h.get(f"/_sandbox/requests?companyId={COMPANY}"))["results"]
    theirs = (await h.get("/_sandbox/requests?companyId=other-co"))["results"]
    everyone = (await h.get("/_sandbox/requests"))["results"]
    assert mine == [{"endpoint": "dataset", "status": 200, "count": 1}, {"endpoint": "push", "status": 200, "count": 1}]
    assert theirs == [{"endpoint": "push", "status": 200, "count": 2}]
    assert {"endpoint": "push", "status": 200, "count": 3} in everyone


async def test_an_update_pushed_while_a_sync_runs_is_not_what_the_books_got(make_harness: MakeHarness) -> None:
    """A sync puts in the books what records held when it started: re-pushing a version sent meanwhile breaches."""
    clock = FixedClock()
    h = await make_harness(pace_seconds=10.0, clock=clock)
    v1, v2 = order("o-1", 10.0, "2025-06-01T10:00:00Z"), order("o-1", 12.0, "2025-06-02T10:00:00Z")
    assert (await h.push(ORDERS, "orders", [v1])).status_code == 200
    clock.advance(11)
    await h.settle()
    assert (await h.client.post(f"/companies/{COMPANY}/sync/commerce/latest", json={})).status_code == 200
    assert (await h.push(ORDERS, "orders", [v2])).status_code == 200  # while the sync runs
    clock.advance(11)
    await h.settle()  # v2's dataset completes and the sync finishes in the same tick
    [held] = (await h.get("/_sandbox/records"))["results"]
    assert held["synced"] is True and held["data"] == v2
    assert (await h.push(ORDERS, "orders", [v2])).status_code == 200
    kinds = [b["kind"] for b in (await h.get("/_sandbox/breaches"))["results"]]
    assert kinds == ["update_after_sync"]
