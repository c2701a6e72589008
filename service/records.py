"""Commerce records as Codat's push schema defines them, validated strictly, stored as canonical JSON.

The models mirror `Order`, `Payment` and `Transaction` of the Sync for Commerce push spec
(`additionalProperties: false` throughout), so a record Codat would refuse is refused at intake, where the
merchant's platform can still fix it, not hours later in a failed dataset. Validation never transforms:
what is stored and pushed is the record as sent, with its keys sorted, so its hash is stable.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, WithJsonSchema
from pydantic import ValidationError as PydanticValidationError

from service.ids import id_problem

MAX_ID_CHARS = 255  # the records table's key column
MAX_STRING_CHARS = 16_384  # any string field of a record (README): far above real data, far below abuse
HASH_BYTES = 16

# Path name → Codat's data type; the short names are the ones merchants' platforms are told to use.
DATA_TYPES: dict[str, str] = {
    "orders": "commerce-orders",
    "payments": "commerce-payments",
    "transactions": "commerce-transactions",
    "commerce-orders": "commerce-orders",
    "commerce-payments": "commerce-payments",
    "commerce-transactions": "commerce-transactions",
}


# RFC 3339 `date-time`, the push spec's `format: date-time`: a full date, `T`, a time with seconds, any
# fraction, and a zone. A time without a zone is refused: Codat would read it as local to the business,
# and only the merchant's platform knows which zone it meant. ASCII digits only (`\d` would take others).
RFC3339_DATE_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:Z|[+-](\d{2}):(\d{2}))", re.ASCII
)


DATE_TIME_MESSAGE = "not an RFC 3339 date-time: YYYY-MM-DDTHH:MM:SS[.fff] and Z or ±HH:MM"


def _iso_datetime(value: str) -> str:
    """Checked, not converted: Codat gets the merchant's own spelling (7 fractional digits, offsets…)."""
    match = RFC3339_DATE_TIME.fullmatch(value)
    if match is None:
        raise ValueError(DATE_TIME_MESSAGE)
    year, month, day, hour, minute, second, offset_hours, offset_minutes = match.groups()
    try:
        # A real day and time: no 30 February, no 24:00, and no leap second (refused to stay on the safe side).
        datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
    except ValueError:
        raise ValueError(DATE_TIME_MESSAGE) from None
    if offset_hours is not None and (int(offset_hours) > 23 or int(offset_minutes) > 59):
        raise ValueError(DATE_TIME_MESSAGE)
    return value


# The JSON schema says what the validator checks, so /openapi.json's record schemas carry `format: date-time`.
DateTime = Annotated[
    StrictStr, AfterValidator(_iso_datetime), WithJsonSchema({"type": "string", "format": "date-time"})
]


def _an_id(value: str) -> str:
    # Ids are key columns and go into URLs: the relay's one id rule (service/ids.py), as the client's error.
    if (problem := id_problem(value)) is not None:
        raise ValueError(problem)
    return value


Id = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_CHARS), AfterValidator(_an_id)]
PaymentType = Literal[
    "Unknown", "Cash", "Card", "Invoice", "OnlineCard", "Swish", "Vipps", "Mobile", "StoreCredit", "Paypal",
    "Custom", "Prepaid",
]  # fmt: skip
PaymentStatus = Literal["Unknown", "Pending", "Authorized", "Paid", "Failed", "Cancelled"]
TransactionType = Literal[
    "Unknown", "Payment", "Refund", "Payout", "FailedPayout", "Transfer", "PaymentFee", "PaymentFeeRefund"
]
TransactionRefType = Literal["Unknown", "Fee", "Order", "Payment", "ServiceCharge"]
ServiceChargeType = Literal["Unknown", "Generic", "Shipping", "Overpayment"]


class Strict(BaseModel):
    # Field names are Codat's camelCase as sent: the models check records, they never re-serialise them.
    # Every string is capped: a record's longest real text (a note, an address) is a few KiB, and six
    # 10 MiB strings in one request were stored and answered 202 after a 489 MiB peak.
    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=MAX_STRING_CHARS)


class Ref(Strict):
    """`LocationRef`, `CustomerRef`, `ProductRef` (and the product variant ref): an id and a name."""

    id: StrictStr | None = None
    name: StrictStr | None = None


class DiscountAllocation(Strict):
    name: StrictStr | None = None
    totalAmount: StrictFloat | None = None


class OrderLineItem(Strict):
    id: StrictStr | None = None
    quantity: StrictFloat | None = None
    taxPercentage: StrictFloat | None = None
    totalAmount: StrictFloat | None = None
    totalTaxAmount: StrictFloat | None = None
    unitPrice: StrictFloat | None = None
    productRef: Ref | None = None
    productVariantRef: Ref | None = None
    discountAllocations: list[DiscountAllocation] | None = None


class PaymentRef(Strict):
    """A payment inside an order (`PaymentRef`): the same fields as `Payment`, all nullable."""

    id: StrictStr | None = None
    amount: StrictFloat | None = None
    currency: StrictStr | None = None
    type: PaymentType | None = None
    status: PaymentStatus | None = None
    paymentProvider: StrictStr | None = None
    dueDate: DateTime | None = None
    createdDate: DateTime | None = None
    modifiedDate: DateTime | None = None
    sourceModifiedDate: DateTime | None = None


