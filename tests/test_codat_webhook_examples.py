"""Codat's own documented webhook examples, signed by an independent library, land as the right alerts.

Oracle: every example of shared/codat/specs/webhooks-2024-10.yaml — the request-body examples of the
`webhooks:` section (new envelopes) and the `examples` of the legacy PascalCase schemas those events point
to — exactly as Codat wrote them. Each is signed with the `standardwebhooks` library (not our signer) and
POSTed to the relay's `/webhooks/codat`; the stored alert must have the kind the README documents and the
company, dataset and data type the example names (FACTS §6: `{dataType}.write.*` carry the data type in the
event name and `payload.connectionId`/`payload.status`; `company.*` carry the company as `payload.id`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from service.testing import running_app, signed_headers
from tests.conftest import ADMIN_TOKEN, TEST_SECRET, make_settings
from tests.specs import load_webhooks_spec

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
# The README's kinds (section "Webhook answers", Kinds): everything not listed is `other`.
KINDS = {
    "read.completed": "dataset_status", "read.completed.initial": "dataset_status",
    "DataSyncCompleted": "dataset_status", "DatasetDataChanged": "dataset_status",
    "DataSyncStatusChangedToError": "dataset_status",
    "connection.deleted": "connection_deleted", "SyncConnectionDeleted": "connection_deleted",
    "connection.created": "connection_status", "connection.connected": "connection_status",
    "connection.reconnected": "connection_status", "connection.disconnected": "connection_status",
    "connection.failed": "connection_status", "DataConnectionStatusChanged": "connection_status",
    "SyncCompleted": "sync_completed", "SyncFailed": "sync_completed", "NewCompanySynchronized": "sync_completed",
    "PushOperationStatusChanged": "push_operation", "PushOperationTimedOut": "push_operation",
    "client.rateLimit.reached": "rate_limit", "client.rateLimit.reset": "rate_limit",
    "company.deleted": "company_deleted",
}  # fmt: skip


@dataclass(frozen=True)
class Example:
    event: str
    name: str
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        if self.event.endswith((".write.successful", ".write.unsuccessful")):
            return "push_operation"
        return KINDS.get(self.event, "other")

    def company(self) -> str | None:
        """The company the example names, wherever its shape keeps it."""
        payload = self.body.get("payload") or {}
        if "CompanyId" in self.body:
            return str(self.body["CompanyId"])
        if "referenceCompany" in payload:
            return str(payload["referenceCompany"]["id"])
        return str(payload["id"]) if self.event.startswith("company.") else None

    def data(self) -> tuple[str | None, str | None]:
        """(data type, dataset id) the example names."""
        if self.event.endswith((".write.successful", ".write.unsuccessful")):
            return self.event.split(".", 1)[0], None
        legacy = self.body.get("Data") or {}
        entries = (self.body.get("payload") or {}).get("dataTypes") or [{}]
        return legacy.get("dataType") or entries[0].get("dataType"), legacy.get("datasetId")


def documented_examples() -> Iterator[Example]:
    spec = load_webhooks_spec()
    schemas = spec["components"]["schemas"]
    for event, item in spec["webhooks"].items():
        content = item["post"]["requestBody"]["content"]["application/json"]
        for name, example in (content.get("examples") or {}).items():
            yield Example(event, name, example["value"])
        schema = schemas[content["schema"]["$ref"].rsplit("/", 1)[-1]]
        for index, example in enumerate(schema.get("examples") or []):  # legacy events keep theirs here
            if "RuleType" in example or "ClientId" in example:
                yield Example(event, f"schema example {index + 1}", example)


EXAMPLES = list(documented_examples())


@pytest.fixture
async def relay(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(make_settings(database_url)) as (_, client):
        yield client


def test_every_documented_event_has_an_example() -> None:
    """The oracle covers the catalogue: legacy and new shapes, every event type with an example."""
    events = {e.event for e in EXAMPLES}
    assert {"read.completed", "connection.deleted", "SyncConnectionDeleted", "DataSyncStatusChangedToError",
            "payments.write.unsuccessful", "company.created", "DataConnectionStatusChanged"} <= events  # fmt: skip
    assert len(EXAMPLES) >= 60


async def test_documented_examples_land_as_the_right_alerts(relay: httpx.AsyncClient) -> None:
    """Each example → 202 (or 200 ignored for `other`), stored with its kind, company, dataset and data type."""
    wrong = []
    for example in EXAMPLES:
        raw = json.dumps(example.body).encode()
        headers = signed_headers(raw, TEST_SECRET) | {"content-type": "application/json"}
        answer = await relay.post("/webhooks/codat", content=raw, headers=headers)
        assert answer.status_code in (200, 202), (example.event, example.name, answer.text)
        stored = (await relay.get(f"/v1/alerts/{headers['webhook-id']}", headers=ADMIN)).json()
        data_type, dataset = example.data()
        first = (stored["dataTypes"] or [{}])[0]
        got = (stored["kind"], stored["companyId"], stored["datasetId"], first.get("data_type"))
        if got != (example.kind, example.company(), dataset, data_type):
            wrong.append((example.event, example.name, got, (example.kind, example.company(), dataset, data_type)))
    assert wrong == [], "\n".join(map(str, wrong))
