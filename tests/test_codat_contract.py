"""The client against Codat's published OpenAPI specs: what it sends validates, what Codat shows parses.

Request bodies are captured off the wire and validated against the requestBody schema of the spec's
path + method, `$ref`s resolved within the spec file. The specs are OpenAPI 3.1 files written with 3.0's
`nullable: true`, which JSON Schema ignores; it is rewritten to `type: [T, "null"]` so that a null the
spec allows is not reported as a violation. `date-time` is checked by RFC 3339 (jsonschema alone would
skip it without an optional dependency).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import jsonschema
import orjson
import pytest
from pydantic import SecretStr
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from service.codat.client import CodatClient, CodatError, CodatRetryPolicy
from service.codat.models import DATASET_STATUSES, CodatRateLimited, Dataset, SyncStatus, error_class_for
from tests.specs import load_spec

PUSH_SPEC = "sync-commerce-2023-03-push-beta.json"
CURRENT_SPEC = "sync-commerce-current.json"
PLATFORM_SPEC = "platform-current.json"
COMPANY = "8a210b68-6988-11ed-a1eb-0242ac120002"
DATASET = "97d60846-f07a-4d42-b5a0-0bdcc6ebf56b"
API_KEY = SecretStr("codat-contract-test-key")

FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("date-time", raises=ValueError)
def _rfc3339(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if "T" not in value.upper() or datetime.fromisoformat(value).tzinfo is None:
        raise ValueError("not an RFC 3339 date-time with an offset")
    return True


@pytest.fixture(scope="module")
def specs() -> dict[str, dict[str, Any]]:
    return {name: load_spec(name) for name in (PUSH_SPEC, CURRENT_SPEC, PLATFORM_SPEC)}


def _pointer(*parts: str) -> str:
    return "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)


def validator(specs: dict[str, dict[str, Any]], name: str, pointer: str) -> jsonschema.Validator:
    """A validator for the schema at `pointer` inside spec `name`, its `$ref`s resolving in that file."""
    uri = f"urn:codat-spec:{name}"
    registry: Registry[Any] = Registry().with_resource(uri, Resource.from_contents(specs[name], DRAFT202012))
    root = {"$ref": f"{uri}#/{pointer}"}
    return jsonschema.Draft202012Validator(root, registry=registry, format_checker=FORMATS)


def request_schema(specs: dict[str, dict[str, Any]], name: str, path: str) -> jsonschema.Validator:
    pointer = _pointer("paths", path, "post", "requestBody", "content", "application/json", "schema")
    return validator(specs, name, pointer)


def response_schema(
    specs: dict[str, dict[str, Any]], name: str, path: str, method: str
) -> jsonschema.Validator:
    pointer = _pointer("paths", path, method, "responses", "200", "content", "application/json", "schema")
    return validator(specs, name, pointer)


class Wire:
    """Answers every request with one response and keeps the bodies sent."""

    def __init__(self, status: int = 200, body: Any = None) -> None:
        self.status, self.answer = status, orjson.dumps({} if body is None else body)
        self.bodies: list[Any] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(orjson.loads(request.content) if request.content else None)
        return httpx.Response(self.status, content=self.answer)

    def client(self) -> CodatClient:
        no_retries = CodatRetryPolicy(max_attempts=1)
        transport = httpx.MockTransport(self)
        return CodatClient("https://api.codat.test", API_KEY, transport=transport, retry=no_retries)


# -- realistic records (FACTS §2), every field the spec knows, nulls where it allows them ----------

ORDER = {
    "id": "ord-1001", "orderNumber": "1001", "country": "GBR", "currency": "GBP",
    "createdDate": "2024-05-01T09:15:00Z", "closedDate": None, "modifiedDate": "2024-05-01T09:20:00Z",
    "sourceModifiedDate": "2024-05-01T09:19:58.123Z", "totalAmount": 24.0, "totalRefund": 0,
    "totalTaxAmount": 4.0, "totalDiscount": 1.0, "totalGratuity": 0.5,
    "orderLineItems": [{
        "id": "li-1", "quantity": 2, "taxPercentage": 20, "totalAmount": 20.0, "totalTaxAmount": 4.0,
        "unitPrice": 10.0, "productRef": {"id": "sku-9", "name": "Flat white"},
        "productVariantRef": {"id": "sku-9-oat", "name": None},
        "discountAllocations": [{"name": "Loyalty", "totalAmount": 1.0}],
    }],
    "payments": [{"id": "pay-1", "amount": 24.0, "currency": "GBP", "type": "Card", "status": "Paid",
                  "paymentProvider": "Stripe", "dueDate": None, "createdDate": "2024-05-01T09:16:00Z",
                  "modifiedDate": None, "sourceModifiedDate": "2024-05-01T09:16:00+01:00"}],
    "serviceCharges": [{"description": "Table service", "totalAmount": 2.0, "taxPercentage": 20,
                        "taxAmount": 0.4, "quantity": 1, "type": "Generic"}],
    "locationRef": {"id": "loc-1", "name": "High Street"},
    "customerRef": {"id": "cus-7", "name": None},
}  # fmt: skip
PAYMENT = {
    "id": "pay-1", "amount": 24.0, "currency": "GBP", "type": "OnlineCard", "status": "Authorized",
    "paymentProvider": "Adyen", "dueDate": "2024-05-08T00:00:00Z", "createdDate": "2024-05-01T09:16:00Z",
    "modifiedDate": "2024-05-01T09:16:00Z", "sourceModifiedDate": None,
}  # fmt: skip
TRANSACTION = {
    "id": "txn-1", "totalAmount": -0.35, "currency": "GBP", "type": "PaymentFee", "subType": "card-fee",
    "transactionSourceRef": {"id": "pay-1", "type": "Payment"}, "createdDate": "2024-05-01T09:16:00Z",
    "modifiedDate": None, "sourceModifiedDate": "2024-05-01T09:16:00Z",
}  # fmt: skip
DELETE = {"id": "ord-0999"}  # FACTS §2 rule 8: a sparse object is a delete

PUSHES = [
    ("commerce-orders", "orders", [ORDER, DELETE]),
    ("commerce-payments", "payments", [PAYMENT, DELETE]),
    ("commerce-transactions", "transactions", [TRANSACTION, DELETE]),
]


@pytest.mark.parametrize(("data_type", "key", "records"), PUSHES, ids=[p[0] for p in PUSHES])
async def test_push_bodies_validate_against_the_spec(
    specs: dict[str, dict[str, Any]], data_type: str, key: str, records: list[dict[str, Any]]
) -> None:
    """Orders, payments and transactions pushes, deletes included, are what the spec's requestBody allows."""
    path = f"/data/companies/{{companyId}}/sync/{data_type}"
    wire = Wire(body={"data": {key: records}, "datasetId": DATASET})
    async with wire.client() as client:
        result = await client.push_records(COMPANY, data_type, records, idempotency_key="k")
        await client.push_records_json(COMPANY, data_type, orjson.dumps(records), idempotency_key="k")
    assert wire.bodies[0] == wire.bodies[1] == {key: records}
    request_schema(specs, PUSH_SPEC, path).validate(wire.bodies[0])
    response_schema(specs, PUSH_SPEC, path, "post").validate(orjson.loads(wire.answer))  # the sample is real
    assert result.dataset_id == DATASET


