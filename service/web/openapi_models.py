"""The schemas of /openapi.json that come from code: Codat's record models, and the company views.

Records are generated from service/records.py's pydantic models (the very ones intake validates with), so
a client generator gets `Order`, `Payment` and `Transaction` with every field, and the document can never
drift from what intake accepts. The samples are service/samples.py's, as the README's quickstart uses.
"""

from __future__ import annotations

from typing import Any

from service.health import PROBLEM_KINDS, RECORD_STATES
from service.records import MODELS
from service.samples import SAMPLE_COMPANY, SAMPLES

REF = "#/components/schemas/{model}"
# Path name of each data type → its model's schema name.
RECORD_SCHEMAS = {"orders": "Order", "payments": "Payment", "transactions": "Transaction"}
NULLABLE_STRING = {"type": ["string", "null"]}
INSTANT = {"type": ["string", "null"], "format": "date-time"}


def _tidy(node: Any) -> Any:
    """pydantic's schema, minus its generated titles and the `default: null` of fields that may be absent
    but never null (Codat's non-nullable fields): a default the type forbids would mislead generators."""
    if isinstance(node, dict):
        return {k: _tidy(v) for k, v in node.items()
                if k != "title" and not (k == "default" and v is None)}  # fmt: skip
    if isinstance(node, list):
        return [_tidy(v) for v in node]
    return node


def record_schemas() -> dict[str, Any]:
    """Order, Payment, Transaction and every nested object, as components."""
    out: dict[str, Any] = {}
    for model in MODELS.values():
        schema = model.model_json_schema(ref_template=REF, mode="validation")
        out.update({name: _tidy(nested) for name, nested in schema.pop("$defs", {}).items()})
        out[model.__name__] = _tidy(schema)
    for path_name, schema_name in RECORD_SCHEMAS.items():
        out[schema_name]["description"] = (
            f"Codat's `{schema_name}` push schema (Sync for Commerce); unknown fields are refused. "
            f"A record holding only `id` deletes it. Date-times are RFC 3339 with a zone."
        )
        out[schema_name]["examples"] = [SAMPLES[path_name]]
        out[f"{schema_name}Records"] = {
            "type": "object", "required": ["records"], "additionalProperties": False,
            "properties": {"records": {"type": "array", "maxItems": 5000,
                                       "items": {"$ref": REF.format(model=schema_name)}}},
        }  # fmt: skip
    return out


def records_body() -> dict[str, Any]:
    """The intake body: `{"records": [...]}` of the path's data type, with one example per data type."""
    return {"required": True, "content": {"application/json": {
        "schema": {"oneOf": [{"$ref": REF.format(model=f"{s}Records")} for s in RECORD_SCHEMAS.values()],
                   "description": "records of the path's data type: orders → Order, payments → Payment, "
                                  "transactions → Transaction"},
        "examples": {path_name: {"summary": f"one {schema_name.lower()} (dataType {path_name})",
                                 "value": {"records": [SAMPLES[path_name]]}}
                     for path_name, schema_name in RECORD_SCHEMAS.items()},
    }}}  # fmt: skip


def _counts(description: str) -> dict[str, Any]:
    return {"type": "object", "description": description,
            "properties": {s: {"type": "integer", "minimum": 0} for s in RECORD_STATES},
            "additionalProperties": {"type": "integer", "minimum": 0}}  # fmt: skip


CONNECTION = {"type": "object", "required": ["id", "status", "deletedAt"], "properties": {
    "id": NULLABLE_STRING, "status": {**NULLABLE_STRING, "description": "linked, unlinked, deleted, or null: unknown"},
    "deletedAt": {**INSTANT, "description": "when Codat said it was deleted; null again once reconnected"}}}
LAST_SYNC = {"type": "object", "required": ["code", "meaning", "at", "checkedAt"], "properties": {
    "code": {"type": ["integer", "null"], "description": "Codat's sync status code; null: no sync seen"},
    "meaning": NULLABLE_STRING, "at": INSTANT, "lastSuccessAt": INSTANT,
    "syncedThrough": {**INSTANT, "description": "where the successful syncs reach (the end of the latest range): "
                      "a `latest` sync starts here, and a record dated earlier that no sync took is late"},
    "checkedAt": {**INSTANT, "description": "when codat-relay last asked Codat (null: never)"}}}
SYNC_SCHEDULE = {"type": ["object", "null"], "description": "Codat's Sync for Commerce schedule of the company "
                 "(`GET /config/companies/{companyId}/sync/commerce`); null: not read yet",
                 "required": ["frequency", "syncHour", "timeZone", "startDate", "fetchedAt", "error"], "properties": {
    "frequency": {"type": ["string", "null"], "enum": ["Daily", "Monthly", None]},
    "syncHour": {"type": ["integer", "null"], "minimum": 0, "maximum": 23},
    "timeZone": {**NULLABLE_STRING, "description": "IANA time zone, e.g. America/New_York"},
    "startDate": INSTANT, "fetchedAt": {**INSTANT, "description": "when codat-relay last read it"},
    "error": {**NULLABLE_STRING, "description": "why there is no schedule (not configured, unreadable)"}}}
