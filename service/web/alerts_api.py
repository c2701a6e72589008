"""The alerts admin API (`Authorization: Bearer $RELAY_ADMIN_TOKEN`): list, show, replay."""

from __future__ import annotations

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service.alert_search import AlertSearch, BadSearch, search_alerts
from service.alert_views import DEFAULT_LIMIT, MAX_LIMIT, alert_json
from service.db import alerts
from service.dispatch import replay_alert
from service.errors import InvalidRequest, NotFound
from service.ids import path_id, query_id
from service.types import AlertKind, AlertStatus
from service.web.auth import require
from service.web.responses import json_response


def _choice(request: Request, name: str, allowed: type[AlertKind] | type[AlertStatus]) -> str | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    if value not in {member.value for member in allowed}:
        raise InvalidRequest(f"{name}: must be one of {', '.join(m.value for m in allowed)}")
    return value


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit") or str(DEFAULT_LIMIT)
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise InvalidRequest(f"limit: must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)


@require("admin")
async def list_alerts(request: Request) -> Response:
    """Newest first, filtered (all optional, AND): status, kind, companyId, datasetId, deliveryId, type
    (exact) and q (text in the body); `cursor` is the previous page's nextCursor."""
    search = AlertSearch(
        q=request.query_params.get("q") or None,
        company=query_id(request, "companyId"),
        dataset=query_id(request, "datasetId"),
        delivery=query_id(request, "deliveryId"),
        type=query_id(request, "type"),
        kind=_choice(request, "kind", AlertKind),
        status=_choice(request, "status", AlertStatus),
        limit=_limit(request),
        cursor=request.query_params.get("cursor") or None,
    )
    try:
        page = await search_alerts(request.app.state.runtime.engine, search)
    except BadSearch as exc:
        raise InvalidRequest(str(exc)) from None
    return json_response({"results": [alert_json(row) for row in page.rows], "nextCursor": page.next_cursor})


@require("admin")
async def show_alert(request: Request) -> Response:
    alert_id = path_id(request, "alert_id", "alert")
    async with request.app.state.runtime.engine.connect() as conn:
        row = (await conn.execute(sa.select(alerts).where(alerts.c.id == alert_id))).mappings().first()
    if row is None:
        raise NotFound(f"no alert {alert_id}")
    return json_response(alert_json(row, detail=True))


@require("admin")
async def replay(request: Request) -> Response:
    runtime = request.app.state.runtime
    alert_id = path_id(request, "alert_id", "alert")
    if not await replay_alert(runtime.engine, alert_id, runtime.clock.now()):
        raise NotFound(f"no alert {alert_id}")
    runtime.wake_workers()
    return json_response({"status": "queued", "id": alert_id}, 202)


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/alerts", list_alerts, methods=["GET"]),
        Route("/v1/alerts/{alert_id:path}/replay", replay, methods=["POST"]),
        Route("/v1/alerts/{alert_id:path}", show_alert, methods=["GET"]),
    ]
