"""The Codat endpoints codat-relay uses, at Codat's own paths (FACTS §1-3)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.sandbox import rules
from service.sandbox.edge import Sandbox, codat_endpoint, codat_error
from service.sandbox.model import DATA_TYPES, parse_iso


class BadRequest(Exception):
    pass


async def _json(request: Request, *, optional: bool = False) -> Any:
    raw = await request.body()
    if not raw.strip() and optional:
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("The request body is not valid JSON") from None


def _when(value: Any, name: str) -> float:
    if not isinstance(value, str):
        raise BadRequest(f"'{name}' must be an ISO-8601 date-time")
    try:
        return parse_iso(value)
    except ValueError:
        raise BadRequest(f"'{name}' is not an ISO-8601 date-time: {value!r}") from None


async def push(request: Request, sandbox: Sandbox) -> Response:
    state = sandbox.state
    company_id, data_type = request.path_params["companyId"], request.path_params["dataType"]
    if data_type not in DATA_TYPES:
        return codat_error(404, f"Unknown data type {data_type}")
    key = DATA_TYPES[data_type]
    try:
        body = await _json(request)
    except BadRequest as exc:
        return codat_error(400, str(exc))
    records = body.get(key) if isinstance(body, dict) else None
    if isinstance(records, list) and len(records) > rules.MAX_PUSH_RECORDS:
        state.breach("too_many_records", company_id, data_type, f"{len(records)} records in one push")
        message = f"A push may hold at most {rules.MAX_PUSH_RECORDS} records; this one holds {len(records)}"
        return codat_error(400, message, errors=[rules.validation_item(None, message)])
    errors = rules.validate_body(key, body)
    if errors:
        return codat_error(400, "The request body failed validation", errors=errors)
    assert isinstance(records, list)
    if state.company(company_id).commerce.deleted:
        return codat_error(404, "The company has no commerce data connection (it was deleted)")
    flight = (company_id, data_type)
    if state.in_flight[flight] > 0:
        state.breach(
            "concurrent_push", company_id, data_type, "a push arrived while another was being handled"
        )
    state.in_flight[flight] += 1
    try:
        await asyncio.sleep(state.config.push_processing_seconds)
    finally:
        state.in_flight[flight] -= 1
    dataset = state.record_push(company_id, data_type, records, request.headers.get("idempotency-key"))
    sandbox.tick()
    return JSONResponse({"data": body, "datasetId": dataset.id})


async def dataset(request: Request, sandbox: Sandbox) -> Response:
    found = sandbox.state.datasets.get(request.path_params["datasetId"])
    if found is None or found.company_id != request.path_params["companyId"]:
        return codat_error(404, "Dataset not found")
    return JSONResponse(found.to_json(sandbox.state.now()))


async def sync_status(request: Request, sandbox: Sandbox) -> Response:
    state = sandbox.state
    company_id = request.path_params["companyId"]
    sync = state.latest_sync(company_id)
    if sync is None:
        return codat_error(404, "No sync has run for this company")
    return JSONResponse(sync.status(state.now(), state.connections_json(state.company(company_id))))


async def sync_latest(request: Request, sandbox: Sandbox) -> Response:
    try:
        body = await _json(request, optional=True)
        if not isinstance(body, dict) or set(body) - {"syncTo"}:
            raise BadRequest("The body may only hold 'syncTo'")
        sync_to = body.get("syncTo")
        finish = sandbox.state.now() if sync_to is None else _when(sync_to, "syncTo")
    except BadRequest as exc:
        return codat_error(400, str(exc))
    return _start_sync(request, sandbox, None, finish)


async def sync_historic(request: Request, sandbox: Sandbox) -> Response:
    try:
        body = await _json(request)
        if not isinstance(body, dict):
            raise BadRequest("The body must be a JSON object")
        # The spec's form is {"dateRange": {start, finish}}; the docs show {start, end}: take both.
        span = body.get("dateRange", body)
        if not isinstance(span, dict):
            raise BadRequest("'dateRange' must be an object")
        start = _when(span.get("start"), "start")
        finish = _when(span.get("finish", span.get("end")), "finish")
        if finish < start:
            raise BadRequest("'finish' is before 'start'")
    except BadRequest as exc:
        return codat_error(400, str(exc))
    return _start_sync(request, sandbox, start, finish)


def _start_sync(request: Request, sandbox: Sandbox, start: float | None, finish: float) -> Response:
    state = sandbox.state
    company_id = request.path_params["companyId"]
    sync = state.start_sync(company_id, start, finish)
    sandbox.tick()
    return JSONResponse(sync.summary(state.now(), state.connections_json(state.company(company_id))))


async def get_connection(request: Request, sandbox: Sandbox) -> Response:
    """A live connection; a deleted one is gone (404), as in Codat."""
    state = sandbox.state
    company = state.company(request.path_params["companyId"])
    connection_id = request.path_params["connectionId"]
    for conn in (company.commerce, company.accounting):
        if conn.id == connection_id and not conn.deleted:
            return JSONResponse(next(c for c in state.connections_json(company) if c["id"] == conn.id))
    return codat_error(404, "Connection not found")


async def delete_connection(request: Request, sandbox: Sandbox) -> Response:
    company_id, connection_id = request.path_params["companyId"], request.path_params["connectionId"]
    company = sandbox.state.company(company_id)
    live = [c.id for c in (company.commerce, company.accounting) if not c.deleted]
    if connection_id not in live:
        return codat_error(404, "Connection not found")
    event = sandbox.state.delete_connection(company_id, connection_id)
    sandbox.sender.emit([event] if event is not None else [])
    return Response(status_code=200)


ROUTES = [
    Route("/data/companies/{companyId}/sync/{dataType}", codat_endpoint("push", push, idempotent=True),
          methods=["POST"]),
    Route("/meta/companies/{companyId}/pull/history/{datasetId}", codat_endpoint("dataset", dataset)),
    Route("/companies/{companyId}/data/history/{datasetId}", codat_endpoint("dataset", dataset)),
    Route("/meta/companies/{companyId}/sync/commerce/status", codat_endpoint("sync_status", sync_status)),
    Route("/companies/{companyId}/sync/commerce/latest",
          codat_endpoint("sync_latest", sync_latest, idempotent=True), methods=["POST"]),
    Route("/meta/companies/{companyId}/sync/commerce/historic",
          codat_endpoint("sync_historic", sync_historic, idempotent=True), methods=["POST"]),
    Route("/companies/{companyId}/connections/{connectionId}",
          codat_endpoint("delete_connection", delete_connection), methods=["DELETE"]),
    Route("/companies/{companyId}/connections/{connectionId}",
          codat_endpoint("get_connection", get_connection), methods=["GET"]),
]  # fmt: skip
