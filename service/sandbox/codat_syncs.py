"""Sync for Commerce's sync endpoints (`sync-commerce-current.json`): start syncs, read their status.

`POST .../sync/commerce/latest` "Run a Commerce sync from the last successful sync up to the date provided
(optional), otherwise UtcNow is used. If there was no previously successful sync, the start date in the
config is used." `.../historic` syncs the given `dateRange`. Both answer a `SyncSummary` carrying
`syncDateRangeUtc{start, finish}` and `commerceSyncId`. A sync's outcome is learned by polling these
endpoints: Codat sends no webhook when a Sync for Commerce sync ends (FACTS §6).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.sandbox import schema
from service.sandbox.codat_api import BadRequest, checked, json_body
from service.sandbox.edge import Operation, Sandbox, codat_error, codat_route
from service.sandbox.model import Sync, iso, parse_iso


def _when(value: Any, name: str) -> float:
    if not isinstance(value, str):
        raise BadRequest(f"'{name}' must be an ISO-8601 date-time")
    try:
        return parse_iso(value)
    except ValueError:
        raise BadRequest(f"'{name}' is not an ISO-8601 date-time: {value!r}") from None


async def sync_latest(request: Request, sandbox: Sandbox) -> Response:
    state = sandbox.state
    company = state.company(request.path_params["companyId"])
    try:
        body = checked(await json_body(request, optional=True), schema.SYNC_LATEST)
        sync_to = body.get("syncTo")
        finish = state.now() if sync_to is None else _when(sync_to, "syncTo")
        start = state.latest_range_start(company)
        if finish < start:  # not documented: the sandbox refuses a range that ends before it starts
            raise BadRequest(f"'syncTo' is before the start of the range, {iso(start)} (the last successful sync's "
                             "end, or the configured start date)")
    except BadRequest as exc:
        return exc.response()
    return _started(request, sandbox, start, finish)


async def sync_historic(request: Request, sandbox: Sandbox) -> Response:
    try:
        body = await json_body(request)
        # The spec's form is {"dateRange": {start, finish}}; the docs show {start, end}: take both (FACTS §3).
        if isinstance(body, dict) and "dateRange" in body:
            span = checked(body, schema.SYNC_RANGE)["dateRange"]
        elif isinstance(body, dict):
            span = {"start": body.get("start"), "finish": body.get("end", body.get("finish"))}
        else:
            raise BadRequest("The body must be a JSON object")
        start, finish = _when(span.get("start"), "start"), _when(span.get("finish"), "finish")
        if finish < start:
            raise BadRequest("'finish' is before 'start'")
    except BadRequest as exc:
        return exc.response()
    return _started(request, sandbox, start, finish)


def _started(request: Request, sandbox: Sandbox, start: float, finish: float) -> Response:
    state = sandbox.state
    company_id = request.path_params["companyId"]
    sync = state.start_sync(company_id, start, finish)
    sandbox.tick()
    return JSONResponse(sync.summary(state.now(), state.connections_json(state.company(company_id))))


def _no_sync(company_id: str) -> Response:
    return codat_error(404, f"No sync was found for company {company_id}")


async def sync_status(request: Request, sandbox: Sandbox) -> Response:
    """`get-sync-status`: the company's latest sync, as one `SyncStatus` (the spec's form, not the docs' list)."""
    state = sandbox.state
    company_id = request.path_params["companyId"]
    sync = state.latest_sync(company_id)
    if sync is None:
        return _no_sync(company_id)
    return JSONResponse(sync.status(state.now(), state.connections_json(state.company(company_id))))


def _company_status(sync: Sync | None, request: Request, sandbox: Sandbox) -> Response:
    if sync is None:
        return _no_sync(request.path_params["companyId"])
    return JSONResponse(sync.company_status(sandbox.state.now()))


async def latest_sync(request: Request, sandbox: Sandbox) -> Response:
    return _company_status(sandbox.state.latest_sync(request.path_params["companyId"]), request, sandbox)


async def last_successful_sync(request: Request, sandbox: Sandbox) -> Response:
    now, syncs = sandbox.state.now(), sandbox.state.company_syncs(request.path_params["companyId"])
    return _company_status(next((s for s in reversed(syncs) if s.succeeded(now)), None), request, sandbox)


async def sync_by_id(request: Request, sandbox: Sandbox) -> Response:
    syncs = sandbox.state.company_syncs(request.path_params["companyId"])
    wanted = request.path_params["syncId"]
    return _company_status(next((s for s in syncs if s.sync_id == wanted), None), request, sandbox)


async def list_syncs(request: Request, sandbox: Sandbox) -> Response:
    now = sandbox.state.now()
    return JSONResponse([s.company_status(now) for s in sandbox.state.company_syncs(request.path_params["companyId"])])


SYNCS = "/companies/{companyId}/sync/commerce/syncs"
ROUTES = [
    codat_route("/meta/companies/{companyId}/sync/commerce/status", {"GET": Operation("sync_status", sync_status)}),
    codat_route("/companies/{companyId}/sync/commerce/latest", {"POST": Operation("sync_latest", sync_latest)}),
    codat_route("/meta/companies/{companyId}/sync/commerce/historic",
                {"POST": Operation("sync_historic", sync_historic)}),
    # Literal segments before `{syncId}`: Starlette takes the first route that matches.
    codat_route(f"{SYNCS}/latest/status", {"GET": Operation("get_sync", latest_sync)}),
    codat_route(f"{SYNCS}/lastSuccessful/status", {"GET": Operation("get_sync", last_successful_sync)}),
    codat_route(f"{SYNCS}/list/status", {"GET": Operation("list_syncs", list_syncs)}),
    codat_route(f"{SYNCS}/{{syncId}}/status", {"GET": Operation("get_sync", sync_by_id)}),
]  # fmt: skip