@pytest.mark.parametrize(
    ("record", "data_type"),
    [
        ({**ORDER, "tip": 1}, "commerce-orders"),
        ({**PAYMENT, "type": "Cheque"}, "commerce-payments"),
        ({**TRANSACTION, "createdDate": "2024-05-01"}, "commerce-transactions"),
    ],
    ids=["extra-field", "bad-enum", "date-without-time"],
)
def test_the_schemas_have_teeth(
    specs: dict[str, dict[str, Any]], record: dict[str, Any], data_type: str
) -> None:
    """The validators used above do reject what Codat would reject, so passing them means something."""
    key = data_type.removeprefix("commerce-")
    schema = request_schema(specs, PUSH_SPEC, f"/data/companies/{{companyId}}/sync/{data_type}")
    with pytest.raises(jsonschema.ValidationError):
        schema.validate({key: [record]})


@pytest.mark.parametrize("spec", [PUSH_SPEC, CURRENT_SPEC])
async def test_sync_latest_bodies_validate(specs: dict[str, dict[str, Any]], spec: str) -> None:
    """`{"syncTo": …}` and the empty `{}` both fit the sync-latest requestBody of either spec."""
    summary = specs[CURRENT_SPEC]["components"]["schemas"]["SyncStatus"]["x-examples"]["4200"]
    wire = Wire(body=summary)
    async with wire.client() as client:
        answer = await client.sync_latest(COMPANY, datetime(2024, 5, 1, 23, 59, tzinfo=UTC))
        await client.sync_latest(COMPANY, None)
    schema = request_schema(specs, spec, "/companies/{companyId}/sync/commerce/latest")
    for body in wire.bodies:
        schema.validate(body)
    assert wire.bodies == [{"syncTo": "2024-05-01T23:59:00Z"}, {}]
    assert answer == summary  # relayed untouched


