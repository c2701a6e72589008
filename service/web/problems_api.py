"""The problems admin API (`Authorization: Bearer $RELAY_ADMIN_TOKEN`): list problems, acknowledge one."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service import problems
from service.db import writer
from service.errors import InvalidRequest, NotFound
from service.ids import check_id, path_id, query_id
from service.web.auth import require
from service.web.responses import json_response
from service.web.webhooks import read_capped

MAX_BODY_BYTES = 16 * 1024  # as every admin body
DEFAULT_BY = "admin"  # who acknowledged, when the body does not say (the admin token names no person)


def state_filter(raw: str | None) -> problems.State | None:
    if raw is None or raw == "":
        return None
    try:
        return problems.State(raw)
    except ValueError:
        raise InvalidRequest(f"status: must be one of {', '.join(s.value for s in problems.State)}") from None


def limit_of(raw: str | None) -> int:
    raw = raw or str(problems.DEFAULT_LIMIT)
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= problems.MAX_LIMIT:
        raise InvalidRequest(f"limit: must be a whole number from 1 to {problems.MAX_LIMIT}")
    return int(raw)


@require("admin")
async def list_endpoint(request: Request) -> Response:
    """`GET /v1/problems?status=open|acknowledged|resolved&companyId=&limit=`, newest first, with their age."""
    runtime = request.app.state.runtime
    params = request.query_params
    # `state` is accepted as another name of `status` (the two words for it in issue 17).
    query = problems.listing(state=state_filter(params.get("status") or params.get("state")),
                             company_id=query_id(request, "companyId") or query_id(request, "company"),
                             limit=limit_of(params.get("limit")))  # fmt: skip
    async with runtime.engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    now = runtime.clock.now()
    return json_response({"results": [problems.problem_json(row, now) for row in rows]})


def _by(raw: bytes) -> str:
    """The body `{"by"?: "who"}` (or none at all)."""
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise InvalidRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest('the body must be a JSON object: {"by"?: "name"}')
    if unknown := sorted(set(body) - {"by"}):
        raise InvalidRequest(f"{unknown[0]}: unknown field; the body holds only by")
    by = body.get("by", DEFAULT_BY)
    if not isinstance(by, str):
        raise InvalidRequest("by: must be a string")
    return check_id(by, "by")


@require("admin")
async def ack_endpoint(request: Request) -> Response:
    """`POST /v1/problems/{id}/ack`: someone is on it; it stays open until it resolves by itself."""
    runtime = request.app.state.runtime
    problem_id = path_id(request, "problem_id", "problem")
    by = _by(await read_capped(request, MAX_BODY_BYTES))
    async with writer(runtime.engine).begin() as conn:
        row = await problems.acknowledge(conn, problem_id, by, runtime.clock.now())
    if row is None:
        raise NotFound(f"no problem {problem_id}")
    return json_response(problems.problem_json(row, runtime.clock.now()))


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/problems", list_endpoint, methods=["GET"]),
        Route("/v1/problems/{problem_id}/ack", ack_endpoint, methods=["POST"]),
    ]
