"""Every webhook the sandbox sends is one Codat documents, in exactly the documented body.

Oracle: shared/codat/specs/webhooks-2024-10.yaml — the `webhooks:` section names each event's schema
(legacy-named events use the legacy PascalCase schemas, e.g. `SyncConnectionDeletedWebhook`); bodies are
validated against it and legacy bodies must hold exactly the documented keys. FACTS §6: no Sync for
Commerce sync event exists (`SyncCompleted`/`SyncFailed` are Expenses rules, core-rules-types.md).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from service.clock import FixedClock
from tests.specs import WEBHOOKS_SPEC, load_webhooks_spec, spec_errors
from tests.test_sandbox import COMPANY, ORDERS, PAYMENTS, SECRET, MakeHarness, make_harness, order, svix_verified

__all__ = ["make_harness"]  # the fixture is shared by import
LATEST = f"/companies/{COMPANY}/sync/commerce/latest"


def documented_schema(event_type: str) -> str:
    """The JSON pointer of the schema webhooks-2024-10.yaml gives the event named `event_type`."""
    ref = load_webhooks_spec()["webhooks"][event_type]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return str(ref["$ref"]).removeprefix("#")


def documented_keys(event_type: str) -> set[str]:
    name = documented_schema(event_type).rsplit("/", 1)[-1]
    return set(load_webhooks_spec()["components"]["schemas"][name]["properties"])


async def _lifecycle(h: Any) -> list[dict[str, Any]]:
    """Everything a company goes through: datasets (error, complete), syncs, deletion, relink."""
    await h.client.post("/_sandbox/script/dataset", json={"dataType": "commerce-payments", "status": "FetchError"})
    await h.push(PAYMENTS, "payments", [{"id": "p-1", "amount": 5}])
    await h.push(ORDERS, "orders", [order("o-1")])
    await h.client.post(LATEST, json={})
    await h.client.post("/_sandbox/script/sync", json={"code": 4200, "errorMessage": "map"})
    await h.client.post(LATEST, json={})
    await h.client.post(f"/_sandbox/companies/{COMPANY}/delete-connection")
    await h.client.post(f"/_sandbox/companies/{COMPANY}/reconnect")
    await h.client.post("/companies", json={"name": "Toft stores"})
    await h.settle()
    return list((await h.get("/_sandbox/webhooks"))["results"])


@pytest.mark.parametrize("shape", ["legacy", "legacy_signed"])
async def test_legacy_bodies_are_exactly_the_documented_rules(make_harness: MakeHarness, shape: str) -> None:
    """Legacy rules: documented keys only (no DataConnectionId/Data on SyncConnectionDeleted), no sync alerts."""
    h = await make_harness(webhook_shape=shape, webhook_secret=SECRET, legacy_auth_header="Bearer x",
                           clock=FixedClock(time.time()))  # fmt: skip
    sent = await _lifecycle(h)
    assert [d["eventType"] for d in sent] == [
        "DataSyncStatusChangedToError", "DataSyncCompleted", "SyncConnectionDeleted", "DataConnectionStatusChanged",
    ]  # fmt: skip
    for delivery in sent:
        body = delivery["body"]
        assert set(body) == documented_keys(delivery["eventType"]), delivery["eventType"]
        assert spec_errors(body, WEBHOOKS_SPEC, documented_schema(delivery["eventType"])) == [], delivery["eventType"]
    deleted, relinked = sent[2]["body"], sent[3]["body"]
    assert set(deleted) == {"ClientId", "ClientName", "CompanyId", "RuleId", "RuleType", "AlertId", "Message"}
    assert (relinked["Data"]["oldStatus"], relinked["Data"]["newStatus"]) == ("PendingAuth", "Linked")
    assert relinked["DataConnectionId"] == relinked["Data"]["dataConnectionId"]


async def test_envelopes_follow_the_documented_schemas_and_a_relink_is_a_new_connection(
    make_harness: MakeHarness,
) -> None:
    """connection.deleted (id X), then connection.created + connection.connected with a NEW id; no sync event."""
    h = await make_harness(webhook_shape="envelope", webhook_secret=SECRET, clock=FixedClock(time.time()))
    sent = await _lifecycle(h)
    kinds = [d["eventType"] for d in sent]
    assert kinds == ["read.completed", "read.completed", "connection.deleted", "connection.created",
                     "connection.connected", "company.created"]  # fmt: skip
    for delivery, request in zip(sent, h.receiver.requests, strict=True):
        assert svix_verified(request) == delivery["body"]
        assert spec_errors(delivery["body"], WEBHOOKS_SPEC, documented_schema(delivery["eventType"])) == []
    deleted, created, connected = (d["body"]["payload"]["connection"] for d in sent[2:5])
    assert created["id"] == connected["id"] != deleted["id"]
    assert (created["status"], connected["status"]) == ("PendingAuth", "Linked")
    company = sent[5]["body"]["payload"]
    assert "referenceCompany" not in company and company["name"] == "Toft stores"
    assert company["id"] in [c["id"] for c in (await h.get("/_sandbox/companies"))["results"]]


def test_the_schema_oracle_is_not_vacuous() -> None:
    """A legacy deletion carrying `Data` or a wrong-typed field is caught by the documented-keys check."""
    schema = documented_schema("SyncConnectionDeleted")
    assert spec_errors({"CompanyId": 7}, WEBHOOKS_SPEC, schema) != []
    assert "Data" not in documented_keys("SyncConnectionDeleted")
    assert "DataConnectionId" in documented_keys("DataSyncStatusChangedToError")
