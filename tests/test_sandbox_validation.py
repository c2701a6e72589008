"""Push and company bodies held to Codat's specs at every level, refused with Codat's 400 naming the field.

The push spec is `sync-commerce-2023-03-push-beta.json` (`/data/companies/{companyId}/sync/commerce-*`,
request bodies with `additionalProperties: false` at every level, `format: date-time`, enums); company
creation follows `sync-commerce-current.json` `CreateCompany`. The sandbox validates against a copy of
those specs shipped in its package, which must stay byte-identical to shared/codat/specs.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import pytest

from service.sandbox import schema
from tests.conftest import SPECS_DIR
from tests.specs import response_schema, spec_errors
from tests.test_sandbox import COMPANY, ORDERS, PAYMENTS, MakeHarness, make_harness, order

__all__ = ["make_harness"]  # the fixture is shared by import
TRANSACTIONS = f"/data/companies/{COMPANY}/sync/commerce-transactions"
CURRENT = "sync-commerce-current.json"


def test_the_vendored_specs_are_codats_own() -> None:
    """The specs the sandbox validates with are exactly shared/codat/specs (not an edited copy)."""
    for name in (schema.PUSH_SPEC, schema.SYNC_SPEC):
        shipped = resources.files("service.sandbox").joinpath("specs", name).read_bytes()
        assert shipped == (SPECS_DIR / name).read_bytes(), name


def _errors(answer: Any) -> list[tuple[str | None, str]]:
    body = answer.json()
    assert spec_errors(body, CURRENT, "/components/schemas/ErrorMessage") == []
    return [(e["itemId"], e["message"]) for e in body["validation"]["errors"]]


# (path, body, the itemId and the field every error must name); each row is a spec rule the push breaks.
BAD_PUSHES = [
    pytest.param(ORDERS, {"orders": [order("o-1") | {"totalAmount": "abc"}]}, "o-1", "orders[0].totalAmount",
                 id="number-as-text"),
    pytest.param(ORDERS, {"orders": [order("o-1") | {"createdDate": "not a date"}]}, "o-1", "orders[0].createdDate",
                 id="date-time-format"),
    pytest.param(ORDERS, {"orders": [order("o-1") | {"createdDate": "2026-01-01T10:00:00"}]}, "o-1",
                 "orders[0].createdDate", id="date-time-without-zone"),
    pytest.param(ORDERS, {"orders": [order("o-1") | {"colour": "red"}]}, "o-1", "orders[0]", id="unknown-field"),
    pytest.param(ORDERS, {"orders": [order("o-1") | {"locationRef": {"id": "l", "city": "York"}}]}, "o-1",
                 "orders[0].locationRef", id="unknown-nested-field"),
    pytest.param(ORDERS, {"orders": [order("o-1") | {"orderLineItems": [{"productRef": {"id": "p", "sku": 1}}]}]},
                 "o-1", "orders[0].orderLineItems[0].productRef", id="unknown-field-two-levels-down"),
    pytest.param(ORDERS, {"orders": [order("o-1") | {"payments": [{"id": "p", "type": "Cheque"}]}]}, "o-1",
                 "orders[0].payments[0].type", id="bad-enum-nested"),
    pytest.param(ORDERS, {"orders": [order("o-1") | {"serviceCharges": [{"quantity": 1.5}]}]}, "o-1",
                 "orders[0].serviceCharges[0].quantity", id="integer"),
    pytest.param(ORDERS, {"orders": [order("o-1") | {"totalAmount": None}]}, "o-1", "orders[0].totalAmount",
                 id="null-where-not-nullable"),
    pytest.param(ORDERS, {"orders": [order("o-1")], "shop": "York"}, None, "body", id="unknown-top-level-field"),
    pytest.param(ORDERS, {"orders": {"id": "o-1"}}, None, "orders", id="orders-not-an-array"),
    pytest.param(PAYMENTS, {"payments": [{"id": "p-1", "status": "Settled"}]}, "p-1", "payments[0].status",
                 id="payment-status-enum"),
    pytest.param(PAYMENTS, {"payments": [{"id": "p-1", "amount": "5"}]}, "p-1", "payments[0].amount",
                 id="payment-amount-type"),
    pytest.param(TRANSACTIONS, {"transactions": [{"id": "t-1", "transactionSourceRef": {"type": "Invoice"}}]},
                 "t-1", "transactions[0].transactionSourceRef.type", id="transaction-source-enum"),
    pytest.param(TRANSACTIONS, {"transactions": [{"id": "t-1", "type": "Sale"}]}, "t-1", "transactions[0].type",
                 id="transaction-type-enum"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "item_id", "field"), BAD_PUSHES)
async def test_a_push_breaking_the_push_spec_is_a_400_naming_the_field(
    make_harness: MakeHarness, path: str, body: dict[str, Any], item_id: str | None, field: str
) -> None:
    """sync-commerce-2023-03-push-beta.json: additionalProperties false, types, formats, enums, at every level."""
    h = await make_harness()
    answer = await h.client.post(path, json=body)
    assert answer.status_code == 400, answer.text
    errors = _errors(answer)
    assert errors and all(e[0] == item_id and e[1].startswith(f"{field}: ") for e in errors), errors
    assert (await h.get("/_sandbox/pushes"))["results"] == []


async def test_a_push_the_spec_allows_is_taken(make_harness: MakeHarness) -> None:
    """Nulls on the spec's `nullable` fields, offsets on date-times, nested objects and contractVersion pass."""
    h = await make_harness()
    full = order("o-1") | {
        "orderNumber": None, "country": "GB", "closedDate": None, "createdDate": "2026-01-01T10:00:00.1234567+01:00",
        "locationRef": {"id": "l-1", "name": None}, "customerRef": {"id": "c-1", "name": "Ann"},
        "orderLineItems": [{"id": "li-1", "quantity": 2, "unitPrice": 2.5, "productRef": {"id": "p-1", "name": "Tea"},
                            "discountAllocations": [{"name": "promo", "totalAmount": 0.5}]}],
        "payments": [{"id": "pay-1", "amount": 5, "type": "Card", "status": "Paid", "dueDate": None}],
        "serviceCharges": [{"description": "tip", "quantity": 1, "type": "Generic"}],
    }  # fmt: skip
    answer = await h.client.post(ORDERS, json={"orders": [full], "contractVersion": "1.0"})
    assert answer.status_code == 200, answer.text
    assert spec_errors({"orders": [full]}, schema.PUSH_SPEC, schema.PUSH_BODIES["commerce-orders"].pointer) == []


async def test_every_record_needs_an_id(make_harness: MakeHarness) -> None:
    """The spec leaves `id` optional; the docs identify records by it and say nothing of one without: 400."""
    h = await make_harness()
    answer = await h.client.post(ORDERS, json={"orders": [order("o-1"), {"totalAmount": 1.0}]})
    assert answer.status_code == 400
    assert _errors(answer) == [("orders[1]", "orders[1].id: a record needs a non-empty string id")]


@pytest.mark.parametrize(
    "body",
    [{}, {"name": ""}, {"name": "Bank <of> Dave"}, {"name": 7}, {"description": "no name"}, []],
    ids=["empty", "empty-name", "name-pattern", "name-type", "no-name", "not-an-object"],
)
async def test_create_company_holds_the_body_to_the_spec(make_harness: MakeHarness, body: Any) -> None:
    """POST /companies: `CreateCompany` requires a `name` of 1+ characters matching the spec's pattern."""
    h = await make_harness()
    answer = await h.client.post("/companies", json=body)
    assert answer.status_code == 400, answer.text
    assert spec_errors(answer.json(), CURRENT, response_schema(CURRENT, "/companies", "post", 400)) == []
    assert answer.json()["validation"]["errors"]
