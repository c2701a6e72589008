"""Bulk replay and retry from the admin API: `POST /v1/alerts/replay`, `POST /v1/jobs/retry`, `GET /v1/replays/{id}`.

The body is the CLI's filter as JSON. `dryRun` answers the count and a sample at once; otherwise the run
is created (or taken up: `runId`) and carried out in the background of this process, paced by `rate`;
`GET /v1/replays/{runId}` follows it. A run cut short (the process stopped) keeps its cursor: the same
request with its `runId` continues it.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service import replays
from service.errors import InvalidRequest
from service.ids import check_id, path_id
from service.syncs import parse_instant
from service.types import AlertKind, AlertStatus
from service.web.auth import require
from service.web.responses import json_response
from service.web.webhooks import read_capped

MAX_BODY_BYTES = 16 * 1024
COMMON = {"since", "until", "dryRun", "rate", "runId"}
FIELDS = {replays.ALERTS: COMMON | {"kind", "companyId", "status"}, replays.JOBS: COMMON | {"kind"}}


def _body(raw: bytes, target: str) -> dict[str, Any]:
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise InvalidRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object of filters")
    if unknown := sorted(set(body) - FIELDS[target]):
        raise InvalidRequest(f"{unknown[0]}: unknown field; the body holds {', '.join(sorted(FIELDS[target]))}")
    return body


def _text(body: dict[str, Any], name: str, allowed: set[str] | None = None) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{name}: must be a string")
    if allowed is not None and value not in allowed:
        raise InvalidRequest(f"{name}: must be one of {', '.join(sorted(allowed))}")
    return check_id(value, name, 64 if name == "kind" else 255)


def _filter(body: dict[str, Any], target: str) -> replays.Filter:
    since, until = (parse_instant(name, body[name]).timestamp() if body.get(name) is not None else None
                    for name in ("since", "until"))  # fmt: skip
    if since is not None and until is not None and since >= until:
        raise InvalidRequest("until: must be after since")
    if target == replays.JOBS:
        return replays.Filter(kind=_text(body, "kind"), since=since, until=until)
    kind = _text(body, "kind", {k.value for k in AlertKind})
    status = _text(body, "status", {s.value for s in AlertStatus})
    return replays.Filter(kind=kind, company=_text(body, "companyId"), status=status, since=since, until=until)


def _rate(body: dict[str, Any]) -> float | None:
    value = body.get("rate")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise InvalidRequest("rate: a number of items per second")
    return None if value is None else float(value)


async def _start(request: Request, target: str) -> Response:
    runtime = request.app.state.runtime
    body = _body(await read_capped(request, MAX_BODY_BYTES), target)
    flt, now = _filter(body, target), runtime.clock.now()
    if body.get("dryRun") is True:
        return json_response(await replays.preview(runtime.engine, target, flt, now))
    if body.get("dryRun") not in (None, False):
        raise InvalidRequest("dryRun: true or false")
    pacer = replays.Pacer(_rate(body), runtime.clock)
    run_id = body.get("runId")
    if run_id is not None and not isinstance(run_id, str):
        raise InvalidRequest("runId: must be a string")
    run = await replays.open_run(runtime.engine, target, flt, now, run_id)
    remaining = await replays.remaining(runtime.engine, run)

    def progress(_done: int, _item: str) -> None:
        runtime.wake_workers()

    runtime.background(replays.execute(runtime.engine, run, runtime.clock, pacer, progress), f"replay {run.id}")
    return json_response({**replays.run_json(run), "status": "running", "remaining": remaining}, 202)


@require("admin")
async def replay_alerts(request: Request) -> Response:
    return await _start(request, replays.ALERTS)


@require("admin")
async def retry_jobs(request: Request) -> Response:
    return await _start(request, replays.JOBS)


@require("admin")
async def show_run(request: Request) -> Response:
    run_id = path_id(request, "run_id", "replay run")
    return json_response(await replays.show_run(request.app.state.runtime.engine, run_id))


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/alerts/replay", replay_alerts, methods=["POST"]),
        Route("/v1/jobs/retry", retry_jobs, methods=["POST"]),
        Route("/v1/replays/{run_id}", show_run, methods=["GET"]),
    ]
