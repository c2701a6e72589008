"""`GET /openapi.json`: the intake and admin API, written down (CONTRACT.md is the source)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service.companies import REPUSH_COUNTS_COLUMNS
from service.types import AlertKind, AlertStatus
from service.web.openapi_models import company_list_parameters, company_schemas, record_schemas, records_body
from service.web.responses import json_response

JSON = "application/json"
DATA_TYPES = ["orders", "payments", "transactions", "commerce-orders", "commerce-payments", "commerce-transactions"]


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def answer(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = {JSON: {"schema": schema}}
    return out


ERRORS = {
    "401": answer("missing or wrong bearer token", ref("Error")),
    "404": answer("unknown id", ref("Error")),
    "422": answer("invalid query or body, naming the field, or an id the id rule refuses", ref("Error")),
    "503": answer("storage or Codat unavailable; retry after Retry-After", ref("Error")),
}


def errors(*codes: str) -> dict[str, Any]:
    return {code: ERRORS[code] for code in codes}


def path_param(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "minLength": 1, **schema}}


COMPANY = path_param("companyId", "Codat company id")
ALERT = path_param("alertId", "delivery id")
RELAYED = answer("Codat's answer, relayed", {})
CODAT = {
    "502": answer("Codat refused codat-relay's key, or answered unexpectedly", ref("Error")),
    "503": ERRORS["503"],
}


def operation(summary: str, security: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    # An id in the path can break the id rule (`.`, `..`, control characters): that is a 422 everywhere.
    if any(p.get("in") == "path" and p.get("name") != "jobId" for p in extra.get("parameters", [])):
        responses = {"422": ERRORS["422"], **responses}  # an operation's own 422 (its body's errors) wins
    return {"summary": summary, "security": [{security: []}], "responses": responses, **extra}


def body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {JSON: {"schema": schema}}}


SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"],
              "properties": {"error": {"type": "string"}, "detail": {"type": "string"}}},
    "Alert": {
        "type": "object",
        "required": ["id", "kind", "type", "companyId", "status", "attempts", "receivedAt", "lastError"],
        "properties": {
            "id": {"type": "string"}, "kind": {"enum": [k.value for k in AlertKind]}, "type": {"type": "string"},
            "companyId": {"type": ["string", "null"]}, "status": {"enum": [s.value for s in AlertStatus]},
            "attempts": {"type": "integer", "minimum": 0}, "receivedAt": {"type": "string", "format": "date-time"},
            "lastError": {"type": ["string", "null"]},
        },
    },
    "AlertDetail": {"allOf": [ref("Alert"), {"type": "object", "required": ["body", "shape"], "properties": {
        "body": {"type": "string"}, "shape": {"type": "string"}, "connectionId": {"type": ["string", "null"]},
        "datasetId": {"type": ["string", "null"]}, "datasetStatus": {"type": ["string", "null"]},
        "dataTypes": {"type": "array"}, "generatedAt": {"type": ["string", "null"]},
        "updatedAt": {"type": ["string", "null"]}}}]},
    "IntakeResult": {
        "type": "object", "required": ["accepted", "unchanged", "deleted", "conflicts"],
        "properties": {
            "accepted": {"type": "integer", "minimum": 0}, "unchanged": {"type": "integer", "minimum": 0},
            "deleted": {"type": "integer", "minimum": 0},
            "conflicts": {"type": "array", "items": {"type": "object", "required": ["id", "reason"],
                                                      "properties": {"id": {"type": "string"},
                                                                     "reason": {"type": "string"}}}},
        },
    },
    "RecordErrors": {"type": "object", "required": ["errors"], "properties": {"errors": {"type": "array", "items": {
        "type": "object", "required": ["index", "message"],
        "properties": {"index": {"type": ["integer", "null"]}, "id": {}, "field": {"type": ["string", "null"]},
                       "message": {"type": "string"}}}}}},
    "PauseState": {"type": "object", "required": ["id", "paused"], "properties": {
        "id": {"type": "string"}, "paused": {"type": "boolean"}, "pauseReason": {"type": ["string", "null"]}}},
    "Job": {"type": "object", "required": ["id", "kind", "status", "attempts"], "properties": {
        "id": {"type": "integer"}, "kind": {"type": "string"}, "lockKey": {"type": ["string", "null"]},
        "status": {"type": "string"}, "attempts": {"type": "integer"}, "lastError": {"type": ["string", "null"]},
        "runAt": {"type": ["string", "null"]}, "createdAt": {"type": ["string", "null"]},
        "finishedAt": {"type": ["string", "null"]}, "payload": {"type": "object"}}},
    "Repush": {"type": "object", "required": ["id", "paused", "requeued", "skippedSynced", "byDataType"],
               "properties": {"id": {"type": "string"}, "paused": {"type": "boolean"},
                              **{n: {"type": "integer", "minimum": 0} for n in REPUSH_COUNTS_COLUMNS},
                              "byDataType": {"type": "object", "additionalProperties": {"type": "object"}}}},
    "Purge": {"type": "object", "required": ["companyId", "dryRun", "counts", "runningJobs", "purgeId"],
              "properties": {"companyId": {"type": "string"}, "dryRun": {"type": "boolean"},
                             "counts": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
                             "runningJobs": {"type": "integer", "minimum": 0},
                             "purgeId": {"type": ["integer", "null"]}}},
    "Queued": {"type": "object", "required": ["status", "id"],
               "properties": {"status": {"type": "string"}, "id": {}}},
    "ReplayRun": {"type": "object", "required": ["runId", "target", "filter", "done", "finished"], "properties": {
        "runId": {"type": "string"}, "target": {"enum": ["alerts", "jobs"]}, "filter": {"type": "object"},
        "done": {"type": "integer"}, "cursor": {"type": "object"}, "finished": {"type": "boolean"},
        "status": {"type": "string"}, "remaining": {"type": "integer"}}},
    "ReplayPreview": {"type": "object", "required": ["dryRun", "count", "sample"], "properties": {
        "dryRun": {"const": True}, "count": {"type": "integer"}, "sample": {"type": "array"},
        "filter": {"type": "object"}}},
    "Problem": {"type": "object", "required": ["id", "kind", "state", "subject", "count", "openedAt", "ageSeconds"],
                "properties": {
        "id": {"type": "string"}, "kind": {"type": "string"}, "state": {"enum": ["open", "acknowledged", "resolved"]},
        "companyId": {"type": ["string", "null"]}, "subject": {"type": "string"},
        "dataType": {"type": ["string", "null"]}, "summary": {"type": "string"}, "count": {"type": "integer"},
        "openedAt": {"type": "string"}, "lastSeenAt": {"type": "string"},
        "acknowledgedAt": {"type": ["string", "null"]}, "acknowledgedBy": {"type": ["string", "null"]},
        "resolvedAt": {"type": ["string", "null"]},
        "ageSeconds": {"type": "number", "description": "since it opened; until it resolved, for a resolved one"}}},
}


def paths() -> dict[str, Any]:
    limit = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}
    alert_filters = [
        {"name": "status", "in": "query", "schema": {"enum": [s.value for s in AlertStatus]}},
        {"name": "kind", "in": "query", "schema": {"enum": [k.value for k in AlertKind]}},
        {"name": "companyId", "in": "query", "schema": {"type": "string"}},
        {"name": "datasetId", "in": "query", "schema": {"type": "string"}},
        {"name": "deliveryId", "in": "query", "schema": {"type": "string"}, "description": "the alert's id"},
        {"name": "type", "in": "query", "schema": {"type": "string"},
         "description": "the event type exactly as received, e.g. read.completed or Data sync completed"},
        {"name": "q", "in": "query", "schema": {"type": "string", "minLength": 1, "maxLength": 200},
         "description": "text in the body as received (a substring, any case)"},
        {"name": "cursor", "in": "query", "schema": {"type": "string"}, "description": "a previous page's nextCursor"},
        limit,
    ]
    return {
        "/v1/companies/{companyId}/records/{dataType}": {"put": operation(
            "Hand over records to push (a record with only `id` is a delete)", "apiToken",
            {"202": answer("stored; pushed asynchronously", ref("IntakeResult")),
             "400": answer("not JSON", ref("Error")), **errors("401", "404"),
             "413": answer("over 5,000 records or too large a body", ref("Error")),
             "422": answer("invalid records; nothing stored", {"oneOf": [ref("RecordErrors"), ref("Error")]}),
             "503": ERRORS["503"]},
            parameters=[COMPANY, path_param("dataType", "data type", enum=DATA_TYPES)],
            requestBody=records_body())},
        "/v1/companies": {"get": operation(
            "Known companies (any alert naming one makes it known), in id order, a page at a time", "adminToken",
            {"200": answer("a page of companies, with how many match in all", ref("CompanyList")),
             **errors("401", "422")}, parameters=company_list_parameters())},
        "/v1/companies/{companyId}": {"get": operation(
            "A company's state: connection, pause, record counts, recent datasets, last sync", "adminToken",
            {"200": answer("the company", ref("Company")), **errors("401", "404")}, parameters=[COMPANY])},
        "/v1/companies/{companyId}/pause": {"post": operation(
            "Stop pushing for a company (intake continues)", "adminToken",
            {"200": answer("paused", ref("PauseState")), **errors("401", "404")}, parameters=[COMPANY])},
        "/v1/companies/{companyId}/resume": {"post": operation(
            "Resume pushing", "adminToken",
            {"200": answer("resumed", ref("PauseState")), **errors("401", "404")}, parameters=[COMPANY])},
        "/v1/companies/{companyId}/repush": {"post": operation(
            "Full re-push: every record not synced (rule 7), not a conflict, not in flight is pushed again",
            "adminToken", {"202": answer("queued; counts of what goes again and what was skipped", ref("Repush")),
                           **errors("401", "404", "422")}, parameters=[COMPANY],
            requestBody=body({"type": "object", "additionalProperties": False, "properties": {
                "dataType": {"enum": DATA_TYPES}}}, required=False))},
        "/v1/companies/{companyId}/purge": {"post": operation(
            "Purge a company: delete its records, alerts, datasets, pushes and notifications and cancel its jobs; "
            "an audit line stays. `dryRun` counts per table and deletes nothing", "adminToken",
            {"200": answer("rows per table deleted (or, dry run, to delete)", ref("Purge")),
             **errors("401", "404", "422")}, parameters=[COMPANY],
            requestBody=body({"type": "object", "additionalProperties": False, "properties": {
                "dryRun": {"type": "boolean"}}}, required=False))},
        "/v1/companies/{companyId}/sync/latest": {"post": operation(
            "Ask Codat to sync up to `syncTo` (default now)", "adminToken",
            {"200": RELAYED, **errors("401", "404", "422"), **CODAT}, parameters=[COMPANY],
            requestBody=body({"type": "object", "properties": {"syncTo": {"type": "string", "format": "date-time"}}},
                             required=False))},
        "/v1/companies/{companyId}/sync/historic": {"post": operation(
            "Ask Codat to re-sync a past range", "adminToken",
            {"200": RELAYED, **errors("401", "404", "422"), **CODAT}, parameters=[COMPANY],
            requestBody=body({"type": "object", "required": ["start", "end"], "properties": {
                "start": {"type": "string", "format": "date-time"},
                "end": {"type": "string", "format": "date-time"}}}))},
        "/v1/companies/{companyId}/sync/status": {"get": operation(
            "Codat's sync status of the company", "adminToken",
            {"200": RELAYED, **errors("401", "404"), **CODAT}, parameters=[COMPANY])},
        "/v1/alerts": {"get": operation(
            "Received alerts, newest first", "adminToken",
            {"200": answer("alerts", {"type": "object", "required": ["results", "nextCursor"], "properties": {
                "results": {"type": "array", "items": ref("Alert")},
                "nextCursor": {"type": ["string", "null"], "description": "the next page's cursor (null: the last)"}}}),
             **errors("401", "422")}, parameters=alert_filters)},
        "/v1/alerts/{alertId}": {"get": operation(
            "One alert with its raw body", "adminToken",
            {"200": answer("the alert", ref("AlertDetail")), **errors("401", "404")}, parameters=[ALERT])},
        "/v1/jobs": {"get": operation(
            "Jobs of the queue (e.g. the dead ones), newest first", "adminToken",
            {"200": answer("jobs", {"type": "object", "required": ["results"],
                                    "properties": {"results": {"type": "array", "items": ref("Job")}}}),
             **errors("401", "422")},
            parameters=[{"name": "status", "in": "query",
                         "schema": {"enum": ["waiting", "running", "done", "dead"]}},
                        {"name": "kind", "in": "query", "schema": {"type": "string"}}, limit])},
        "/v1/jobs/{jobId}/retry": {"post": operation(
            "Run a dead job again (attempts start over)", "adminToken",
            {"202": answer("queued", ref("Queued")), **errors("401", "404"),
             "409": answer("the job is not dead", ref("Error"))},
            parameters=[path_param("jobId", "job id", pattern="^[0-9]+$")])},
        "/v1/alerts/replay": {"post": operation(
            "Replay every alert a filter matches (oldest first), paced; dryRun counts them", "adminToken",
            {"200": answer("the dry run", ref("ReplayPreview")), "202": answer("the run, started", ref("ReplayRun")),
             **errors("401", "422")},
            requestBody=body({"type": "object", "additionalProperties": False, "properties": {
                "kind": {"enum": [k.value for k in AlertKind]}, "status": {"enum": [s.value for s in AlertStatus]},
                "companyId": {"type": "string"}, "since": {"type": "string", "format": "date-time"},
                "until": {"type": "string", "format": "date-time"}, "dryRun": {"type": "boolean"},
                "rate": {"type": "number", "description": "items per second"},
                "runId": {"type": "string", "description": "continue this run (or start one under this id)"}}},
                required=False))},
        "/v1/jobs/retry": {"post": operation(
            "Run again every dead job a filter matches (oldest first), paced; dryRun counts them", "adminToken",
            {"200": answer("the dry run", ref("ReplayPreview")), "202": answer("the run, started", ref("ReplayRun")),
             **errors("401", "422")},
            requestBody=body({"type": "object", "additionalProperties": False, "properties": {
                "kind": {"type": "string"}, "since": {"type": "string", "format": "date-time"},
                "until": {"type": "string", "format": "date-time"}, "dryRun": {"type": "boolean"},
                "rate": {"type": "number"}, "runId": {"type": "string"}}}, required=False))},
        "/v1/replays/{runId}": {"get": operation(
            "A bulk replay or retry run: its filter, cursor and progress", "adminToken",
            {"200": answer("the run", ref("ReplayRun")), **errors("401", "404")},
            parameters=[path_param("runId", "replay run id")])},
        "/v1/problems": {"get": operation(
            "Problems staff were told of, newest first, with their age", "adminToken",
            {"200": answer("problems", {"type": "object", "required": ["results"],
                                        "properties": {"results": {"type": "array", "items": ref("Problem")}}}),
             **errors("401", "422")},
            parameters=[{"name": "status", "in": "query", "description": "open: every unresolved one (`state` too)",
                         "schema": {"enum": ["open", "acknowledged", "resolved"]}},
                        {"name": "companyId", "in": "query", "schema": {"type": "string"}}, limit])},
        "/v1/problems/{problemId}/ack": {"post": operation(
            "Acknowledge a problem (it stays open until its condition clears)", "adminToken",
            {"200": answer("the problem", ref("Problem")), **errors("401", "404")},
            parameters=[path_param("problemId", "problem id")],
            requestBody=body({"type": "object", "additionalProperties": False,
                              "properties": {"by": {"type": "string"}}}, required=False))},
        "/v1/alerts/{alertId}/replay": {"post": operation(
            "Process an alert again", "adminToken",
            {"202": answer("queued", ref("Queued")), **errors("401", "404")}, parameters=[ALERT])},
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "codat-relay", "version": "1", "description":
                 "Record intake and admin API of codat-relay. Codat's webhooks go to POST /webhooks/codat. "
                 "Interactive: /docs. Intake takes Codat's Order, Payment and Transaction push schemas."},
        "paths": paths(),
        "components": {
            "schemas": {**SCHEMAS, **record_schemas(), **company_schemas()},
            "securitySchemes": {
                "apiToken": {"type": "http", "scheme": "bearer", "description": "RELAY_API_TOKEN"},
                "adminToken": {"type": "http", "scheme": "bearer", "description": "RELAY_ADMIN_TOKEN"},
            },
        },
    }


async def openapi_json(_request: Request) -> Response:
    # Public on purpose: it describes the API and holds nothing secret; tools fetch it without a token.
    return json_response(document())


def routes() -> list[BaseRoute]:
    return [Route("/openapi.json", openapi_json, methods=["GET"])]
