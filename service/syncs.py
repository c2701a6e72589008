"""Manual Codat syncs and sync status, shared by the admin API and the CLI.

A sync codat-relay starts is followed by a `poll_sync` job until it ends (`tracking.follow_sync`): Codat
sends no webhook when a Sync for Commerce sync ends, so without it records would wait for the daily check.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service import tracking
from service.auth import require
from service.codat import (
    CodatAuthError,
    CodatClient,
    CodatError,
    CodatNotFound,
    CodatRateLimited,
    CodatRejected,
    CodatUnavailable,
)
from service.db import writer
from service.errors import InvalidRequest, RetryLater
from service.ids import path_id
from service.responses import error_response, json_response
from service.webhooks import parse_json_object


def parse_instant(field: str, value: Any) -> datetime:
    """An ISO-8601 instant with a time zone (Codat's syncTo/dateRange are instants)."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{field}: expected an ISO-8601 date-time string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"{field}: not an ISO-8601 date-time") from None
    if parsed.tzinfo is None:
        raise InvalidRequest(f"{field}: needs a time zone (e.g. Z or +00:00)")
    return parsed


def historic_range(start: Any, end: Any) -> tuple[datetime, datetime]:
    first, last = parse_instant("start", start), parse_instant("end", end)
    if first >= last:
        raise InvalidRequest("end: must be after start")
    return first, last


async def sync_latest(codat: CodatClient, company_id: str, sync_to: Any = None) -> Any:
    return await codat.sync_latest(company_id, None if sync_to is None else parse_instant("syncTo", sync_to))


async def sync_historic(codat: CodatClient, company_id: str, start: Any, end: Any) -> Any:
    first, last = historic_range(start, end)
    return await codat.sync_historic(company_id, first, last)


async def sync_status(codat: CodatClient, company_id: str) -> Any:
    return [status.model_dump(mode="json", by_alias=True) for status in await codat.get_sync_status(company_id)]


def codat_error_response(exc: CodatError) -> Response:
    """Codat's refusal relayed to the operator, with the right side of the fault in the status code."""
    detail = exc.error or str(exc)
    if isinstance(exc, CodatNotFound):
        return error_response("codat_not_found", 404, detail)
    if isinstance(exc, CodatAuthError):
        return error_response("codat_auth_failed", 502, "Codat refused codat-relay's API key")
    if isinstance(exc, CodatRateLimited):
        return error_response("codat_rate_limited", 503, detail, {"Retry-After": str(int(exc.retry_after or 5))})
    if isinstance(exc, CodatUnavailable):
        return error_response("codat_unavailable", 503, detail, {"Retry-After": "5"})
    assert isinstance(exc, CodatRejected)
    status = exc.status_code if exc.status_code and 400 <= exc.status_code < 500 else 502
    return error_response("codat_rejected", status, detail)


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        return parse_json_object(raw)
    except Exception as exc:
        raise InvalidRequest(f"body: {exc}") from None


def _codat(request: Request) -> CodatClient:
    codat: CodatClient | None = request.app.state.runtime.codat
    if codat is None:
        raise RetryLater("Codat client not ready")
    return codat


async def _followed(request: Request, company: str, answer: Any) -> Response:
    runtime = request.app.state.runtime
    async with writer(runtime.engine).begin() as conn:
        await tracking.follow_sync(conn, company, answer, runtime.clock.now())
    return json_response(answer)


@require("admin")
async def latest(request: Request) -> Response:
    company = path_id(request, "company_id", "company")
    body = await _body(request)
    return await _followed(request, company, await sync_latest(_codat(request), company, body.get("syncTo")))


@require("admin")
async def historic(request: Request) -> Response:
    company = path_id(request, "company_id", "company")
    body = await _body(request)
    answer = await sync_historic(_codat(request), company, body.get("start"), body.get("end"))
    return await _followed(request, company, answer)


@require("admin")
async def status(request: Request) -> Response:
    company = path_id(request, "company_id", "company")
    return json_response(await sync_status(_codat(request), company))


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/companies/{company_id}/sync/latest", latest, methods=["POST"]),
        Route("/v1/companies/{company_id}/sync/historic", historic, methods=["POST"]),
        Route("/v1/companies/{company_id}/sync/status", status, methods=["GET"]),
    ]
