"""Every answer of every operation the sandbox implements validates against the spec that defines it.

Success and error answers alike, each against the operation's own response schema for that status in
shared/codat/specs (python-jsonschema, formats checked: an implementation the sandbox does not use).
Where an operation documents no schema for an answer it gives, the closest documented one is used and
the row says so: the 2023 push spec documents only `200` for pushes (errors: `ErrorMessage` of
sync-commerce-current.json) and no body at all for `check-data-status` (the platform's `PullOperation`,
the same dataset at `GET /companies/{companyId}/data/history/{datasetId}`, FACTS §2).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.specs import response_schema, spec_errors
from tests.test_sandbox import MakeHarness, make_harness, order

__all__ = ["make_harness"]  # the fixture is shared by import
PUSH, CURRENT, PLATFORM = "sync-commerce-2023-03-push-beta.json", "sync-commerce-current.json", "platform-current.json"
ERROR = (CURRENT, "/components/schemas/ErrorMessage")
PULL_OPERATION = (PLATFORM, "/components/schemas/PullOperation")


@dataclass(frozen=True)
class Call:
    """One request and the schema its answer must fit: (spec, template, method) or an explicit pointer."""

    name: str
    method: str
    path: str  # with {company}, {dataset}, {sync}, {connection} filled from the scenario
    status: int
    spec: str
    template: str | None = None  # the spec's path template; None: `schema` names the pointer
    schema: tuple[str, str] | None = None
    body: Any = None
    headers: dict[str, str] | None = None


def _push(data_type: str, key: str, record: dict[str, Any]) -> list[Call]:
    template = f"/data/companies/{{companyId}}/sync/{data_type}"
    path = f"/data/companies/{{company}}/sync/{data_type}"
    return [
        Call(f"push {data_type}", "POST", path, 200, PUSH, template, body={key: [record]}),
        Call(f"push {data_type} invalid", "POST", path, 400, CURRENT, schema=ERROR, body={key: [{"id": 1}]}),
    ]


CALLS = [
    *_push("commerce-orders", "orders", order("o-1") | {"createdDate": "2026-01-01T10:00:00Z"}),
    *_push("commerce-payments", "payments", {"id": "p-1", "amount": 5.0, "type": "Card", "status": "Paid"}),
    *_push("commerce-transactions", "transactions", {"id": "t-1", "totalAmount": 5.0, "type": "Payment"}),
    Call("push unknown company", "POST", f"/data/companies/{uuid.uuid4()}/sync/commerce-orders", 404, CURRENT,
         schema=ERROR, body={"orders": []}),
    Call("push unauthorised", "POST", "/data/companies/{company}/sync/commerce-orders", 401, CURRENT, schema=ERROR,
         body={"orders": []}, headers={"Authorization": ""}),
    Call("push replayed other body", "POST", "/data/companies/{company}/sync/commerce-orders", 422, CURRENT,
         schema=ERROR, body={"orders": [order("o-9")]}, headers={"Idempotency-Key": "{key}"}),
    Call("dataset (meta)", "GET", "/meta/companies/{company}/pull/history/{dataset}", 200, PLATFORM,
         schema=PULL_OPERATION),
    Call("dataset (meta) unknown", "GET", f"/meta/companies/{{company}}/pull/history/{uuid.uuid4()}", 404, CURRENT,
         schema=ERROR),
    Call("get-pull-operation", "GET", "/companies/{company}/data/history/{dataset}", 200, PLATFORM,
         "/companies/{companyId}/data/history/{datasetId}"),
    Call("get-pull-operation unknown", "GET", f"/companies/{{company}}/data/history/{uuid.uuid4()}", 404, PLATFORM,
         "/companies/{companyId}/data/history/{datasetId}"),
    Call("request-sync", "POST", "/companies/{company}/sync/commerce/latest", 200, CURRENT,
         "/companies/{companyId}/sync/commerce/latest", body={"syncTo": "2030-01-01T00:00:00Z"}),
    Call("request-sync bad body", "POST", "/companies/{company}/sync/commerce/latest", 400, CURRENT,
         "/companies/{companyId}/sync/commerce/latest", body={"syncTo": 7}),
    Call("request-sync unknown company", "POST", f"/companies/{uuid.uuid4()}/sync/commerce/latest", 404, CURRENT,
         "/companies/{companyId}/sync/commerce/latest", body={}),
    Call("request-sync-for-date-range", "POST", "/meta/companies/{company}/sync/commerce/historic", 200, CURRENT,
         "/meta/companies/{companyId}/sync/commerce/historic",
         body={"dateRange": {"start": "2025-01-01T00:00:00Z", "finish": "2025-02-01T00:00:00Z"}}),
    Call("request-sync-for-date-range bad", "POST", "/meta/companies/{company}/sync/commerce/historic", 400, CURRENT,
         "/meta/companies/{companyId}/sync/commerce/historic", body={"dateRange": {"start": "2025-01-01"}}),
    Call("get-sync-status", "GET", "/meta/companies/{company}/sync/commerce/status", 200, CURRENT,
         "/meta/companies/{companyId}/sync/commerce/status"),
    Call("get-sync-status unknown company", "GET", f"/meta/companies/{uuid.uuid4()}/sync/commerce/status", 404,
         CURRENT, "/meta/companies/{companyId}/sync/commerce/status"),
    Call("get-latest-sync", "GET", "/companies/{company}/sync/commerce/syncs/latest/status", 200, CURRENT,
         "/companies/{companyId}/sync/commerce/syncs/latest/status"),
    Call("get-last-successful-sync", "GET", "/companies/{company}/sync/commerce/syncs/lastSuccessful/status", 200,
         CURRENT, "/companies/{companyId}/sync/commerce/syncs/lastSuccessful/status"),
    Call("get-sync-by-id", "GET", "/companies/{company}/sync/commerce/syncs/{sync}/status", 200, CURRENT,
         "/companies/{companyId}/sync/commerce/syncs/{syncId}/status"),
    Call("get-sync-by-id unknown", "GET", f"/companies/{{company}}/sync/commerce/syncs/{uuid.uuid4()}/status", 404,
         CURRENT, "/companies/{companyId}/sync/commerce/syncs/{syncId}/status"),
    Call("list-syncs", "GET", "/companies/{company}/sync/commerce/syncs/list/status", 200, CURRENT,
         "/companies/{companyId}/sync/commerce/syncs/list/status"),
    Call("create-company", "POST", "/companies", 200, PLATFORM, "/companies", body={"name": "Toft stores"}),
    Call("create-company (sync spec)", "POST", "/companies", 200, CURRENT, "/companies", body={"name": "Toft"}),
    Call("create-company bad", "POST", "/companies", 400, PLATFORM, "/companies", body={"name": ""}),
    Call("create-company unauthorised", "POST", "/companies", 401, PLATFORM, "/companies", body={"name": "A"},
         headers={"Authorization": ""}),
    Call("get-company", "GET", "/companies/{company}", 200, PLATFORM, "/companies/{companyId}"),
    Call("get-company unknown", "GET", f"/companies/{uuid.uuid4()}", 404, PLATFORM, "/companies/{companyId}"),
    Call("get-connection", "GET", "/companies/{company}/connections/{connection}", 200, PLATFORM,
         "/companies/{companyId}/connections/{connectionId}"),
    Call("get-connection unknown", "GET", f"/companies/{{company}}/connections/{uuid.uuid4()}", 404, PLATFORM,
         "/companies/{companyId}/connections/{connectionId}"),
    Call("delete-connection unknown", "DELETE", f"/companies/{{company}}/connections/{uuid.uuid4()}", 404, PLATFORM,
         "/companies/{companyId}/connections/{connectionId}"),
    Call("get-configuration", "GET", "/config/companies/{company}/sync/commerce", 200, CURRENT,
         "/config/companies/{companyId}/sync/commerce"),
    Call("get-configuration unknown company", "GET", f"/config/companies/{uuid.uuid4()}/sync/commerce", 404, CURRENT,
         "/config/companies/{companyId}/sync/commerce"),
    Call("set-configuration", "POST", "/config/companies/{company}/sync/commerce", 200, CURRENT,
         "/config/companies/{companyId}/sync/commerce",
         body={"schedule": {"selectedFrequency": "Daily", "syncHour": 2, "timeZone": "America/New_York"}}),
    Call("set-configuration without a body (as the SDK sends it)", "POST", "/config/companies/{company}/sync/commerce",
         200, CURRENT, "/config/companies/{companyId}/sync/commerce"),
    Call("set-configuration bad", "POST", "/config/companies/{company}/sync/commerce", 400, CURRENT,
         "/config/companies/{companyId}/sync/commerce", body={"schedule": {"syncHour": 25}}),
    Call("create-webhook-consumer", "POST", "/webhooks", 201, PLATFORM, "/webhooks",
         body={"url": "https://relay.example/webhooks/codat", "eventTypes": ["read.completed"]}),
    Call("create-webhook-consumer bad", "POST", "/webhooks", 400, PLATFORM, "/webhooks", body={"url": "ftp://x"}),
    Call("list-webhook-consumers", "GET", "/webhooks", 200, PLATFORM, "/webhooks"),
    Call("delete-webhook-consumer unknown", "DELETE", f"/webhooks/{uuid.uuid4()}", 404, PLATFORM,
         "/webhooks/{webhookId}"),
    Call("route Codat does not serve", "GET", "/nowhere", 404, CURRENT, schema=ERROR),
    Call("method the route does not take", "PATCH", "/companies", 405, CURRENT, schema=ERROR),
]  # fmt: skip


@pytest.fixture
async def scenario(make_harness: MakeHarness) -> tuple[Any, dict[str, str]]:
    """A company created through Codat's own POST /companies, with a dataset, a sync and a keyed push."""
    h = await make_harness(companies=())
    company = (await h.client.post("/companies", json={"name": "Oracle shop"})).json()
    ids = {"company": company["id"], "connection": company["dataConnections"][0]["id"], "key": str(uuid.uuid4())}
    pushed = await h.client.post(f"/data/companies/{ids['company']}/sync/commerce-orders",
                                 json={"orders": [order("o-1")]}, headers={"Idempotency-Key": ids["key"]})  # fmt: skip
    ids["dataset"] = pushed.json()["datasetId"]
    await h.client.post(f"/companies/{ids['company']}/sync/commerce/latest", json={})
    syncs = await h.get(f"/companies/{ids['company']}/sync/commerce/syncs/list/status")
    ids["sync"] = syncs[0]["syncId"]
    return h, ids


