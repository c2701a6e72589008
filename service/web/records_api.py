"""Record intake (`RELAY_API_TOKEN`) and the company endpoints of the admin API (`RELAY_ADMIN_TOKEN`).

Intake is all or nothing per request: every record is validated before anything is stored, and the
records, the push job and any conflict notification are written in one transaction. The merchant's
platform gets its answer as soon as that commits; pushing to Codat happens later, asynchronously
(Codat rule 5: a failed push must never stop the merchant's system from creating records).
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service.errors import InvalidRequest, MalformedPayload, NotFound, PayloadTooLarge, StorageUnavailable
from service.ids import check_id
from service.outbox import IntakeResult, schedule_push, store_records
from service.records import DATA_TYPES, validate_records
from service.runtime import Runtime
from service.settings import CODAT_MAX_PUSH_RECORDS
from service.tracking import resolve_conflicts, tell_conflicts
from service.web.auth import require
from service.web.responses import json_response

MAX_RECORDS = CODAT_MAX_PUSH_RECORDS  # per request (CONTRACT.md): more is a 413
MAX_BODY_BYTES = 64 * 1024 * 1024  # 5,000 large orders with line items fit well within this


class RecordErrors(InvalidRequest):
    """422 `{"errors": [...]}`: the request's records, each error by index, id and field."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} invalid")
        self.errors = errors


def _problem(field: str | None, message: str) -> RecordErrors:
    return RecordErrors([{"index": None, "id": None, "field": field, "message": message}])


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"the body may hold at most {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:  # a missing or false Content-Length must not get past the cap
            raise PayloadTooLarge(f"the body may hold at most {MAX_BODY_BYTES} bytes")
    return bytes(body)


def _records_of(raw: bytes) -> list[Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedPayload(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _problem(None, 'the body must be a JSON object: {"records": [...]}')
    unknown = sorted(set(body) - {"records"})
    if unknown:
        raise _problem(unknown[0], 'unknown field: the body holds only "records"')
    items = body.get("records")
    if not isinstance(items, list):
        raise _problem("records", "must be an array of records")
    if len(items) > MAX_RECORDS:
        raise PayloadTooLarge(f"{len(items)} records: at most {MAX_RECORDS} per request")
    return items


def _data_type(request: Request) -> str:
    name = request.path_params["data_type"]
    if name not in DATA_TYPES:
        raise NotFound(f"unknown data type {name!r}: one of orders, payments, transactions")
    return DATA_TYPES[name]


@require("api")
async def put_records(request: Request) -> Response:
    try:
        return await _put_records(request)
    except RecordErrors as exc:
        return json_response({"errors": exc.errors}, 422)


async def _put_records(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    company_id, data_type = request.path_params["company_id"], _data_type(request)
    check_id(company_id, "companyId")  # the id the records are stored under: invalid input, not an unknown id
    items = _records_of(await _read_body(request))
    batch, errors = validate_records(data_type, items)
    if errors:
        raise RecordErrors(errors)
    delay_s = runtime.settings.push_debounce_seconds

    async def after(conn: Any, result: IntakeResult) -> None:
        now = runtime.clock.now()
        if result.pending:
            await schedule_push(conn, company_id, data_type, now=now, delay_s=delay_s)
        new = [c["id"] for c in result.conflicts]
        if new:
            await tell_conflicts(runtime.notifier, conn, company_id, data_type, new)
        await resolve_conflicts(runtime.notifier, conn, company_id, data_type, {r.id for r in batch}, set(new))

    try:
        result = await store_records(
            runtime.engine, company_id, data_type, batch, now=runtime.clock.now(), after=after
        )
    except SQLAlchemyError as exc:  # storage down or refusing: the platform should retry, not drop
        raise StorageUnavailable(type(exc).__name__) from exc
    runtime.wake_workers()
    return json_response(result.answer(), 202)


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/companies/{company_id}/records/{data_type}", put_records, methods=["PUT"]),
    ]
