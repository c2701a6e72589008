"""`POST /webhooks/codat`: read capped, authenticate the raw bytes, parse, store durably, answer.

Codat's legacy delivery never retries a 400 or a 500, so every fault of ours must answer 503 with
Retry-After, and only what a retry could never fix answers 4xx.

Two doors lead to one `WebhookEndpoint.answer`: the Starlette route (`handle`), and a raw ASGI fast path
(`asgi`, taken by service/web/app.py's `RelayApp` before Starlette's middleware, router and Request) —
the same reading, verifier, parser, group-commit writer, answers, log line and counters.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service import tracing
from service.alerts import parse_alert
from service.clock import Clock
from service.errors import MalformedPayload, PayloadTooLarge, Rejected, RelayError, RetryLater
from service.ingest import Answer, Ingestor
from service.metrics import DELIVERIES
from service.settings import Settings
from service.signatures import HEADER_PREFIXES, check_authorization, decode_secret, signature_headers, verify
from service.web.responses import json_response, rejected_response, retry_later_response

log = structlog.get_logger("service.web.webhooks")

WEBHOOK_PATH = "/webhooks/codat"

ANSWER_STATUS = {Answer.ACCEPTED: 202, Answer.DUPLICATE: 200, Answer.IGNORED: 200}
# The sender hung up before its body was complete: nothing was stored and nobody reads an answer. Not
# an error of ours and not a failed delivery (anyone can do it): counted and logged under its own name.
CLIENT_DISCONNECTED = "client_disconnected"
CLIENT_CLOSED_REQUEST = 499  # nginx's name for it; never seen by the client, which has gone


@functools.cache
def _counter(outcome: str) -> Any:
    """The labelled child, looked up once per outcome rather than per delivery."""
    return DELIVERIES.labels(outcome=outcome)


@dataclass(frozen=True)
class WebhookAuth:
    keys: tuple[bytes, ...]
    legacy_header: str | None
    tolerance_s: int
    allow_unauthenticated: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookAuth:
        header = settings.webhook_auth_header
        return cls(
            keys=tuple(decode_secret(s.get_secret_value()) for s in settings.webhook_secrets),
            legacy_header=header.get_secret_value() if header is not None else None,
            tolerance_s=settings.signature_tolerance_seconds,
            allow_unauthenticated=settings.allow_unauthenticated_webhooks,
        )

    def authenticate(self, body: bytes, headers: Any, now: float) -> tuple[str | None, bool]:
        """(signed message id or None, whether the delivery was signed); raises when not authentic."""
        if self.keys and signature_headers(headers) is not None:
            return verify(body, headers, self.keys, now, self.tolerance_s), True
        if self.legacy_header is not None:
            check_authorization(headers.get("authorization"), self.legacy_header)
            return _header_id(headers), False
        if self.keys:
            verify(body, headers, self.keys, now, self.tolerance_s)  # raises: unsigned delivery
        return _header_id(headers), False  # RELAY_ALLOW_UNAUTHENTICATED_WEBHOOKS (development only)


def _header_id(headers: Any) -> str | None:
    """An unsigned delivery's `webhook-id`/`svix-id`: still its delivery id (CONTRACT.md), if it has one."""
    for prefix in HEADER_PREFIXES:
        if value := headers.get(prefix + "id"):
            return str(value)
    return None


async def read_capped(request: Request, limit: int) -> bytes:
    """The body, refusing (413) as soon as it passes `limit` — the rest is never read into memory."""
    return await read_stream_capped(request.headers, request.stream(), limit)


async def read_stream_capped(headers: Mapping[str, str], stream: AsyncIterator[bytes], limit: int) -> bytes:
    """`read_capped` for a body stream and its request's headers (the ASGI fast path has no Request)."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge()
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


def request_headers(scope: Scope) -> dict[str, str]:
    """The request's headers as Starlette's `Headers` reads them (the first of a repeated name wins), in a
    dict: the delivery looks up about seven, and each `Headers.get` scans and re-encodes."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in reversed(scope["headers"])}


async def body_stream(receive: Receive) -> AsyncIterator[bytes]:
    """The request body from raw ASGI messages, as Starlette's `Request.stream` yields it (a sender that
    hangs up mid-body raises ClientDisconnect)."""
    while True:
        message = await receive()
        if message["type"] == "http.request":
            if body := message.get("body", b""):
                yield body
            if not message.get("more_body", False):
                return
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedPayload(f"not valid JSON: {exc.msg}") from None
    if not isinstance(obj, dict):
        raise MalformedPayload("the body is not a JSON object")
    return obj


class WebhookEndpoint:
    def __init__(self, settings: Settings, ingestor: Ingestor, clock: Clock) -> None:
        self._auth = WebhookAuth.from_settings(settings)
        self._limit = settings.max_body_bytes
        self._ingestor = ingestor
        self._clock = clock

    async def handle(self, request: Request) -> Response:
        """The Starlette route."""
        return await self.answer(request.headers, request.stream())

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The fast path: the same answer, without Starlette's middleware, router and Request."""
        response = await self.answer(request_headers(scope), body_stream(receive))
        await response(scope, receive, send)

    async def answer(self, headers: Mapping[str, str], stream: AsyncIterator[bytes]) -> Response:
        """Every answer but a bug's (raised, for the app's 500) — both doors answer through here."""
        if not tracing.enabled():
            return await self._answer(headers, stream)
        # The trace starts here, or continues the sender's when it sent a W3C `traceparent` header.
        with tracing.span("POST /webhooks/codat", kind=tracing.SERVER, parent=headers,
                          attributes={"http.request.method": "POST", "http.route": "/webhooks/codat"}):  # fmt: skip
            response = await self._answer(headers, stream)
            tracing.annotate(**{"http.response.status_code": response.status_code})
            return response

    async def _answer(self, headers: Mapping[str, str], stream: AsyncIterator[bytes]) -> Response:
        started = time.perf_counter()
        fields: dict[str, Any] = {}
        outcome = "error"
        try:
            body = await read_stream_capped(headers, stream, self._limit)
            now = self._clock.now()
            msg_id, signed = self._auth.authenticate(body, headers, now)
            alert = parse_alert(parse_json_object(body), body, header_id=msg_id, signed=signed, received_at=now)
            fields = {"delivery_id": alert.delivery_id, "type": alert.type, "company_id": alert.company_id}
            if tracing.enabled():  # the hot path builds no attributes when tracing is off
                tracing.annotate(**{"codat.delivery_id": alert.delivery_id, "codat.event_type": alert.type,
                                    "codat.company_id": alert.company_id, "relay.alert_kind": alert.kind.value})
            answer = await self._ingestor.submit(alert)
            outcome = answer.value
            return json_response({"status": answer.value, "id": alert.delivery_id}, ANSWER_STATUS[answer])
        except ClientDisconnect:
            outcome = CLIENT_DISCONNECTED
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        except Rejected as exc:
            outcome = exc.code
            return rejected_response(exc)
        except RetryLater as exc:
            outcome = "unavailable"
            return retry_later_response(exc)
        except RelayError:
            outcome = "unavailable"
            raise
        finally:
            _counter(outcome).inc()
            log.info(
                "webhook_received",
                outcome=outcome,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
                **fields,
            )
