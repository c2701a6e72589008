"""Codat's rules for pushers (FACTS §2), as pure checks over one push and what the sandbox already holds.

Breaches are recorded, not enforced (except the 5,000-record limit, which Codat answers with 400): the
point of the sandbox is to show a pusher where it would have lost or duplicated a merchant's data.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from service.sandbox.model import HeldRecord, parse_iso

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
    # docs/using-the-api/write-data/idempotency.md: "The Idempotency-Key header must be a unique GUID"
    # (what Codat answers otherwise is not documented, so the request goes ahead and is recorded).
    "idempotency_key_not_guid": ERROR,
}


@dataclass(frozen=True)
class Finding:
    kind: str
    record_id: str
    detail: str

    @property
    def severity(self) -> str:
        return BREACH_KINDS[self.kind]


def record_ids_missing(key: str, records: list[Any]) -> list[tuple[str, str]]:
    """(itemId, message) for records without a non-empty string id.

    The push spec leaves `id` optional; Codat's rules identify every record by it (rules 1, 8, 9), and the
    docs are silent on a record without one. The sandbox, which must track records, refuses it.
    """
    return [
        (f"{key}[{index}]", f"{key}[{index}].id: a record needs a non-empty string id")
        for index, record in enumerate(records)
        if not isinstance(record, dict) or not isinstance(record.get("id"), str) or not record["id"]
    ]


def covered(record: Mapping[str, Any], start: float, finish: float) -> bool:
    """Whether a sync of [start, finish) takes this record: by its `createdDate`; one without is taken.

    The docs say Sync for Commerce maps records "with a date later than the configured start date" and
    do not say which date: the sandbox reads `createdDate`. Half-open, so that consecutive `latest` syncs
    (each starting where the last ended) neither skip nor repeat a record.
    """
    created = record.get("createdDate")
    if not isinstance(created, str):
        return True
    try:
        moment = parse_iso(created)
    except ValueError:
        return True
    return start <= moment < finish


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


def is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
