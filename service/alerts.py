"""Parse the three shapes Codat has sent (FACTS.md §4) into one normalised `Alert`.

Liberal on purpose: an authenticated JSON object with a delivery id is always kept. When it fits no
known shape, or its fields have unexpected types, it becomes kind `other` so it can be replayed once a
newer codat-relay understands it.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from service.errors import MalformedPayload
from service.ids import id_problem
from service.types import Alert, AlertKind, DataTypeStatus, Issue, RateLimit, Shape

MAX_ID_LENGTH = 255
# How far past its arrival an event's `generatedDate` may claim to be (clock skew between Codat and us).
# Connection events are ordered per company by that time, so an unbounded one (2099) would make every
# later genuine event of the company look stale: it is clamped to the receive time plus this.
ORDERING_SKEW_S = 60.0
MAX_MESSAGE_LENGTH = 4000  # an issue's message is prose, kept in the alert's JSON, not a 255-wide column

# Keys are event names folded by `fold_type` below, so "Data Sync Status Changed To Error",
# "DataSyncStatusChangedToError" and "data sync status changed to error " all meet in one row.
LEGACY_KINDS: dict[str, AlertKind] = {
    "datasyncstatuschangedtoerror": AlertKind.DATASET_STATUS,
    "datasynccompleted": AlertKind.DATASET_STATUS,
    "datasetdatachanged": AlertKind.DATASET_STATUS,
    "syncconnectiondeleted": AlertKind.CONNECTION_DELETED,
    "synccompleted": AlertKind.SYNC_COMPLETED,
    "syncfailed": AlertKind.SYNC_COMPLETED,
    "newcompanysynchronized": AlertKind.SYNC_COMPLETED,
    "pushoperationstatuschanged": AlertKind.PUSH_OPERATION,
    "pushoperationtimedout": AlertKind.PUSH_OPERATION,
    "dataconnectionstatuschanged": AlertKind.CONNECTION_STATUS,
}

ENVELOPE_KINDS: dict[str, AlertKind] = {
    "read.completed": AlertKind.DATASET_STATUS,
    "read.completed.initial": AlertKind.DATASET_STATUS,
    "connection.deleted": AlertKind.CONNECTION_DELETED,
    "connection.created": AlertKind.CONNECTION_STATUS,
    "connection.connected": AlertKind.CONNECTION_STATUS,
    "connection.reconnected": AlertKind.CONNECTION_STATUS,
    "connection.disconnected": AlertKind.CONNECTION_STATUS,
    "connection.failed": AlertKind.CONNECTION_STATUS,
    "company.deleted": AlertKind.COMPANY_DELETED,  # the company's data is purged (handlers/company.py)
}
# The event types a webhook consumer of this relay subscribes to (`codat-relay subscribe`, `doctor`): every
# envelope type above, the company and rate-limit events the parser reads (company id, quota), and nothing
# else. Codat's consumers take exact names, no wildcards (docs/using-the-api/webhooks/event-types.md lists
# each), so `connection.*` is spelt out. `{dataType}.write.*` answer Codat's write APIs, which the relay
# does not call: not subscribed.
SUBSCRIBED_EVENT_TYPES: tuple[str, ...] = (
    *(event for event in ENVELOPE_KINDS if event != "company.deleted"), "company.deleted",
    "client.rateLimit.reached", "client.rateLimit.reset",
)  # fmt: skip
# `{dataType}.write.successful|unsuccessful`: the data type is the event name's first part.
WRITE_EVENT = re.compile(r"^([A-Za-z][A-Za-z-]*)\.write\.(successful|unsuccessful)$")
COMPANY_EVENT = "company."  # company.created|deleted, company.product.*: the payload is the company itself
RATE_LIMIT_EVENT = "client.ratelimit."
RATE_LIMIT_KINDS = frozenset({"client.ratelimit.reached", "client.ratelimit.reset"})
_FOLD = re.compile(r"[^a-z0-9]")


def fold_type(raw: str) -> str:
    """Case, spaces, punctuation and the British spelling do not change what an event is."""
    return _FOLD.sub("", raw.lower()).replace("synchronised", "synchronized")


def delivery_id(obj: dict[str, Any], header_id: str | None) -> str:
    """`webhook-id`/`svix-id` header, else the body's `id`, else `AlertId` (CONTRACT.md)."""
    for candidate in (header_id, obj.get("id"), obj.get("AlertId")):
        if isinstance(candidate, bool) or candidate is None:
            continue
        if isinstance(candidate, int | str):
            value = str(candidate).strip()
            if value and (problem := id_problem(value)) is not None:
                raise MalformedPayload(f"delivery id {problem}")
            if value and len(value) <= MAX_ID_LENGTH:
                return value
            if len(value) > MAX_ID_LENGTH:
                raise MalformedPayload(f"delivery id longer than {MAX_ID_LENGTH} characters")
    raise MalformedPayload("no delivery id (webhook-id header, id or AlertId)")


