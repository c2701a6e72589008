"""Webhook consumers, as Codat's Platform API serves them (`GET/POST /webhooks`, `DELETE /webhooks/{webhookId}`,
schemas `WebhookConsumer` in platform-current.json), each with its own `whsec_` signing secret.

Codat shows a consumer's secret in its Portal only; the sandbox's Portal is `GET /_sandbox/consumers`.
`POST /_sandbox/consumers/{id}/test` is the Portal's "Testing > Send example": one signed delivery to that
consumer, answered with the receiver's status, so a user (or `codat-relay doctor`) sees whether the
receiver holds the consumer's secret.

Once any consumer exists, webhooks go to the consumers subscribed to each event's type (the configured
`webhook_url` is no longer used); with none, the sandbox sends to `webhook_url` as before.
Consumers are client configuration, like the API key: `/_sandbox/reset` keeps them.
The sandbox's companies carry no tags, so `companyTags` are stored and shown but filter nothing.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.sandbox.edge import Operation, Sandbox, codat_error, codat_route
from service.sandbox.model import iso
from service.signatures import decode_secret, sign

MAX_CONSUMERS = 50  # "The number of webhook consumers you can create is limited to 50" (create-webhook-consumer)
MAX_COMPANY_TAGS = 10  # WebhookConsumer.companyTags maxItems
MAX_TAG_LENGTH = 128
SECRET_BYTES = 24
TEST_EVENT_TYPE = "sandbox.test"  # the Portal's example message, never an event the sandbox otherwise sends
TEST_TIMEOUT_S = 15.0  # Codat's own limit for a 2xx


@dataclass
class Consumer:
    id: str
    url: str
    event_types: list[str]
    disabled: bool
    company_tags: list[str] | None
    secret: str

    def to_json(self) -> dict[str, Any]:
        """Exactly `WebhookConsumer`'s properties: the secret is not among them."""
        return {"id": self.id, "url": self.url, "eventTypes": self.event_types, "disabled": self.disabled,
                "companyTags": self.company_tags}  # fmt: skip

    def subscribes(self, event_type: str) -> bool:
        return not self.disabled and event_type in self.event_types


@dataclass
class ConsumerStore:
    consumers: dict[str, Consumer] = field(default_factory=dict)

    def add(self, url: str, event_types: list[str], disabled: bool, company_tags: list[str] | None) -> Consumer:
        # Random on every run, as every id the sandbox issues: a restarted sandbox reissues none.
        consumer_id = str(uuid.uuid4())
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()
        consumer = Consumer(consumer_id, url, event_types, disabled, company_tags, secret)
        self.consumers[consumer_id] = consumer
        return consumer

    def for_event(self, event_type: str) -> list[Consumer]:
        return [c for c in self.consumers.values() if c.subscribes(event_type)]


def validation_problem(body: Any) -> str | None:
    """Why a `webhookConsumerPrototype` body is refused, or None."""
    if not isinstance(body, dict):
        return "The body must be a JSON object"
    url = body.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return "'url' must be an http(s) URI"
    types = body.get("eventTypes")
    if not isinstance(types, list) or not types or not all(isinstance(t, str) and t for t in types):
        return "'eventTypes' must list at least one event type"  # the Portal: "at least one event type"
    if body.get("disabled") is not None and not isinstance(body.get("disabled"), bool):
        return "'disabled' must be a boolean"
    tags = body.get("companyTags")
    if tags is not None and (not isinstance(tags, list) or len(tags) > MAX_COMPANY_TAGS
                             or not all(isinstance(t, str) and len(t) <= MAX_TAG_LENGTH for t in tags)):
        return f"'companyTags' holds at most {MAX_COMPANY_TAGS} strings of at most {MAX_TAG_LENGTH} characters"
    return None


def _store(request: Request) -> ConsumerStore:
    store: ConsumerStore = request.app.state.consumers
    return store


async def list_consumers(request: Request, sandbox: Sandbox) -> Response:
    return JSONResponse({"results": [c.to_json() for c in _store(request).consumers.values()]})


async def create_consumer(request: Request, sandbox: Sandbox) -> Response:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return codat_error(400, "The request body is not valid JSON")
    problem = validation_problem(body)
    if problem is not None:
        return codat_error(400, problem)
    store = _store(request)
    if len(store.consumers) >= MAX_CONSUMERS:
        return codat_error(400, f"The number of webhook consumers is limited to {MAX_CONSUMERS}")
    consumer = store.add(body["url"], list(body["eventTypes"]), bool(body.get("disabled")), body.get("companyTags"))
    return JSONResponse(consumer.to_json(), status_code=201)  # create-webhook-consumer: "201 Created"


async def delete_consumer(request: Request, sandbox: Sandbox) -> Response:
    if _store(request).consumers.pop(request.path_params["webhookId"], None) is None:
        return codat_error(404, "Webhook consumer not found")
    return Response(status_code=204)


async def portal(request: Request) -> Response:
    """The sandbox's Portal view: every consumer with its signing secret."""
    return JSONResponse({"results": [c.to_json() | {"signingSecret": c.secret}
                                     for c in _store(request).consumers.values()]})  # fmt: skip


async def send_example(request: Request) -> Response:
    """One signed test message to one consumer; the receiver's answer is returned, not retried."""
    consumer = _store(request).consumers.get(request.path_params["webhookId"])
    if consumer is None:
        return JSONResponse({"error": "no such consumer"}, status_code=404)
    sandbox: Sandbox = request.app.state.sandbox
    now = sandbox.state.now()
    message_id = "msg_" + uuid.uuid4().hex
    raw = orjson.dumps({"id": message_id, "eventType": TEST_EVENT_TYPE, "generatedDate": iso(now),
                        "payload": {"consumerId": consumer.id}})  # fmt: skip
    headers = {"content-type": "application/json", "webhook-id": message_id, "webhook-timestamp": str(int(now)),
               "webhook-signature": sign(decode_secret(consumer.secret), message_id, int(now), raw)}  # fmt: skip
    try:
        async with httpx.AsyncClient(transport=request.app.state.webhook_transport, timeout=TEST_TIMEOUT_S) as http:
            answer = await http.post(consumer.url, content=raw, headers=headers)
    except httpx.HTTPError as exc:
        return JSONResponse({"consumerId": consumer.id, "status": None, "error": type(exc).__name__})
    return JSONResponse({"consumerId": consumer.id, "status": answer.status_code, "error": None})


ROUTES = [
    codat_route("/webhooks", {"GET": Operation("list_webhook_consumers", list_consumers),
                              "POST": Operation("create_webhook_consumer", create_consumer)}),
    codat_route("/webhooks/{webhookId}", {"DELETE": Operation("delete_webhook_consumer", delete_consumer)}),
    Route("/_sandbox/consumers", portal, methods=["GET"]),
    Route("/_sandbox/consumers/{webhookId}/test", send_example, methods=["POST"]),
]  # fmt: skip
