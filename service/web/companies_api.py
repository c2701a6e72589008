"""The company endpoints of the admin API (`RELAY_ADMIN_TOKEN`): list, show, pause, resume, full re-push, purge."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service.companies import company_view, full_repush, pause_company, resume_company
from service.errors import InvalidRequest, NotFound
from service.health import DEFAULT_PAGE, MAX_PAGE, PROBLEM_KINDS, CompanyQuery, decode_cursor, list_companies
from service.ids import path_id, query_id
from service.outbox import MANUAL_PAUSE
from service.purge import purge_company
from service.records import DATA_TYPES, MODELS
from service.runtime import Runtime
from service.web.auth import require
from service.web.responses import json_response
from service.web.webhooks import read_capped

MAX_BODY_BYTES = 16 * 1024  # {"dataType": …}: anything longer is not a re-push request
PURGE_BY_API = "api admin token"  # who asked, in the purge's audit line: the admin token is one role


@require("admin")
async def show_company(request: Request) -> Response:
    company_id = path_id(request, "company_id", "company")
    view = await company_view(request.app.state.runtime.engine, company_id)
    if view is None:
        raise NotFound(f"no company {company_id}")
    return json_response(view)


BOOLEAN = {"true": True, "false": False}


def _flag(request: Request, name: str) -> bool | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if raw not in BOOLEAN:
        raise InvalidRequest(f"{name}: true or false")
    return BOOLEAN[raw]


def company_query(request: Request) -> CompanyQuery:
    """`?search=&failing=&paused=&problem=&limit=&cursor=` of `GET /v1/companies` (the page reads the same)."""
    params = request.query_params
    raw_limit = params.get("limit") or str(DEFAULT_PAGE)
    if not (raw_limit.isascii() and raw_limit.isdigit()) or not 1 <= int(raw_limit) <= MAX_PAGE:
        raise InvalidRequest(f"limit: must be a whole number from 1 to {MAX_PAGE}")
    problem = params.get("problem") or None
    if problem is not None and problem not in PROBLEM_KINDS:
        raise InvalidRequest(f"problem: must be one of {', '.join(PROBLEM_KINDS)}")
    cursor = params.get("cursor") or None
    if cursor is not None:
        try:
            decode_cursor(cursor)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
    return CompanyQuery(search=query_id(request, "search"), paused=_flag(request, "paused"),
                        failing=_flag(request, "failing"), problem=problem, limit=int(raw_limit),
                        cursor=cursor)  # fmt: skip


@require("admin")
async def list_endpoint(request: Request) -> Response:
    """`GET /v1/companies`: known companies in id order; `nextCursor` fetches the next page, `total` counts all."""
    page = await list_companies(request.app.state.runtime.engine, company_query(request))
    return json_response(page.answer())


@require("admin")
async def pause(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    company_id = path_id(request, "company_id", "company")
    if not await pause_company(runtime.engine, company_id, runtime.clock.now()):
        raise NotFound(f"no company {company_id}")
    return json_response({"id": company_id, "paused": True, "pauseReason": MANUAL_PAUSE})


@require("admin")
async def resume(request: Request) -> Response:
    """Resume pushing; whatever waited while paused is pushed now."""
    runtime: Runtime = request.app.state.runtime
    company_id = path_id(request, "company_id", "company")
    if not await resume_company(runtime.engine, company_id, runtime.clock.now()):
        raise NotFound(f"no company {company_id}")
    runtime.wake_workers()
    return json_response({"id": company_id, "paused": False, "pauseReason": None})


def _repush_types(raw: bytes) -> list[str]:
    """The body `{"dataType"?: "orders"}` (or none at all): which data types to re-push."""
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise InvalidRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest('the body must be a JSON object: {"dataType"?: "orders"}')
    if unknown := sorted(set(body) - {"dataType"}):
        raise InvalidRequest(f"{unknown[0]}: unknown field; the body holds only dataType")
    name = body.get("dataType")
    if name is None:
        return list(MODELS)
    if not isinstance(name, str) or name not in DATA_TYPES:
        raise InvalidRequest("dataType: one of orders, payments, transactions")
    return [DATA_TYPES[name]]


@require("admin")
async def repush_endpoint(request: Request) -> Response:
    """`POST /v1/companies/{companyId}/repush`: a full re-push; 202 with what goes again and what was skipped."""
    runtime = request.app.state.runtime
    company_id = path_id(request, "company_id", "company")
    data_types = _repush_types(await read_capped(request, MAX_BODY_BYTES))
    result = await full_repush(runtime.engine, company_id, data_types, runtime.clock.now())
    runtime.wake_workers()
    return json_response(result.answer(), 202)


def _dry_run(raw: bytes) -> bool:
    """The body `{"dryRun"?: true}` (or none at all): whether to count only."""
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise InvalidRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest('the body must be a JSON object: {"dryRun"?: true}')
    if unknown := sorted(set(body) - {"dryRun"}):
        raise InvalidRequest(f"{unknown[0]}: unknown field; the body holds only dryRun")
    dry_run = body.get("dryRun", False)
    if not isinstance(dry_run, bool):
        raise InvalidRequest("dryRun: true or false")
    return dry_run


@require("admin")
async def purge_endpoint(request: Request) -> Response:
    """`POST /v1/companies/{companyId}/purge`: delete everything of the company but an audit line (200 with
    rows deleted per table); `{"dryRun": true}` answers the counts and deletes nothing. 404: nothing known."""
    runtime: Runtime = request.app.state.runtime
    company_id = path_id(request, "company_id", "company")
    dry_run = _dry_run(await read_capped(request, MAX_BODY_BYTES))
    survey = await purge_company(runtime.engine, company_id, requested_by=PURGE_BY_API, clock=runtime.clock,
                                 dry_run=True)  # fmt: skip
    if not survey.found:
        raise NotFound(f"no company {company_id}")
    if dry_run:
        return json_response(survey.answer())
    result = await purge_company(runtime.engine, company_id, requested_by=PURGE_BY_API, clock=runtime.clock)
    return json_response(result.answer())


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/companies", list_endpoint, methods=["GET"]),
        Route("/v1/companies/{company_id}/pause", pause, methods=["POST"]),
        Route("/v1/companies/{company_id}/resume", resume, methods=["POST"]),
        Route("/v1/companies/{company_id}/repush", repush_endpoint, methods=["POST"]),
        Route("/v1/companies/{company_id}/purge", purge_endpoint, methods=["POST"]),
        Route("/v1/companies/{company_id}", show_company, methods=["GET"]),
    ]
