"""Codat's rules for pushers (FACTS §2), as pure checks over one push and what the sandbox already holds.

Breaches are recorded, not enforced (except the 5,000-record limit, which Codat answers with 400): the
point of the sandbox is to show a pusher where it would have lost or duplicated a merchant's data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from service.sandbox.model import HeldRecord

MAX_PUSH_RECORDS = 5000

ERROR = "error"
WARNING = "warning"
# kind -> severity; the closed set of breach kinds the sandbox records.
BREACH_KINDS = {
    "concurrent_push": ERROR,  # rule 3: two pushes of one data type for one company at once
    "too_many_records": ERROR,  # rule 4: more than 5,000 records in one push
    "update_after_sync": ERROR,  # rule 7: an already-synchronised record changed (or deleted)
    "non_sparse_delete": ERROR,  # rule 8: a delete must hold only the id, not the id plus nulls
    "duplicate_record": WARNING,  # rules 1/6: an unchanged record pushed again
    "stale_update": WARNING,  # rule 9: content changed but sourceModifiedDate did not: Codat discards it
}

_ORDER = {
    "id", "orderNumber", "country", "currency", "createdDate", "closedDate", "modifiedDate",
    "sourceModifiedDate", "totalAmount", "totalRefund", "totalTaxAmount", "totalDiscount", "totalGratuity",
    "orderLineItems", "payments", "serviceCharges", "locationRef", "customerRef",
}  # fmt: skip
_PAYMENT = {
    "id", "amount", "currency", "type", "status", "paymentProvider", "dueDate", "createdDate",
    "modifiedDate", "sourceModifiedDate",
}  # fmt: skip
_TRANSACTION = {
    "id", "totalAmount", "currency", "type", "subType", "transactionSourceRef", "createdDate",
    "modifiedDate", "sourceModifiedDate",
}  # fmt: skip
RECORD_FIELDS = {"orders": _ORDER, "payments": _PAYMENT, "transactions": _TRANSACTION}


@dataclass(frozen=True)
class Finding:
    kind: str
    record_id: str
    detail: str

    @property
    def severity(self) -> str:
        return BREACH_KINDS[self.kind]


def validation_item(item_id: str | None, message: str) -> dict[str, Any]:
    return {"itemId": item_id, "message": message, "validatorName": "SandboxSchemaValidator"}


def validate_body(key: str, body: Any) -> list[dict[str, Any]]:
    """Codat-style validation errors for a push body (`additionalProperties: false` throughout)."""
    if not isinstance(body, dict):
        return [validation_item(None, "the body must be a JSON object")]
    errors = [
        validation_item(None, f"unknown property '{k}'") for k in body if k not in {key, "contractVersion"}
    ]
    records = body.get(key)
    if not isinstance(records, list):
        return [*errors, validation_item(None, f"'{key}' must be an array")]
    allowed = RECORD_FIELDS[key]
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            errors.append(validation_item(f"{key}[{index}]", "a record must be an object"))
            continue
        record_id = record.get("id")
        item_id = record_id if isinstance(record_id, str) and record_id else f"{key}[{index}]"
        if item_id != record_id:
            errors.append(validation_item(item_id, "a record needs a non-empty string id"))
        unknown = sorted(set(record) - allowed)
        if unknown:
            errors.append(validation_item(item_id, f"unknown properties {', '.join(unknown)}"))
    return errors


def is_delete(record: Mapping[str, Any]) -> bool:
    return set(record) == {"id"}


def is_non_sparse_delete(record: Mapping[str, Any]) -> bool:
    others = [value for key, value in record.items() if key != "id"]
    return bool(others) and all(value is None for value in others)


def check_records(records: list[dict[str, Any]], held: Callable[[str], HeldRecord | None]) -> list[Finding]:
    """Every per-record breach of one push, in order; later records see earlier ones of the same push."""
    findings: list[Finding] = []
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        record_id = str(record["id"])
        previous = held(record_id)
        if is_non_sparse_delete(record):
            findings.append(
                Finding("non_sparse_delete", record_id, "id plus only null fields; send {id} alone")
            )
        before = latest.get(record_id, previous.data if previous else None)
        if previous is not None and previous.synced and record_id not in latest:
            if record != previous.synced_data:
                what = "deleted" if is_delete(record) else "changed"
                findings.append(Finding("update_after_sync", record_id, f"{what} after it was synchronised"))
                latest[record_id] = record
                continue
        if before is not None and record == before:
            findings.append(Finding("duplicate_record", record_id, "pushed again unchanged"))
        elif before is not None and _same_source_modified(before, record):
            findings.append(
                Finding("stale_update", record_id, "content changed but sourceModifiedDate did not")
            )
        latest[record_id] = record
    return findings


def _same_source_modified(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    stamp = before.get("sourceModifiedDate")
    return stamp is not None and not is_delete(after) and after.get("sourceModifiedDate") == stamp
