"""Codat's push, dataset, company and connection endpoints, at Codat's own paths (FACTS §1-2).

Push bodies are held to `sync-commerce-2023-03-push-beta.json` (`schema.py`); companies follow the
platform spec's `create-company`/`get-company`; connections `get-connection`/`delete-connection`.
Sync endpoints are in `codat_syncs.py`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.sandbox import rules, schema
from service.sandbox.edge import Operation, Sandbox, codat_error, codat_route
from service.sandbox.model import DATA_TYPES


class BadRequest(Exception):
    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []

    def response(self) -> Response:
        return codat_error(400, str(self), errors=self.errors)


async def json_body(request: Request, *, optional: bool = False) -> Any:
    raw = await request.body()
    if not raw.strip() and optional:
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("The request body is not valid JSON") from None


def checked(body: Any, against: schema.Body) -> Any:
    errors = schema.errors(against, body)
    if errors:
        raise BadRequest("The request body failed validation", errors)
    return body


async def push(request: Request, sandbox: Sandbox) -> Response:
    state = sandbox.state
    company_id, data_type = request.path_params["companyId"], request.path_params["dataType"]
    if data_type not in DATA_TYPES:
        return codat_error(404, f"Unknown data type {data_type}")
    key = DATA_TYPES[data_type]
    try:
        body = await json_body(request)
        records = body.get(key) if isinstance(body, dict) else None
        if isinstance(records, list) and len(records) > rules.MAX_PUSH_RECORDS:
            state.breach("too_many_records", company_id, data_type, f"{len(records)} records in one push")
            message = f"A push may hold at most {rules.MAX_PUSH_RECORDS} records; this one holds {len(records)}"
            raise BadRequest(message, [schema.validation_item(None, message)])
        checked(body, schema.PUSH_BODIES[data_type])
        records = records or []
        missing = rules.record_ids_missing(key, records)
        if missing:
            raise BadRequest("The request body failed validation", [schema.validation_item(*m) for m in missing])
    except BadRequest as exc:
        return exc.response()
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


async def create_company(request: Request, sandbox: Sandbox) -> Response:
    """`POST /companies`: Codat issues the id; the sandbox links its two connections at once (no Link flow)."""
    try:
        body = checked(await json_body(request), schema.CREATE_COMPANY)
    except BadRequest as exc:
        return exc.response()
    state = sandbox.state
    company, events = state.create_company(name=body["name"], description=body.get("description", ""))
    sandbox.emit(events)
    return JSONResponse(company.to_json(state.connections_json(company)))


async def get_company(request: Request, sandbox: Sandbox) -> Response:
    company = sandbox.state.company(request.path_params["companyId"])
    return JSONResponse(company.to_json(sandbox.state.connections_json(company)))


def _not_found(connection_id: str) -> Response:
    return codat_error(404, f"Data connection {connection_id} not found")


async def get_connection(request: Request, sandbox: Sandbox) -> Response:
    """A live connection; a deleted one is gone (404), as in Codat."""
    state = sandbox.state
    company = state.company(request.path_params["companyId"])
    connection_id = request.path_params["connectionId"]
    for found in state.connections_json(company):
        if found["id"] == connection_id:
            return JSONResponse(found)
    return _not_found(connection_id)


async def delete_connection(request: Request, sandbox: Sandbox) -> Response:
    company_id, connection_id = request.path_params["companyId"], request.path_params["connectionId"]
    company = sandbox.state.company(company_id)
    if connection_id not in [c.id for c in company.connections if not c.deleted]:
        return _not_found(connection_id)
    event = sandbox.state.delete_connection(company_id, connection_id)
    sandbox.emit([event] if event is not None else [])
    return Response(status_code=200)


ROUTES = [
    codat_route("/data/companies/{companyId}/sync/{dataType}", {"POST": Operation("push", push)}),
    codat_route("/meta/companies/{companyId}/pull/history/{datasetId}", {"GET": Operation("dataset", dataset)}),
    codat_route("/companies/{companyId}/data/history/{datasetId}", {"GET": Operation("dataset", dataset)}),
    codat_route("/companies", {"POST": Operation("create_company", create_company)}),
    codat_route("/companies/{companyId}", {"GET": Operation("get_company", get_company)}),
    codat_route("/companies/{companyId}/connections/{connectionId}", {
        "GET": Operation("get_connection", get_connection), "DELETE": Operation("delete_connection", delete_connection),
    }),
]  # fmt: skip
