"""Record validation against Codat's push schema, deletes, canonical JSON and content hashes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.records import canonical, content_hash, validate_records
from tests.specs import load_spec
from tests.test_codat_contract import PUSH_SPEC, request_schema


def order(**fields: Any) -> dict[str, Any]:
    return {"id": "o-1", "orderNumber": "1001", "currency": "GBP", "totalAmount": 12.5,
            "createdDate": "2025-06-01T09:00:00Z", **fields}  # fmt: skip


FULL_ORDER = order(
    country="GB", closedDate=None, modifiedDate="2025-06-01T09:00:00.1234567Z",
    sourceModifiedDate="2025-06-01T10:00:00+02:00",
    totalRefund=0, totalTaxAmount=2.08, totalDiscount=0, totalGratuity=1,
    orderLineItems=[{"id": "li-1", "quantity": 2, "unitPrice": 5.0, "totalAmount": 10, "taxPercentage": 20,
                     "totalTaxAmount": 1.67, "productRef": {"id": "p-1", "name": None},
                     "productVariantRef": {"id": "v-1"}, "discountAllocations": [{"name": "x", "totalAmount": 1}]}],
    payments=[{"id": "pay-1", "amount": 12.5, "type": "Card", "status": "Paid", "dueDate": None}],
    serviceCharges=[{"description": "delivery", "totalAmount": 2, "quantity": 1, "type": "Shipping"}],
    locationRef={"id": "loc-1", "name": "Shop"}, customerRef={"id": "cu-1"},
)  # fmt: skip
PAYMENT = {"id": "pay-1", "amount": 3, "currency": "GBP", "type": "Cash", "status": "Paid", "paymentProvider": None,
           "dueDate": "2025-06-01T00:00:00Z", "createdDate": "2025-06-01T00:00:00Z"}  # fmt: skip
TRANSACTION = {"id": "t-1", "totalAmount": -1.5, "currency": "GBP", "type": "PaymentFee", "subType": "fee",
               "transactionSourceRef": {"id": "pay-1", "type": "Payment"},
               "createdDate": "2025-06-01T00:00:00Z"}  # fmt: skip


@pytest.mark.parametrize(
    ("data_type", "record"),
    [("commerce-orders", FULL_ORDER), ("commerce-payments", PAYMENT), ("commerce-transactions", TRANSACTION)],
)
def test_every_field_of_the_spec_is_accepted(data_type: str, record: dict[str, Any]) -> None:
    """Records using every field Codat's schema defines validate, and are stored exactly as sent."""
    valid, errors = validate_records(data_type, [record])
    assert errors == []
    assert valid[0].body == canonical(record) and not valid[0].is_delete


@pytest.mark.parametrize(
    ("record", "field", "message"),
    [
        (order(colour="red"), "colour", "unknown field"),
        (order(orderLineItems=[{"quantity": 1, "sku": "x"}]), "orderLineItems[0].sku", "unknown field"),
        (order(locationRef={"id": "l", "city": "x"}), "locationRef.city", "unknown field"),
        (order(totalAmount="12.5"), "totalAmount", "valid number"),
        (order(totalAmount=None), "totalAmount", "valid number"),
        (order(createdDate="yesterday"), "createdDate", "RFC 3339"),
        (order(payments=[{"type": "Cheque"}]), "payments[0].type", "Input should be"),
        (order(serviceCharges=[{"quantity": 1.5}]), "serviceCharges[0].quantity", "integer"),
        (order(orderNumber=1001), "orderNumber", "valid string"),
        (order(id=""), "id", "at least 1 character"),
        ({"totalAmount": 1}, "id", "Field required"),
    ],
)
def test_invalid_records_are_named_by_index_id_and_field(record: dict[str, Any], field: str, message: str) -> None:
    """Each error says which record (index and id) and which field, with a readable message."""
    _, errors = validate_records("commerce-orders", [order(id="fine"), record])
    assert len(errors) == 1, errors
    error = errors[0]
    assert error["index"] == 1 and error["field"] == field and message in error["message"]
    assert error["id"] == (record.get("id") if isinstance(record.get("id"), str) else None)


def test_all_errors_of_a_request_are_reported() -> None:
    """Validation does not stop at the first bad record: the 422 lists every problem."""
    _, errors = validate_records("commerce-payments", [{"id": "a", "amount": "x"}, 7, {"id": "b", "type": "Nope"}])
    assert [(e["index"], e["id"]) for e in errors] == [(0, "a"), (1, None), (2, "b")]
    assert errors[1]["message"] == "a record must be a JSON object"


def test_a_record_holding_only_its_id_is_a_delete() -> None:
    """`{"id": …}` alone is a delete; stored as exactly that sparse object."""
    valid, errors = validate_records("commerce-transactions", [{"id": "t-9"}])
    assert errors == [] and valid[0].is_delete and valid[0].body == b'{"id":"t-9"}'


def test_the_same_id_twice_in_one_request_is_refused() -> None:
    """Which of two versions in one request is newer is not ours to guess: 422 on the second."""
    _, errors = validate_records("commerce-orders", [order(), order(totalAmount=1)])
    assert errors == [{"index": 1, "id": "o-1", "field": "id", "message": "the same id appears twice in this request"}]