def ordering_time(generated_at: float | None, received_at: float | None, *, signed: bool) -> float | None:
    """The time a delivery received at `received_at` may be ordered by: its `generatedDate` only if the
    body was signed (the legacy `Authorization` path signs nothing, so anyone holding that header could
    claim any time), and never later than `received_at` + ORDERING_SKEW_S. None makes the event timeless,
    checked against Codat's present. With no `received_at` (an alert built outside intake) it is as claimed."""
    if received_at is None or generated_at is None:
        return generated_at
    return min(generated_at, received_at + ORDERING_SKEW_S) if signed else None


def parse_alert(
    obj: dict[str, Any], body: bytes, *, header_id: str | None, signed: bool, received_at: float | None = None
) -> Alert:
    """`received_at` bounds the event's ordering time (see `ordering_time`); None only where no delivery
    is being received (tests building alerts, which then keep the time they claim)."""
    alert_id = delivery_id(obj, header_id)
    try:
        if "RuleType" in obj or "AlertId" in obj:
            return _parse_legacy(obj, alert_id, body, signed)
        if "eventType" in obj or ("type" in obj and "payload" in obj):
            return _parse_envelope(obj, alert_id, body, received_at, signed)
    except (TypeError, ValueError, AttributeError):
        pass
    raw_type = obj.get("eventType") or obj.get("type") or obj.get("RuleType")
    shown_type = raw_type.replace("\x00", "")[:MAX_ID_LENGTH] if isinstance(raw_type, str) else ""
    return Alert(
        delivery_id=alert_id,
        kind=AlertKind.OTHER,
        type=shown_type.strip() or "unknown",
        shape=Shape.UNKNOWN,
        body=body,
    )


def parsed_fields(alert: Alert) -> dict[str, Any]:
    """The `alerts` columns the parser decides (stored at intake, rewritten when a replay re-parses)."""
    return {
        "kind": alert.kind.value,
        "type": alert.type,
        "shape": alert.shape.value,
        "company_id": alert.company_id,
        "connection_id": alert.connection_id,
        "dataset_id": alert.dataset_id,
        "dataset_status": alert.dataset_status,
        "data_types": [entry.model_dump() for entry in alert.data_types],
        "generated_at": alert.generated_at,
    }


def reparse(stored_id: str, shape: str, body: bytes, received_at: float | None = None) -> Alert | None:
    """A stored delivery parsed again by this codat-relay (its id kept); None if it no longer parses.

    Whether it was signed only names the legacy shape; an `unknown` one is taken as unsigned. An envelope
    says nothing of how it was authenticated: the caller keeps the ordering time decided on arrival.
    """
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    signed = shape in (Shape.LEGACY_SIGNED.value, Shape.ENVELOPE.value)
    try:
        return parse_alert(obj, body, header_id=stored_id, signed=signed, received_at=received_at)
    except MalformedPayload:
        return None


def _parse_legacy(obj: dict[str, Any], alert_id: str, body: bytes, signed: bool) -> Alert:
    raw_type = _text(obj.get("RuleType")) or ""
    data = obj.get("Data") or {}
    if not isinstance(data, dict):
        raise TypeError("Data is not an object")
    entry = DataTypeStatus(
        data_type=_text(data.get("dataType")),
        status=_text(data.get("datasetStatus") or data.get("status") or data.get("newStatus")),
        dataset_id=_id(data.get("datasetId")),
        connection_id=_id(data.get("dataConnectionId")),
    )
    return Alert(
        delivery_id=alert_id,
        kind=LEGACY_KINDS.get(fold_type(raw_type), AlertKind.OTHER),
        type=raw_type,
        shape=Shape.LEGACY_SIGNED if signed else Shape.LEGACY,
        company_id=_id(obj.get("CompanyId")),
        connection_id=_id(obj.get("DataConnectionId")) or entry.connection_id,
        data_types=(entry,) if any(entry.model_dump().values()) else (),
        body=body,
    )