class ServiceCharge(Strict):
    description: StrictStr | None = None
    totalAmount: StrictFloat | None = None
    taxPercentage: StrictFloat | None = None
    taxAmount: StrictFloat | None = None
    quantity: StrictInt | None = None
    type: ServiceChargeType | None = None


class TransactionSourceRef(Strict):
    id: StrictStr | None = None
    type: TransactionRefType | None = None


# Top-level records. Fields the spec marks non-nullable default to "absent" rather than accepting null:
# `Field(default=None)` with a non-Optional type makes an explicit null a validation error.
_ABSENT: Any = Field(default=None)


class Order(Strict):
    id: Id
    orderNumber: StrictStr | None = None
    country: StrictStr | None = None
    currency: StrictStr | None = None
    createdDate: DateTime = _ABSENT
    closedDate: DateTime | None = None
    modifiedDate: DateTime | None = None
    sourceModifiedDate: DateTime | None = None
    totalAmount: StrictFloat = _ABSENT
    totalRefund: StrictFloat = _ABSENT
    totalTaxAmount: StrictFloat = _ABSENT
    totalDiscount: StrictFloat = _ABSENT
    totalGratuity: StrictFloat = _ABSENT
    orderLineItems: list[OrderLineItem] | None = None
    payments: list[PaymentRef] | None = None
    serviceCharges: list[ServiceCharge] | None = None
    locationRef: Ref = _ABSENT
    customerRef: Ref = _ABSENT


class Payment(Strict):
    id: Id
    amount: StrictFloat = _ABSENT
    currency: StrictStr | None = None
    type: PaymentType = _ABSENT
    status: PaymentStatus = _ABSENT
    paymentProvider: StrictStr | None = None
    dueDate: DateTime = _ABSENT
    createdDate: DateTime = _ABSENT
    modifiedDate: DateTime | None = None
    sourceModifiedDate: DateTime | None = None


class Transaction(Strict):
    id: Id
    totalAmount: StrictFloat = _ABSENT
    currency: StrictStr | None = None
    type: TransactionType = _ABSENT
    subType: StrictStr | None = None
    transactionSourceRef: TransactionSourceRef = _ABSENT
    createdDate: DateTime = _ABSENT
    modifiedDate: DateTime | None = None
    sourceModifiedDate: DateTime | None = None


MODELS: dict[str, type[Strict]] = {
    "commerce-orders": Order,
    "commerce-payments": Payment,
    "commerce-transactions": Transaction,
}


@dataclass(frozen=True)
class Record:
    """One validated record, ready to store: canonical bytes and their hash."""

    id: str
    body: bytes
    content_hash: str
    is_delete: bool
    record_date: float | None = None  # `createdDate` in Unix seconds: what a sync's date range is matched on


def record_date(record: dict[str, Any]) -> float | None:
    """A record's `createdDate` as Unix seconds (already checked RFC 3339, so always with a zone), or None."""
    created = record.get("createdDate")
    if not isinstance(created, str):
        return None
    return datetime.fromisoformat(created).timestamp()


def canonical(record: dict[str, Any]) -> bytes:
    """The record as stored and pushed: compact JSON with sorted keys, so equal content hashes equally."""
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def content_hash(body: bytes) -> str:
    return hashlib.blake2b(body, digest_size=HASH_BYTES).hexdigest()


def is_delete(record: dict[str, Any]) -> bool:
    """Codat's delete: a sparse object holding only the id (FACTS §2 rule 8)."""
    return set(record) == {"id"}


def _error(index: int, record_id: Any, field: str | None, message: str) -> dict[str, Any]:
    return {"index": index, "id": record_id if isinstance(record_id, str) else None, "field": field,
            "message": message}  # fmt: skip


def _field_path(loc: Sequence[int | str]) -> str | None:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path or None


def _message(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown field: Codat's schema allows no other properties"
    if error["type"] == "value_error":
        return str(error["ctx"]["error"])  # our own validators' messages, without pydantic's prefix
    return str(error["msg"])


def validate_records(data_type: str, raw: Sequence[Any]) -> tuple[list[Record], list[dict[str, Any]]]:
    """Validate every record of one request; all errors are reported, each by index, id and field."""
    model = MODELS[data_type]
    records: list[Record] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            errors.append(_error(index, None, None, "a record must be a JSON object"))
            continue
        record_id = item.get("id")
        try:
            model.model_validate(item)
        except PydanticValidationError as exc:
            errors.extend(
                _error(index, record_id, _field_path(e["loc"]), _message(e))
                for e in exc.errors(include_url=False, include_input=False)
            )
            continue
        assert isinstance(record_id, str)  # `id` is required and a non-empty string
        if record_id in seen:
            # Which of two versions in one request is the latest is not ours to guess.
            errors.append(_error(index, record_id, "id", "the same id appears twice in this request"))
            continue
        seen.add(record_id)
        body = canonical(item)
        records.append(Record(record_id, body, content_hash(body), is_delete(item), record_date(item)))
    return records, errors
