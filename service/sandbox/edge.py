"""What every Codat endpoint goes through: auth, faults, idempotency, counting, rate-limit headers."""

from __future__ import annotations

import asyncio
import base64
import hmac
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.sandbox.faults import ALL, FaultAnswer, decide
from service.sandbox.idempotency import CachedAnswer, IdempotencyStore
from service.sandbox.state import SandboxState
from service.sandbox.webhooks import WebhookSender

RELEASED_STATUS = 429  # the one answer Codat does not cache under an Idempotency-Key: the key is released
# Codat's documented limits, advertised on every answer like the real API (the sandbox does not enforce them).
RATE_LIMIT = 1000
FAULT_MESSAGES = {
    429: "Rate limit exceeded. Please retry after the time specified in the Retry-After header.",
    500: "An internal server error occurred.",
    503: "The service is temporarily unavailable.",
    504: "The request timed out.",
}


@dataclass(frozen=True)
class Sandbox:
    """What a handler may touch: the state and the webhook sender."""

    state: SandboxState
    sender: WebhookSender

    def tick(self) -> int:
        """Let time pass: settle what is due and send its webhooks (in the background)."""
        events = self.state.advance()
        self.sender.emit(events)
        return len(events)


Handler = Callable[[Request, Sandbox], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


def codat_error(
    status: int,
    message: str,
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """Codat's error JSON; `canBeRetried` is a string in Codat's own schema ("True"/"False"/"Unknown")."""
    retryable = status in {409, 429} or status >= 500
    body = {
        "statusCode": status,
        "service": "PublicApi",
        "error": message,
        "correlationId": uuid.uuid4().hex,
        "validation": {"errors": errors or [], "warnings": []},
        "canBeRetried": "True" if retryable else "False",
        "detailedErrorCode": 0,
    }
    return JSONResponse(body, status_code=status, headers=headers)


def codat_endpoint(name: str, handler: Handler, *, idempotent: bool = False) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        sandbox: Sandbox = request.app.state.sandbox
        sandbox.tick()
        company_id = request.path_params.get("companyId")
        counted = False

        async def answer(request: Request, sandbox: Sandbox) -> Response:
            nonlocal counted
            fault = decide(sandbox.state.faults.get(name) or sandbox.state.faults.get(ALL), sandbox.state.fault_rng)
            if fault.status is not None:
                # Counted before the wait: a client that gives up on a hang never sees the answer.
                sandbox.state.count_request(name, fault.status, company_id)
                counted = True
                return await _fault(fault)
            if fault.delay_s > 0:
                await asyncio.sleep(fault.delay_s)
            return await handler(request, sandbox)

        response = _check_auth(request, sandbox.state)
        if response is None:
            # An injected fault is an answer like any other: under an Idempotency-Key it is cached too.
            response = await (_idempotent(answer, request, sandbox) if idempotent else answer(request, sandbox))
        if not counted:
            sandbox.state.count_request(name, response.status_code, company_id)
        return _headers(response)

    endpoint.__name__ = name
    return endpoint


def _check_auth(request: Request, state: SandboxState) -> Response | None:
    key = state.config.api_key
    if key is None:
        return None
    expected = "Basic " + base64.b64encode(key.encode()).decode()
    given = request.headers.get("authorization", "")
    if hmac.compare_digest(given.encode(), expected.encode()):
        return None
    return codat_error(401, "Unauthorized: send Authorization: Basic base64(API key)")


async def _fault(fault: FaultAnswer) -> Response:
    await asyncio.sleep(fault.delay_s)
    assert fault.status is not None
    headers = {"Retry-After": str(fault.retry_after_s)} if fault.retry_after_s is not None else None
    message = FAULT_MESSAGES.get(fault.status, fault.reason)
    return codat_error(fault.status, f"{message} (sandbox: {fault.reason})", headers=headers)


async def _idempotent(handler: Handler, request: Request, sandbox: Sandbox) -> Response:
    key = request.headers.get("idempotency-key")
    if not key:
        return await handler(request, sandbox)
    store = sandbox.state.idempotency
    fingerprint = IdempotencyStore.fingerprint(request.method, request.url.path, await request.body())
    outcome = store.begin(key, fingerprint, sandbox.state.now())
    if isinstance(outcome, CachedAnswer):
        return Response(outcome.body, outcome.status, headers=_replayed(outcome.headers), media_type="application/json")
    if outcome == "mismatch":
        return codat_error(422, "This Idempotency-Key was used with a different request body")
    if outcome == "in_flight":
        return codat_error(409, "A request with this Idempotency-Key is still being processed")
    try:
        response = await handler(request, sandbox)
    except BaseException:
        store.abandon(key)  # no answer was given: the key stays free
        raise
    if response.status_code == RELEASED_STATUS:
        store.abandon(key)
    else:
        # Every answer is cached, 5xx included (docs/using-the-api/write-data/idempotency.md): the same
        # key replays it for 90 minutes, so a client must send a new key to try again after one.
        store.finish(key, CachedAnswer(response.status_code, bytes(response.body), dict(response.headers)))
    return response


def _replayed(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in ("content-length", "content-type")}


def _headers(response: Response) -> Response:
    response.headers["X-Rate-Limit-Limit"] = str(RATE_LIMIT)
    response.headers["X-Rate-Limit-Remaining"] = str(RATE_LIMIT - 1)
    response.headers["X-Rate-Limit-Reset"] = "60"
    return response
