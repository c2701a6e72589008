"""The sync endpoints of the admin API (`RELAY_ADMIN_TOKEN`): start a latest or historic sync, read status."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service.codat.client import (
    CodatAuthError,
    CodatClient,
    CodatError,
    CodatNotFound,
    CodatRateLimited,
    CodatRejected,
)
from service.errors import InvalidRequest, RetryLater
from service.ids import path_id
from service.syncs import Follow, sync_historic, sync_latest, sync_status
from service.tracking import follow_sync
from service.web.auth import require
from service.web.responses import error_response, json_response
from service.web.webhooks import parse_json_object, read_capped

MAX_BODY_BYTES = 16 * 1024  # a sync body holds two dates; more is not a sync request


def codat_error_response(exc: CodatError) -> Response:
    """Codat's refusal relayed to the operator, with the right side of the fault in the status code."""
    detail = exc.error or str(exc)
    if isinstance(exc, CodatNotFound):
        return error_response("codat_not_found", 404, detail)
    if isinstance(exc, CodatAuthError):
        return error_response("codat_auth_failed", 502, "Codat refused codat-relay's API key")
    if isinstance(exc, RetryLater):  # Codat's 429/503, its Retry-After translated once, by the client
        code = "codat_rate_limited" if isinstance(exc, CodatRateLimited) else "codat_unavailable"
        return error_response(code, 503, detail, {"Retry-After": str(exc.after_s)})
    assert isinstance(exc, CodatRejected)
    status = exc.status_code if exc.status_code and 400 <= exc.status_code < 500 else 502
    return error_response("codat_rejected", status, detail)


async def _body(request: Request) -> dict[str, Any]:
    raw = await read_capped(request, MAX_BODY_BYTES)  # read uncapped, 200 MiB were read before the 422
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


def _follow(request: Request) -> Follow:
    runtime = request.app.state.runtime

    async def follow(company_id: str, kind: str, summary: Any) -> None:
        await follow_sync(runtime.engine, company_id, runtime.clock.now(), started=(kind, summary))

    return follow


@require("admin")
async def latest(request: Request) -> Response:
    company = path_id(request, "company_id", "company")
    body = await _body(request)
    return json_response(await sync_latest(_codat(request), company, body.get("syncTo"), follow=_follow(request)))


@require("admin")
async def historic(request: Request) -> Response:
    company = path_id(request, "company_id", "company")
    body = await _body(request)
    codat, follow = _codat(request), _follow(request)
    return json_response(await sync_historic(codat, company, body.get("start"), body.get("end"), follow=follow))


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