PROBLEM = {"type": "object", "required": ["kind", "message"],
           "properties": {"kind": {"enum": list(PROBLEM_KINDS)}, "message": {"type": "string"}}}
SUMMARY_PROPERTIES: dict[str, Any] = {
    "id": {"type": "string"},
    "name": {**NULLABLE_STRING, "description": "the company's name in Codat (null: not read yet)"},
    "known": {"enum": ["outbox", "alerts"], "description": "outbox: records or connection events made it a row; "
              "alerts: known only because alerts name it"},
    "paused": {"type": "boolean"}, "pauseReason": {**NULLABLE_STRING, "description": "manual, connection_deleted, …"},
    "connection": CONNECTION, "lastSync": LAST_SYNC,
    "failing": {"type": "boolean", "description": "a person should look: see problems"},
    "problems": {"type": "array", "items": PROBLEM}, "lastAlertAt": INSTANT,
    "nextSyncAt": {**INSTANT, "description": "when Codat next syncs the company, from its schedule (null: unknown)"},
    "syncSchedule": SYNC_SCHEDULE,
}  # fmt: skip
DATASET = {"type": "object", "required": ["id", "dataType", "status"], "properties": {
    "id": {"type": "string"}, "dataType": {"type": "string"}, "status": {"type": "string"},
    "errorMessage": NULLABLE_STRING, "records": {"type": ["integer", "null"]}, "pushId": NULLABLE_STRING,
    "requestedAt": INSTANT, "completedAt": INSTANT, "polls": {"type": ["integer", "null"]}}}


def company_schemas() -> dict[str, Any]:
    summary_required = ["id", "known", "paused", "connection", "lastSync", "records", "failing", "problems"]
    return {
        "CompanySummary": {"type": "object", "required": summary_required, "properties": {
            **SUMMARY_PROPERTIES, "records": _counts("records by state, all data types"),
            "updatedAt": INSTANT}},
        "CompanyList": {"type": "object", "required": ["results", "total", "nextCursor"], "properties": {
            "results": {"type": "array", "items": {"$ref": REF.format(model="CompanySummary")}},
            "total": {"type": "integer", "minimum": 0, "description": "companies matching the filters, all pages"},
            "nextCursor": {**NULLABLE_STRING, "description": "pass as `cursor` for the next page; null: last page"}}},
        "Company": {"type": "object", "required": [*summary_required, "openPushes", "recentDatasets"], "properties": {
            **SUMMARY_PROPERTIES,
            "records": {"type": "object", "description": "records by data type, then by state",
                        "additionalProperties": _counts("records of one data type by state")},
            "openPushes": {"type": "integer", "minimum": 0},
            "recentDatasets": {"type": "array", "items": DATASET},
            "createdAt": INSTANT, "updatedAt": INSTANT},
            "examples": [{"id": SAMPLE_COMPANY, "name": "Quickstart Coffee", "known": "outbox", "paused": False,
                          "pauseReason": None,
                          "connection": {"id": "5b7b1d4e-0c1f-4a53-9f1e-0d2b7c9a1e11", "status": "linked",
                                         "deletedAt": None},
                          "lastSync": {"code": 2000, "meaning": "success", "at": "2025-06-02T10:00:00Z",
                                       "lastSuccessAt": "2025-06-02T10:00:00Z", "syncedThrough": "2025-06-02T10:00:00Z",
                                       "checkedAt": "2025-06-02T10:01:00Z"},
                          "records": {"commerce-orders": dict.fromkeys(RECORD_STATES, 0) | {"synced": 1}},
                          "failing": False, "problems": [], "lastAlertAt": "2025-06-02T10:00:05Z", "openPushes": 0,
                          "recentDatasets": [], "createdAt": "2025-06-02T09:15:01Z",
                          "nextSyncAt": "2025-06-03T01:00:00Z",
                          "syncSchedule": {"frequency": "Daily", "syncHour": 2, "timeZone": "Europe/London",
                                           "startDate": "2025-05-01T00:00:00Z", "fetchedAt": "2025-06-02T09:15:30Z",
                                           "error": None},
                          "updatedAt": "2025-06-02T10:01:00Z"}]},
    }  # fmt: skip


def company_list_parameters() -> list[dict[str, Any]]:
    flag = {"type": "string", "enum": ["true", "false"]}
    return [
        {"name": "search", "in": "query", "description": "part of the company id or of its name in Codat, any case",
         "schema": {"type": "string", "maxLength": 255}},
        {"name": "failing", "in": "query", "description": "failing (true) or healthy (false) ones only",
         "schema": flag},
        {"name": "paused", "in": "query", "schema": flag},
        {"name": "problem", "in": "query", "schema": {"enum": list(PROBLEM_KINDS)}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}},
        {"name": "cursor", "in": "query", "description": "the previous page's nextCursor",
         "schema": {"type": "string"}},
    ]  # fmt: skip
