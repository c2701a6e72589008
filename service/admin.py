"""The admin API (`Authorization: Bearer $RELAY_ADMIN_TOKEN`): alerts, and later companies and syncs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service.auth import require
from service.db import alerts
from service.dispatch import replay_alert
from service.errors import InvalidRequest, NotFound
from service.ids import path_id, query_id
from service.responses import json_response
from service.types import AlertKind, AlertStatus

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def alert_json(row: RowMapping, *, detail: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row["id"],
        "kind": row["kind"],
        "type": row["type"],
        "companyId": row["company_id"],
        "status": row["status"],
        "attempts": row["attempts"],
        "receivedAt": iso(row["received_at"]),
        "lastError": row["last_error"],
    }
    if detail:
        out.update(
            shape=row["shape"],
            connectionId=row["connection_id"],
            datasetId=row["dataset_id"],
            datasetStatus=row["dataset_status"],
            dataTypes=row["data_types"],
            generatedAt=iso(row["generated_at"]),
            updatedAt=iso(row["updated_at"]),
            body=row["body"].decode("utf-8", errors="replace"),
        )
    return out


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
    query = sa.select(alerts).order_by(alerts.c.received_at.desc(), alerts.c.id.desc()).limit(_limit(request))
    if (status := _choice(request, "status", AlertStatus)) is not None:
        query = query.where(alerts.c.status == status)
    if (kind := _choice(request, "kind", AlertKind)) is not None:
        query = query.where(alerts.c.kind == kind)
    if (company := query_id(request, "companyId")) is not None:
        query = query.where(alerts.c.company_id == company)
    async with request.app.state.runtime.engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return json_response({"results": [alert_json(row) for row in rows]})


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
