"""The sandbox's fault injection, idempotency, rule-breach recording, webhook retries and configuration."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from service.sandbox import SandboxConfig, add_arguments, config_from_args
from tests.test_sandbox import (
    COMPANY,
    ORDERS,
    MakeHarness,
    assert_matches_spec,
    make_harness,
    order,
)

__all__ = ["make_harness"]  # the fixture is shared by import


async def _kinds(h: Any) -> list[str]:
    return [b["kind"] for b in (await h.get("/_sandbox/breaches"))["results"]]


# -- endpoint faults -------------------------------------------------------------------------------


async def test_error_rate_answers_codat_errors_from_a_seeded_random(make_harness: MakeHarness) -> None:
    """errorRate 1 fails every request with 500/503 Codat errors; 0.5 fails some, the same ones per seed."""
    outcomes = []
    for _ in range(2):
        h = await make_harness(seed=7)
        await h.client.put("/_sandbox/faults/push", json={"errorRate": 0.5})
        outcomes.append([(await h.push(ORDERS, "orders", [order(f"o-{n}")])).status_code for n in range(20)])
    assert outcomes[0] == outcomes[1]
    assert set(outcomes[0]) == {200, 500, 503}
    await h.client.delete("/_sandbox/faults")
    await h.client.put("/_sandbox/faults/*", json={"errorRate": 1.0, "errorStatuses": [503]})
    failed = await h.client.get(f"/meta/companies/{COMPANY}/sync/commerce/status")
    assert failed.status_code == 503 and failed.json()["canBeRetried"] == "True"
    assert_matches_spec(failed.json(), "sync-commerce-current.json", "/components/schemas/ErrorMessage")


async def test_429_burst_carries_retry_after_then_clears(make_harness: MakeHarness) -> None:
    """burst429 N answers the next N requests 429 + Retry-After, then requests succeed again."""
    h = await make_harness()
    await h.client.put("/_sandbox/faults/push", json={"burst429": 2, "retryAfterS": 7})
    answers = [await h.push(ORDERS, "orders", [order(f"o-{n}")]) for n in range(3)]
    assert [a.status_code for a in answers] == [429, 429, 200]
    assert answers[0].headers["retry-after"] == "7" and answers[0].json()["statusCode"] == 429
    assert len((await h.get("/_sandbox/pushes"))["results"]) == 1


async def test_latency_delays_every_answer(make_harness: MakeHarness) -> None:
    """latencyS adds that much time before the answer."""
    h = await make_harness()
    await h.client.put("/_sandbox/faults/dataset", json={"latencyS": 0.2})
    started = time.monotonic()
    assert (await h.client.get(f"/meta/companies/{COMPANY}/pull/history/nope")).status_code == 404
    assert time.monotonic() - started >= 0.2


async def test_timeouts_hang_past_the_client_deadline_then_clear(make_harness: MakeHarness) -> None:
    """timeouts 1 makes the next request hang for hangS (the client gives up), the one after is normal."""
    h = await make_harness()
    await h.client.put("/_sandbox/faults/push", json={"timeouts": 1, "hangS": 30})
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(h.push(ORDERS, "orders", [order("o-1")]), timeout=0.2)
    assert (await h.push(ORDERS, "orders", [order("o-1")])).status_code == 200
    counts = (await h.get("/_sandbox/requests"))["results"]
    assert {"endpoint": "push", "status": 504, "count": 1} in counts


async def test_unknown_fault_settings_are_refused(make_harness: MakeHarness) -> None:
    """A typo in a fault or an unknown endpoint is a 400, never silently ignored."""
    h = await make_harness()
    assert (await h.client.put("/_sandbox/faults/push", json={"errorRat": 1})).status_code == 400
    assert (await h.client.put("/_sandbox/faults/nowhere", json={})).status_code == 400
    assert (await h.client.put("/_sandbox/faults/webhooks", json={"duplicates": 0})).status_code == 400


# -- idempotency -----------------------------------------------------------------------------------


async def test_idempotency_key_replays_refuses_other_body_and_in_flight(make_harness: MakeHarness) -> None:
    """Same key + body → cached answer (no second dataset); other body → 422; still in flight → 409."""
    h = await make_harness(push_processing_seconds=0.1)
    key = {"Idempotency-Key": "k-1"}
    first, in_flight = await asyncio.gather(
        h.push(ORDERS, "orders", [order("o-1")], headers=key),
        h.push(ORDERS, "orders", [order("o-1")], headers=key),
    )
    assert (first.status_code, in_flight.status_code) == (200, 409)
    again = await h.push(ORDERS, "orders", [order("o-1")], headers=key)
    assert again.status_code == 200 and again.json() == first.json()
    other = await h.push(ORDERS, "orders", [order("o-2")], headers=key)
    assert other.status_code == 422
    assert len((await h.get("/_sandbox/pushes"))["results"]) == 1
    h.clock.advance(91 * 60)  # the cache lasts 90 minutes
    later = await h.push(ORDERS, "orders", [order("o-2")], headers=key)
    assert later.status_code == 200 and later.json()["datasetId"] != first.json()["datasetId"]


async def test_idempotency_key_replays_a_5xx_but_releases_a_429(make_harness: MakeHarness) -> None:
    """Codat caches every keyed answer but 429 (docs/using-the-api/write-data/idempotency.md): an injected 500
    is replayed under its key even once the fault is gone; after a 429 the same key goes through."""
    h = await make_harness()
    await h.client.put("/_sandbox/faults/push", json={"errorRate": 1.0, "errorStatuses": [500]})
    assert (await h.push(ORDERS, "orders", [order("o-1")], headers={"Idempotency-Key": "k-500"})).status_code == 500
    await h.client.delete("/_sandbox/faults")
    assert (await h.push(ORDERS, "orders", [order("o-1")], headers={"Idempotency-Key": "k-500"})).status_code == 500
    assert (await h.push(ORDERS, "orders", [order("o-1")], headers={"Idempotency-Key": "k-new"})).status_code == 200
    await h.client.put("/_sandbox/faults/push", json={"burst429": 1})
    assert (await h.push(ORDERS, "orders", [order("o-2")], headers={"Idempotency-Key": "k-429"})).status_code == 429
    assert (await h.push(ORDERS, "orders", [order("o-2")], headers={"Idempotency-Key": "k-429"})).status_code == 200
    assert len((await h.get("/_sandbox/pushes"))["results"]) == 2


# -- rule breaches ---------------------------------------------------------------------------------


async def test_concurrent_pushes_of_one_data_type_are_a_breach(make_harness: MakeHarness) -> None:
    """Two overlapping pushes of orders for one company are recorded; orders + payments at once are not."""
    h = await make_harness(push_processing_seconds=0.1)
    payments = f"/data/companies/{COMPANY}/sync/commerce-payments"
    await asyncio.gather(
        h.push(ORDERS, "orders", [order("o-1")]), h.push(payments, "payments", [{"id": "p-1"}])
    )
    assert await _kinds(h) == []
    await asyncio.gather(h.push(ORDERS, "orders", [order("o-2")]), h.push(ORDERS, "orders", [order("o-3")]))
    [breach] = (await h.get("/_sandbox/breaches"))["results"]
    assert (breach["kind"], breach["severity"], breach["dataType"]) == (
        "concurrent_push",
        "error",
        "commerce-orders",
    )


async def test_more_than_5000_records_is_rejected_and_recorded(make_harness: MakeHarness) -> None:
    """5,001 records → 400 with a validation error, no dataset, and a too_many_records breach; 5,000 pass."""
    h = await make_harness()
    too_many = await h.push(ORDERS, "orders", [{"id": f"o-{n}"} for n in range(5001)])
    assert too_many.status_code == 400 and too_many.json()["validation"]["errors"]
    assert await _kinds(h) == ["too_many_records"]
    assert (await h.push(ORDERS, "orders", [{"id": f"o-{n}"} for n in range(5000)])).status_code == 200
    assert len((await h.get("/_sandbox/datasets"))["results"]) == 1


async def test_record_level_breaches(make_harness: MakeHarness) -> None:
    """Non-sparse delete, unchanged re-push and a changed record with the same sourceModifiedDate."""
    h = await make_harness()
    await h.push(ORDERS, "orders", [order("o-1"), order("o-2")])
    await h.push(ORDERS, "orders", [{"id": "o-1", "currency": None, "orderNumber": None}])  # nullable fields
    await h.push(ORDERS, "orders", [order("o-2")])
    await h.push(ORDERS, "orders", [order("o-2", amount=99.0)])
    await h.push(ORDERS, "orders", [{"id": "o-2"}])  # a proper sparse delete is no breach
    breaches = (await h.get("/_sandbox/breaches"))["results"]
    assert [(b["kind"], b["severity"], b["recordId"]) for b in breaches] == [
        ("non_sparse_delete", "error", "o-1"),
        ("duplicate_record", "warning", "o-2"),
        ("stale_update", "warning", "o-2"),
    ]
    held = {r["id"]: r for r in (await h.get("/_sandbox/records"))["results"]}
    assert held["o-2"]["deleted"] is True and held["o-2"]["data"] == {"id": "o-2"}


async def test_changing_a_synchronised_record_is_a_breach(make_harness: MakeHarness) -> None:
    """After a successful sync, a changed (or deleted) o-1 is update_after_sync; a new o-3 is fine."""
    h = await make_harness()
    await h.push(ORDERS, "orders", [order("o-1"), order("o-2")])
    assert (await h.client.post(f"/companies/{COMPANY}/sync/commerce/latest")).json()[
        "syncStatusCode"
    ] == 2000
    changed = order("o-1", amount=11.0, modified="2025-06-02T10:00:00Z")
    await h.push(ORDERS, "orders", [changed, {"id": "o-2"}, order("o-3")])
    breaches = (await h.get("/_sandbox/breaches"))["results"]
    assert [(b["kind"], b["recordId"]) for b in breaches] == [
        ("update_after_sync", "o-1"),
        ("update_after_sync", "o-2"),
    ]
    held = {r["id"]: r for r in (await h.get("/_sandbox/records"))["results"]}
    assert (held["o-1"]["synced"], held["o-1"]["versions"], held["o-3"]["synced"]) == (True, 2, False)


# -- webhook delivery ------------------------------------------------------------------------------


async def test_webhooks_are_retried_on_retryable_statuses_honouring_retry_after(
    make_harness: MakeHarness,
) -> None:
    """503 + Retry-After, 429 → retried with the same id; a 400 is never retried (the alert is lost)."""
    h = await make_harness()
    h.receiver.script.extend([httpx.Response(503, headers={"Retry-After": "0"}), httpx.Response(429)])
    await h.push(ORDERS, "orders", [order("o-1")])
    await h.settle()
    [delivery] = (await h.get("/_sandbox/webhooks"))["results"]
    assert [a["status"] for a in delivery["attempts"]] == [503, 429, 200]
    assert delivery["attempts"][0]["retryAfter"] == 0 and delivery["outcome"] == "delivered"
    assert len({json.loads(r.content)["AlertId"] for r in h.receiver.requests}) == 1
    h.receiver.script.append(httpx.Response(400))
    await h.push(ORDERS, "orders", [order("o-2")])
    await h.settle()
    lost = (await h.get("/_sandbox/webhooks"))["results"][-1]
    assert ([a["status"] for a in lost["attempts"]], lost["outcome"]) == ([400], "failed")


async def test_webhook_retries_are_bounded(make_harness: MakeHarness) -> None:
    """A receiver that always answers 503 gets the first attempt plus one per configured retry delay."""
    h = await make_harness(webhook_retry_delays=(0.0, 0.0))
    h.receiver.script.extend([httpx.Response(503)] * 10)
    await h.push(ORDERS, "orders", [order("o-1")])
    await h.settle()
    [delivery] = (await h.get("/_sandbox/webhooks"))["results"]
    assert len(delivery["attempts"]) == 3 and delivery["outcome"] == "failed"


async def test_duplicate_webhooks_are_sent_concurrently_with_one_id(make_harness: MakeHarness) -> None:
    """duplicates 3 sends each webhook three times, same AlertId, each recorded as its own delivery."""
    h = await make_harness()
    await h.client.put("/_sandbox/faults/webhooks", json={"duplicates": 3})
    await h.push(ORDERS, "orders", [order("o-1")])
    await h.settle()
    assert len(h.receiver.requests) == 3
    assert len({b["AlertId"] for b in h.receiver.bodies()}) == 1
    assert [d["copy"] for d in (await h.get("/_sandbox/webhooks"))["results"]] == [0, 1, 2]


async def test_out_of_order_delivery_shuffles_a_window_of_events(make_harness: MakeHarness) -> None:
    """reorderWindow 3 holds three webhooks and sends them in an order other than they happened."""
    h = await make_harness()
    await h.client.put("/_sandbox/faults/webhooks", json={"reorderWindow": 3})
    dataset_ids = [(await h.push(ORDERS, "orders", [order(f"o-{n}")])).json()["datasetId"] for n in range(3)]
    await h.settle()
    received = [b["Data"]["datasetId"] for b in h.receiver.bodies()]
    assert sorted(received) == sorted(dataset_ids) and received != dataset_ids
    await h.push(ORDERS, "orders", [order("o-9")])
    await h.settle()
    assert len(h.receiver.requests) == 3  # held until the window fills or is flushed
    assert (await h.client.post("/_sandbox/webhooks/flush")).json() == {"sent": 1}
    await h.settle()
    assert len(h.receiver.requests) == 4


async def test_without_a_webhook_url_events_are_recorded_not_sent(make_harness: MakeHarness) -> None:
    """No webhook_url: the would-be delivery is listed with outcome no_url."""
    h = await make_harness(webhook_url=None)
    await h.push(ORDERS, "orders", [order("o-1")])
    await h.settle()
    [delivery] = (await h.get("/_sandbox/webhooks"))["results"]
    assert delivery["outcome"] == "no_url" and delivery["eventType"] == "DataSyncCompleted"


async def test_reset_forgets_everything(make_harness: MakeHarness) -> None:
    """POST /_sandbox/reset empties companies, pushes, datasets, records, breaches, webhooks and faults."""
    h = await make_harness()
    await h.push(ORDERS, "orders", [order("o-1"), order("o-1")])
    await h.client.put("/_sandbox/faults/push", json={"burst429": 5})
    await h.settle()
    await h.client.post("/_sandbox/reset")
    for what in ("companies", "pushes", "datasets", "records", "breaches", "webhooks"):
        assert (await h.get(f"/_sandbox/{what}"))["results"] == [], what
    assert (await h.push(ORDERS, "orders", [order("o-1")])).status_code == 404  # the company went too
    await h.client.post("/_sandbox/companies", json={"id": COMPANY})
    assert (await h.push(ORDERS, "orders", [order("o-1")])).status_code == 200


# -- configuration and the schema check itself -----------------------------------------------------


def test_config_from_env_reads_codat_sandbox_variables_only() -> None:
    """CODAT_SANDBOX_* fill the config; RELAY_* are ignored; an unknown CODAT_SANDBOX_ name is refused."""
    env = {
        "CODAT_SANDBOX_WEBHOOK_URL": "http://localhost:8000/webhooks/codat",
        "CODAT_SANDBOX_WEBHOOK_SHAPE": "envelope",
        "CODAT_SANDBOX_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "CODAT_SANDBOX_PACE_SECONDS": "2.5",
        "CODAT_SANDBOX_SVIX_HEADERS": "true",
        "RELAY_PORT": "8000",
    }
    config = SandboxConfig.from_env(env)
    assert (config.webhook_shape, config.pace_seconds, config.svix_headers) == ("envelope", 2.5, True)
    with pytest.raises(ValueError, match="CODAT_SANDBOX_PACE"):
        SandboxConfig.from_env({"CODAT_SANDBOX_PACE": "1"})
    with pytest.raises(ValueError, match="CODAT_SANDBOX_SEED"):
        SandboxConfig.from_env({"CODAT_SANDBOX_SEED": "x"})
    with pytest.raises(ValueError, match="webhook_secret"):
        SandboxConfig(webhook_shape="legacy_signed")


def test_cli_arguments_override_the_environment() -> None:
    """add_arguments + config_from_args: options given win over CODAT_SANDBOX_*, the rest fall through."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    ns = parser.parse_args(["--port", "9000", "--pace-seconds", "1", "--webhook-shape", "legacy"])
    config = config_from_args(ns, {"CODAT_SANDBOX_PACE_SECONDS": "9", "CODAT_SANDBOX_SEED": "3"})
    assert (ns.port, config.pace_seconds, config.seed, config.webhook_shape) == (9000, 1.0, 3, "legacy")


def test_the_spec_check_rejects_a_wrong_shape() -> None:
    """The schema oracle is not vacuous: a dataset missing fields or with a bad status fails it."""
    with pytest.raises(AssertionError):
        assert_matches_spec(
            {"id": "x", "status": "Done"}, "platform-current.json", "/components/schemas/PullOperation"
        )