@pytest.mark.parametrize("call", CALLS, ids=[c.name for c in CALLS])
async def test_the_answer_fits_the_operations_documented_schema(
    scenario: tuple[Any, dict[str, str]], call: Call
) -> None:
    """The sandbox's answer has the documented status and validates against the spec's schema for it."""
    h, ids = scenario
    headers = {k: v.format(**ids) for k, v in (call.headers or {}).items()}
    answer: httpx.Response = await h.client.request(call.method, call.path.format(**ids), json=call.body,
                                                    headers=headers)  # fmt: skip
    assert answer.status_code == call.status, answer.text
    if call.template is not None:
        pointer = response_schema(call.spec, call.template, call.method.lower(), call.status)
        spec = call.spec
    else:
        assert call.schema is not None
        spec, pointer = call.schema
    assert spec_errors(answer.json(), spec, pointer) == []


def test_every_codat_route_of_the_sandbox_is_in_the_table() -> None:
    """Adding an endpoint to the sandbox without an oracle row fails here."""
    from service.sandbox import codat_api, codat_config, codat_syncs, consumers

    served = {route.path for route in [*codat_api.ROUTES, *codat_syncs.ROUTES, *codat_config.ROUTES, *consumers.ROUTES]
              if not route.path.startswith("/_sandbox/")}  # fmt: skip
    templates = {c.template for c in CALLS} | {"/data/companies/{companyId}/sync/{dataType}",
                                              "/meta/companies/{companyId}/pull/history/{datasetId}"}  # fmt: skip
    assert served - templates == set()
