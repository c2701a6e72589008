"""What every Codat endpoint goes through: auth, the daily quota, idempotency, faults, the company check.

In order, as a request meets them: `Authorization` (401, spending nothing), the daily quota (429 +
`Retry-After` once spent), the `Idempotency-Key` cache of a POST (replay, 409 in progress, 422 other
body), injected faults (answers like any other, so they are cached too — except 429), the company
(`No company was found with ID …`, the spec's own 404 example), then the endpoint. Every answer carries
the rate-limit headers (`ratelimit.py`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.sandbox import rules
from service.sandbox.faults import ALL, FaultAnswer, decide
from service.sandbox.idempotency import CachedAnswer, IdempotencyStore
from service.sandbox.ratelimit import CONCURRENCY_RETRY_AFTER_S
from service.sandbox.state import Event, SandboxState
from service.sandbox.webhooks import WebhookSender

# The `error` texts of the specs' own examples (components/responses of sync-commerce-current.json).
MESSAGES = {
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "You have made too many requests in a given amount of time; please retry later.",
    500: "There is a problem with our server. Please try again later.",
    503: "The Codat API is temporarily offline for maintenance. Please try again later.",
    504: "The request timed out.",
}
KEYED_METHODS = frozenset({"POST", "PATCH"})  # idempotency.md: the header counts on POST and PATCH only


@dataclass(frozen=True)
class Sandbox:
    """What a handler may touch: the state and the webhook sender."""

    state: SandboxState
    sender: WebhookSender

    def tick(self) -> int:
        """Let time pass: settle what is due and send its webhooks (in the background)."""
        events = self.state.advance()
        self.state.quota.roll(self.state.now())  # 00:00 UTC passed: a spent quota is whole again
        events += self.state.quota_events()
        self.sender.emit(events)
        return len(events)

    def emit(self, events: list[Event]) -> None:
        self.sender.emit(events)


Handler = Callable[[Request, Sandbox], Awaitable[Response]]


@dataclass(frozen=True)
class Operation:
    """One Codat operation: its name (for faults and request counts) and its handler."""

    name: str
    handler: Handler


def codat_error(
    status: int,
    message: str | None = None,
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    service: str = "PublicApi",
) -> JSONResponse:
    """Codat's error JSON; `canBeRetried` is a string in Codat's own schema ("True"/"False"/"Unknown")."""
    retryable = status in {409, 429} or status >= 500
    body = {
        "statusCode": status,
        "service": service,
        "error": message or MESSAGES.get(status, "Error"),
        "correlationId": uuid.uuid4().hex,
        "validation": {"errors": errors or [], "warnings": []},
        "canBeRetried": "True" if retryable else "False",
        "detailedErrorCode": 0,
    }
    return JSONResponse(body, status_code=status, headers=headers)


def codat_route(path: str, operations: dict[str, Operation]) -> Route:
    """One path, its operations by method: a wrong method is a 405 whose `Allow` names every one."""

    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await _serve(operations[method], request)

    endpoint.__name__ = "_".join(op.name for op in operations.values())
    return Route(path, endpoint, methods=list(operations))


async def _serve(op: Operation, request: Request) -> Response:
    sandbox: Sandbox = request.app.state.sandbox
    state = sandbox.state
    sandbox.tick()
    company_id = request.path_params.get("companyId")
    if not _authorised(request, state.config.api_key):
        response: Response = codat_error(401)
    elif company_id is not None and not state.concurrency.enter(company_id):
        # "10 concurrent requests per ACC" (rate-limits.md): the 11th is a 429 with Retry-After.
        response = codat_error(429, headers={"Retry-After": str(CONCURRENCY_RETRY_AFTER_S)})
    else:
        try:
            response = await _within_quota(op, request, sandbox)
        finally:
            if company_id is not None:
                state.concurrency.leave(company_id)
    if not getattr(request.state, "counted", False):
        state.count_request(op.name, response.status_code, company_id)
    return with_rate_headers(response, state)


async def _within_quota(op: Operation, request: Request, sandbox: Sandbox) -> Response:
    state = sandbox.state
    now = state.now()
    wait = state.quota.take(now, state.daily_quota())
    sandbox.emit(state.quota_events())  # `reached` as the last request is spent; `reset` at a new day
    if wait is not None:
        return codat_error(429, headers={"Retry-After": str(math.ceil(wait))})
    if request.method in KEYED_METHODS and request.headers.get("idempotency-key"):
        return await _keyed(op, request, sandbox)
    return await _answer(op, request, sandbox, None)


def with_rate_headers(response: Response, state: SandboxState) -> Response:
    response.headers.update(state.quota.headers(state.now(), state.daily_quota()))
    return response


def _authorised(request: Request, api_key: str | None) -> bool:
    """`Basic base64(key)`: exactly the configured key, or any non-empty one when none is configured."""
    given = request.headers.get("authorization", "")
    if api_key is not None:
        expected = "Basic " + base64.b64encode(api_key.encode()).decode()
        return hmac.compare_digest(given.encode(), expected.encode())
    scheme, _, encoded = given.partition(" ")
    try:
        return scheme.lower() == "basic" and bool(base64.b64decode(encoded.strip(), validate=True))
    except (binascii.Error, ValueError):
        return False


async def _answer(op: Operation, request: Request, sandbox: Sandbox, key: str | None) -> Response:
    state = sandbox.state
    company_id = request.path_params.get("companyId")
    fault = decide(state.faults.get(op.name) or state.faults.get(ALL), state.fault_rng)
    if fault.status is not None:
        response = _fault(fault)
        # Counted and cached before the wait: a client that gives up on a hang never sees the answer,
        # yet the server went on and its answer is what a retry under the same key gets.
        state.count_request(op.name, fault.status, company_id)
        request.state.counted = True
        if key is not None:
            state.idempotency.finish(key, _cached(response), ready_at=state.now() + fault.delay_s)
            request.state.cached = True
        await asyncio.sleep(fault.delay_s)
        return response
    if fault.delay_s > 0:
        await asyncio.sleep(fault.delay_s)
    if company_id is not None and state.find_company(company_id) is None:
        return codat_error(404, f"No company was found with ID {company_id}", service="ClientsApi")
    return await op.handler(request, sandbox)


def _fault(fault: FaultAnswer) -> Response:
    assert fault.status is not None
    # Codat's every 429 carries Retry-After (rate-limits.md), scripted ones included.
    after = fault.retry_after_s if fault.retry_after_s is not None else (1 if fault.status == 429 else None)
    headers = {"Retry-After": str(after)} if after is not None else None
    message = MESSAGES.get(fault.status, fault.reason)
    return codat_error(fault.status, f"{message} (sandbox: {fault.reason})", headers=headers)


def _cached(response: Response) -> CachedAnswer:
    kept = tuple((k, v) for k, v in response.headers.items() if k.lower() == "retry-after")
    return CachedAnswer(response.status_code, bytes(response.body), kept)


async def _keyed(op: Operation, request: Request, sandbox: Sandbox) -> Response:
    state, key = sandbox.state, request.headers["idempotency-key"]
    if not rules.is_guid(key):
        state.breach("idempotency_key_not_guid", request.path_params.get("companyId", ""), None,
                     f"Idempotency-Key {key[:64]!r} is not a GUID")  # fmt: skip
    fingerprint = IdempotencyStore.fingerprint(request.method, request.url.path, await request.body())
    outcome = state.idempotency.begin(key, fingerprint, state.now())
    if isinstance(outcome, CachedAnswer):
        return Response(outcome.body, outcome.status, headers=dict(outcome.headers), media_type="application/json")
    if outcome == "mismatch":
        return codat_error(422, "This Idempotency-Key was used with a different request body")
    if outcome == "in_flight":
        return codat_error(409, "A request with this Idempotency-Key is still being processed")
    try:
        response = await _answer(op, request, sandbox, key)
    except BaseException:
        if not getattr(request.state, "cached", False):
            state.idempotency.release(key)  # the sandbox itself failed, or its client went away mid-request
        raise
    if not getattr(request.state, "cached", False):
        state.idempotency.finish(key, _cached(response))
    return response


async def not_served(request: Request, exc: Exception) -> Response:
    """Codat's JSON error for a route it does not serve (404) or a method it does not take (405 + Allow)."""
    assert isinstance(exc, HTTPException)
    if request.url.path.startswith("/_sandbox/"):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)
    sandbox: Sandbox = request.app.state.sandbox
    headers = dict(exc.headers) if exc.headers else None  # a 405's `Allow`
    return with_rate_headers(codat_error(exc.status_code, headers=headers), sandbox.state)