def _parse_envelope(obj: dict[str, Any], alert_id: str, body: bytes, received_at: float | None, signed: bool) -> Alert:
    # The ordering time is decided here rather than on a copy of the model afterwards: a pydantic
    # `model_copy` per delivery was measurable at intake.
    raw_type = _text(obj.get("eventType") or obj.get("type")) or ""
    event = raw_type.strip().lower()
    payload = obj.get("payload") or {}
    if not isinstance(payload, dict):
        raise TypeError("payload is not an object")
    company = payload.get("referenceCompany") or {}
    connection = payload.get("connection") or {}
    entries = tuple(_data_type_entry(item) for item in payload.get("dataTypes") or ())
    write = WRITE_EVENT.match(raw_type.strip())
    if write is not None:
        # {dataType}.write.*: the data type is in the name; status and connection are the payload's own.
        entries = (DataTypeStatus(data_type=write.group(1), status=_text(payload.get("status")),
                                  connection_id=_id(payload.get("connectionId"))),)  # fmt: skip
    kind = ENVELOPE_KINDS.get(event)
    if kind is None and event in RATE_LIMIT_KINDS:
        kind = AlertKind.RATE_LIMIT
    if kind is None:
        kind = AlertKind.PUSH_OPERATION if write is not None else AlertKind.OTHER
    company_id = _id(company.get("id")) or _id(payload.get("companyId"))
    if company_id is None and event.startswith(COMPANY_EVENT):
        company_id = _id(payload.get("id"))  # CompanyWebhook: the payload is the company, no referenceCompany
    connection_id = _id(connection.get("id")) or next((e.connection_id for e in entries if e.connection_id), None)
    return Alert(
        delivery_id=alert_id,
        kind=kind,
        type=raw_type,
        shape=Shape.ENVELOPE,
        company_id=company_id,
        connection_id=connection_id,
        data_types=entries,
        generated_at=ordering_time(_timestamp(obj.get("generatedDate")), received_at, signed=signed),
        rate_limit=_rate_limit(payload) if event.startswith(RATE_LIMIT_EVENT) else None,
        body=body,
    )


def _data_type_entry(item: dict[str, Any]) -> DataTypeStatus:
    issues = tuple(
        Issue(type=_text(issue.get("type")), message=_text(issue.get("message"), limit=MAX_MESSAGE_LENGTH))
        for issue in item.get("issues") or ()
    )
    return DataTypeStatus(
        data_type=_text(item.get("dataType")),
        status=_text(item.get("status")),
        dataset_id=_id(item.get("datasetId")),
        connection_id=_id(item.get("connectionId")),
        issues=issues,
    )


def rate_limit_of(body: bytes) -> RateLimit | None:
    """The quota a stored `client.rateLimit.*` envelope tells (its columns keep no quota), or None."""
    try:
        obj = json.loads(body)
        payload = obj.get("payload") if isinstance(obj, dict) else None
        return _rate_limit(payload) if isinstance(payload, dict) else None
    except (ValueError, TypeError):  # json.JSONDecodeError is a ValueError
        return None


def _rate_limit(payload: dict[str, Any]) -> RateLimit:
    try:
        expires_at = _timestamp(payload.get("expiryDate"))
    except ValueError:
        # Codat's own `client.rateLimit.reset` example says "2024-09-01T23:59:99Z": an unreadable expiry must
        # not cost the relay the event; the quota resets at 00:00 UTC (docs/using-the-api/rate-limits.md).
        expires_at = None
    return RateLimit(daily_quota=_int(payload.get("dailyQuota")), quota_remaining=_int(payload.get("quotaRemaining")),
                     expires_at=expires_at)  # fmt: skip


def _int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("expected an integer")
    return value


def _text(value: Any, limit: int = MAX_ID_LENGTH) -> str | None:
    """A string field, or None; any other JSON type is a shape we do not understand."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError("expected a string")
    if len(value) > limit or "\x00" in value:
        # Columns hold 255 characters and PostgreSQL text cannot hold NUL: keep such bodies as `other`.
        raise ValueError("string the database cannot hold as a field")
    return value.strip() or None


def _id(value: Any) -> str | None:
    """An id field (company, connection, dataset): a string the relay's id rule allows, else the body
    is a shape we do not understand (kept as `other`)."""
    text = _text(value)
    if text is not None and id_problem(text) is not None:
        raise ValueError("not an id")
    return text


def _timestamp(value: Any) -> float | None:
    text = _text(value)
    if text is None:
        return None
    stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    # Codat writes UTC; a stamp without a zone is read as UTC, never as this machine's local time.
    return (stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)).timestamp()
