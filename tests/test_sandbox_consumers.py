"""The sandbox's webhook consumers: Platform `GET/POST /webhooks`, `DELETE /webhooks/{webhookId}` in the shapes of
platform-current.json (`WebhookConsumer`), and delivery of each event only to the consumers subscribed to its
type, signed with that consumer's own secret (checked with the svix library as the oracle)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from svix.webhooks import Webhook, WebhookVerificationError

from service.clock import FixedClock
from tests.test_sandbox import COMPANY, SECRET, Harness, MakeHarness, assert_matches_spec, make_harness

__all__ = ["make_harness"]  # the fixture is shared by import

SPEC = "platform-current.json"
CONSUMER = "/components/schemas/WebhookConsumer"
CONSUMERS = "/components/schemas/WebhookConsumer/definitions/webhookConsumers"
URL_A = "http://a.test/webhooks/codat"
URL_B = "http://b.test/webhooks/codat"


async def _create(h: Harness, url: str, *types: str, **extra: Any) -> dict[str, Any]:
    response = await h.client.post("/webhooks", json={"url": url, "eventTypes": list(types), **extra})
    assert response.status_code == 201, response.text  # create-webhook-consumer answers 201 (platform spec)
    body: dict[str, Any] = response.json()
    return body


async def _secrets(h: Harness) -> dict[str, str]:
    return {c["id"]: c["signingSecret"] for c in (await h.get("/_sandbox/consumers"))["results"]}


async def test_consumer_endpoints_answer_in_the_specs_shapes(make_harness: MakeHarness) -> None:
    """POST answers a WebhookConsumer, GET the webhookConsumers list, DELETE 204 then 404 (spec shapes)."""
    h = await make_harness()
    created = await _create(h, URL_A, "read.completed", companyTags=["region:uk"])
    assert_matches_spec(created, SPEC, CONSUMER)
    assert "secret" not in json.dumps(created).lower()  # the API never returns the signing secret
    listed = await h.get("/webhooks")
    assert_matches_spec(listed, SPEC, CONSUMERS)
    assert listed["results"] == [created]
    assert (await h.client.delete(f"/webhooks/{created['id']}")).status_code == 204
    assert (await h.client.delete(f"/webhooks/{created['id']}")).status_code == 404
    assert (await h.get("/webhooks"))["results"] == []


async def test_consumer_bodies_are_validated_and_limited_to_fifty(make_harness: MakeHarness) -> None:
    """No event type, a non-URL or 11 tags are 400; the 51st consumer is refused (Codat's limit of 50)."""
    h = await make_harness()
    for bad in ({"url": URL_A, "eventTypes": []}, {"url": "ftp://x", "eventTypes": ["read.completed"]},
                {"url": URL_A, "eventTypes": ["read.completed"], "companyTags": [f"t:{n}" for n in range(11)]}):
        assert (await h.client.post("/webhooks", json=bad)).status_code == 400
    for n in range(50):
        await _create(h, f"{URL_A}?{n}", "read.completed")
    assert (await h.client.post("/webhooks", json={"url": URL_A, "eventTypes": ["x"]})).status_code == 400


async def test_events_reach_only_subscribed_consumers_signed_with_their_own_secret(
    make_harness: MakeHarness,
) -> None:
    """connection.deleted goes to its consumer only, signed with that consumer's secret, not the config's."""
    h = await make_harness(webhook_shape="envelope", webhook_secret=SECRET, clock=FixedClock(time.time()))
    deleted = await _create(h, URL_A, "connection.deleted")
    other = await _create(h, URL_B, "read.completed")
    secrets = await _secrets(h)
    await h.client.post(f"/_sandbox/companies/{COMPANY}/delete-connection")
    await h.settle()
    [request] = h.receiver.requests
    assert str(request.url) == URL_A
    Webhook(secrets[deleted["id"]]).verify(request.content, dict(request.headers))  # raises if not
    assert json.loads(request.content)["eventType"] == "connection.deleted"
    for wrong in (secrets[other["id"]], SECRET):
        with pytest.raises(WebhookVerificationError):
            Webhook(wrong).verify(request.content, dict(request.headers))
    [delivery] = (await h.get("/_sandbox/webhooks"))["results"]
    assert delivery["consumerId"] == deleted["id"] and delivery["outcome"] == "delivered"


async def test_an_event_no_consumer_subscribes_to_is_not_sent(make_harness: MakeHarness) -> None:
    """Once consumers exist, the configured webhook_url gets nothing: an unsubscribed type is not delivered."""
    h = await make_harness(webhook_shape="envelope", webhook_secret=SECRET, clock=FixedClock(time.time()))
    await _create(h, URL_A, "read.completed")
    await h.client.post(f"/_sandbox/companies/{COMPANY}/delete-connection")
    await h.settle()
    assert h.receiver.requests == []


async def test_a_disabled_consumer_receives_nothing(make_harness: MakeHarness) -> None:
    """`disabled: true` stops deliveries, as in Codat."""
    h = await make_harness(webhook_shape="envelope", webhook_secret=SECRET, clock=FixedClock(time.time()))
    await _create(h, URL_A, "connection.deleted", disabled=True)
    await h.client.post(f"/_sandbox/companies/{COMPANY}/delete-connection")
    await h.settle()
    assert h.receiver.requests == []


async def test_send_example_is_signed_with_the_consumers_secret(make_harness: MakeHarness) -> None:
    """`POST /_sandbox/consumers/{id}/test` (the Portal's Send example) returns the receiver's status."""
    h = await make_harness(clock=FixedClock(time.time()))
    created = await _create(h, URL_A, "read.completed")
    answer = (await h.client.post(f"/_sandbox/consumers/{created['id']}/test")).json()
    assert answer == {"consumerId": created["id"], "status": 200, "error": None}
    [request] = h.receiver.requests
    Webhook((await _secrets(h))[created["id"]]).verify(request.content, dict(request.headers))  # raises if not
    assert json.loads(request.content)["eventType"] == "sandbox.test"
    assert (await h.client.post("/_sandbox/consumers/nope/test")).status_code == 404