async def test_sync_historic_body_validates(specs: dict[str, dict[str, Any]]) -> None:
    """The historic body is the spec's `SyncRange` (`dateRange.start/finish`), not the docs' `start/end`."""
    wire = Wire()
    async with wire.client() as client:
        await client.sync_historic(
            COMPANY, datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 3, 31, tzinfo=UTC)
        )
    request_schema(specs, CURRENT_SPEC, "/meta/companies/{companyId}/sync/commerce/historic").validate(
        wire.bodies[0]
    )
    with pytest.raises(jsonschema.ValidationError):
        validator(specs, CURRENT_SPEC, "components/schemas/SyncRange").validate({"start": "x", "end": "y"})


# -- Codat's own examples parse -------------------------------------------------------------------


def test_pull_operation_examples_parse_as_datasets(specs: dict[str, dict[str, Any]]) -> None:
    """The Platform API's `PullOperation` examples become `Dataset`s with every field read."""
    schema = specs[PLATFORM_SPEC]["components"]["schemas"]["PullOperation"]
    assert schema["properties"]["status"]["enum"] == list(DATASET_STATUSES)
    for example in schema["examples"]:
        dataset = Dataset.model_validate(example)
        assert dataset.id == example["id"] and dataset.status == example["status"]
        assert dataset.company_id == example["companyId"] and dataset.progress == example["progress"]
        assert dataset.status_description == example.get("statusDescription")
        assert dataset.requested is not None and dataset.is_completed is example["isCompleted"]


def test_sync_status_examples_parse(specs: dict[str, dict[str, Any]]) -> None:
    """Every sync-status example in the current spec parses; the `"4200,"` code is read as 4200."""
    schemas = specs[CURRENT_SPEC]["components"]["schemas"]
    examples = [
        *schemas["SyncStatus"]["x-examples"].values(),
        *schemas["CompanySyncStatus"]["x-examples"].values(),
    ]
    parsed = [SyncStatus.model_validate(example) for example in examples]
    assert [s.sync_status_code for s in parsed] == [4200, 2000, 2040]
    assert parsed[0].meaning == "map error" and parsed[0].sync_utc is not None
    assert len(parsed[0].data_connections or []) == 2
    assert parsed[0].model_extra == {}  # every field of the example is a modelled one


def _error_examples(specs: dict[str, dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    statuses = {
        "BadRequest": 400, "Malformed-Query": 400, "Unauthorized": 401, "Payment-Required": 402,
        "Forbidden": 403, "Not-Found": 404, "Conflict": 409, "Too-Many-Requests": 429,
        "Internal-Server-Error": 500, "Service-Unavailable": 503,
    }  # fmt: skip
    found = []
    for name, response in specs[CURRENT_SPEC]["components"]["responses"].items():
        for example in response["content"]["application/json"].get("examples", {}).values():
            found.append((statuses[name], example["value"]))
    return found


async def test_codats_error_examples_become_typed_errors(specs: dict[str, dict[str, Any]]) -> None:
    """Each of the spec's error examples, answered with its status, raises the right class with its fields."""
    examples = _error_examples(specs)
    assert len(examples) >= 10
    for status, body in examples:
        async with Wire(status, body).client() as client:
            with pytest.raises(CodatError) as caught:
                await client.get_dataset(COMPANY, DATASET)
        err = caught.value
        assert type(err) is error_class_for(status)
        # The HTTP status wins: the spec's 402 example says `statusCode: 429` in its body.
        assert err.status_code == status and err.error == body["error"] and err.service == body["service"]
        assert err.correlation_id == body["correlationId"] and err.can_be_retried == body["canBeRetried"]
        assert isinstance(err, CodatRateLimited) is (status == 429)