def test_hash_is_independent_of_key_order_and_sensitive_to_content() -> None:
    """Canonical JSON sorts keys, so the same content hashes the same however it was written."""
    a = canonical({"id": "1", "totalAmount": 2, "currency": "GBP"})
    b = canonical({"currency": "GBP", "totalAmount": 2, "id": "1"})
    assert a == b == b'{"currency":"GBP","id":"1","totalAmount":2}'
    assert content_hash(a) == content_hash(b) != content_hash(canonical({"id": "1", "totalAmount": 3}))


def test_record_ids_with_nul_are_refused_by_index_and_field() -> None:
    """An id the id rule refuses (NUL, `..`, a line break) is the client's error, reported like any other."""
    from service.records import validate_records

    _, errors = validate_records("commerce-orders", [{"id": "ok"}, {"id": "bad\x00id"}, {"id": ".."}, {"id": "a\nb"}])
    control = "may not hold control characters (NUL, line breaks, tabs, …)"
    assert [(e["index"], e["field"], e["message"]) for e in errors] == [
        (1, "id", control), (2, "id", "may not be . or .. (they change the meaning of a URL path)"), (3, "id", control)]


ACCEPTED_DATE_TIMES = [
    "2025-06-01T10:00:00Z", "2025-06-01T10:00:00.1Z", "2025-06-01T10:00:00.1234567Z", "2024-02-29T23:59:59Z",
    "2025-06-01T10:00:00+05:30", "2025-06-01T10:00:00-08:00", "2025-06-01T00:00:00.000+00:00",
]  # fmt: skip
REFUSED_DATE_TIMES = [
    "2025-06-01",  # a date alone
    "20250601T100000Z",  # ISO 8601 basic format
    "2025-06-01 10:00:00Z",  # a space for the T
    "2025-W01-1",  # a week date
    "2025-152",  # an ordinal date
    "2025-06-01T10:00:00",  # no zone: local to whom?
    "2025-06-01T10:00Z",  # no seconds
    "2025-06-01T10Z",
    "2025-06-01T10:00:00+0200",  # an offset without its colon
    "2025-06-01T10:00:00+02",
    "2025-06-01t10:00:00z",  # lower-case separators
    "2025-13-01T00:00:00Z", "2025-02-29T00:00:00Z", "2025-06-31T00:00:00Z", "2025-06-01T24:00:00Z",
    "2025-06-01T10:60:00Z", "2025-06-01T23:59:60Z", "2025-06-01T10:00:00+24:00", "2025-06-01T10:00:00+02:60",
    "0000-01-01T00:00:00Z",
    "\uff12\uff10\uff12\uff15-06-01T10:00:00Z",  # full-width digits: \\d would match them without re.ASCII
    "2025-06-01T10:00:00.Z", "2025-06-01T10:00:00Z ", " 2025-06-01T10:00:00Z", "2025-06-01T10:00:00ZZ",
]  # fmt: skip


@pytest.mark.parametrize("value", ACCEPTED_DATE_TIMES)
def test_rfc3339_date_times_are_accepted_as_written(value: str) -> None:
    """A full RFC 3339 date-time with a zone is accepted and stored exactly as the merchant wrote it."""
    valid, errors = validate_records("commerce-payments", [{**PAYMENT, "dueDate": value}])
    assert errors == [] and f'"dueDate":"{value}"'.encode() in valid[0].body


@pytest.mark.parametrize("value", REFUSED_DATE_TIMES)
def test_anything_else_is_refused_naming_the_field(value: str) -> None:
    """Dates Python or ISO 8601 would take but RFC 3339 (the push spec's `date-time`) would not are a 422."""
    _, errors = validate_records("commerce-orders", [order(closedDate=value)])
    assert [(e["field"], e["message"].split(":")[0]) for e in errors] == [("closedDate", "not an RFC 3339 date-time")]


NEAR_DATE_TIMES = st.from_regex(
    r"\A[0-9]{4}-[0-9]{1,2}-[0-9]{1,3}[Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2})?(\.[0-9]{0,12})?"
    r"(Z|z|[+-][0-9]{2}:?[0-9]{2})?\Z",
)
ORDERS_PATH = "/data/companies/{companyId}/sync/commerce-orders"


@pytest.fixture(scope="module")
def order_schema() -> Any:
    return request_schema({PUSH_SPEC: load_spec(PUSH_SPEC)}, PUSH_SPEC, ORDERS_PATH)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(NEAR_DATE_TIMES, st.sampled_from(ACCEPTED_DATE_TIMES + REFUSED_DATE_TIMES),
                       st.text(max_size=40)))  # fmt: skip
def test_every_date_time_intake_accepts_validates_against_codats_push_spec(order_schema: Any, value: str) -> None:
    """Whatever intake lets through as a date-time, the push spec's `format: date-time` (RFC 3339) accepts too."""
    record = order(createdDate=value, closedDate=value, modifiedDate=value, sourceModifiedDate=value)
    valid, _ = validate_records("commerce-orders", [record])
    if valid:
        order_schema.validate({"orders": [record]})


def test_the_spec_check_refuses_what_intake_refuses(order_schema: Any) -> None:
    """The spec validator has teeth for dates: a zoneless date-time and a date alone fail it too."""
    import jsonschema

    for value in ("2025-06-01T10:00:00", "2025-06-01"):
        with pytest.raises(jsonschema.ValidationError):
            order_schema.validate({"orders": [order(createdDate=value)]})
