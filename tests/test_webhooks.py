"""`POST /webhooks/codat` on both backends: authentication, parsing, durable storage and the answers."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from service import queue
from service.clock import FixedClock
from service.db import alerts, create_engine, jobs
from service.queue import Job
from service.settings import Settings
from service.testing import (
    COMPANY_ID,
    connection_deleted_body,
    legacy_body,
    read_completed_body,
    running_app,
    signed_headers,
)
from service.web.app import AppOptions
from tests.conftest import TEST_AUTH_HEADER, TEST_SECRET, make_settings
from tests.queue_helpers import eventually

NOW = 1_750_000_000.0
HEALTH_DEADLINE_S = 10.0  # an upper bound, not a wait: the worker's next round fails at once when woken
OLD_SECRET = "whsec_" + base64.b64encode(b"an-older-secret-still-in-rotation").decode()


def svix_headers(body: bytes, *, secret: str = TEST_SECRET, msg_id: str | None = None, at: float = NOW,
                 prefix: str = "webhook-") -> dict[str, str]:
    """Signed headers from the one signing helper, as JSON."""
    return {**signed_headers(body, secret, msg_id=msg_id, at=at, prefix=prefix), "content-type": "application/json"}


async def stored(settings: Settings) -> list[dict[str, Any]]:
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(sa.select(alerts).order_by(alerts.c.id))).mappings()]
    finally:
        await engine.dispose()


async def job_count(settings: Settings) -> int:
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(sa.select(sa.func.count()).select_from(jobs))).scalar_one()
    finally:
        await engine.dispose()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


async def post(client: httpx.AsyncClient, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return await client.post("/webhooks/codat", content=body, headers=headers)


LEGACY_TYPES = [
    ("Data Sync Status Changed To Error", "dataset_status"),
    ("DataSyncStatusChangedToError", "dataset_status"),
    ("  data sync STATUS changed to error ", "dataset_status"),
    ("Data sync completed", "dataset_status"),
    ("Dataset data changed", "dataset_status"),
    ("Sync Connection Deleted", "connection_deleted"),
    ("SyncConnectionDeleted", "connection_deleted"),
    ("Push Operation Status Changed()", "push_operation"),
    ("Push Operation Timed Out", "push_operation"),
    ("DataConnectionStatusChanged", "connection_status"),
    ("Sync Completed", "sync_completed"),
    ("Sync Failed", "sync_completed"),
    ("New company synchronised", "sync_completed"),
]


@pytest.mark.parametrize(("rule_type", "kind"), LEGACY_TYPES)
async def test_legacy_bodies_signed_by_svix_are_accepted_and_classified(
    database_url: str, clock: FixedClock, rule_type: str, kind: str
) -> None:
    """Legacy-named events delivered over Svix are verified, stored with their kind, and queued."""
    settings = make_settings(database_url)
    body = json.dumps(legacy_body(rule_type)).encode()
    headers = svix_headers(body)
    async with running_app(settings, clock=clock) as (_, client):
        response = await post(client, body, headers)
    assert response.status_code == 202, response.text
    assert response.json() == {"status": "accepted", "id": headers["webhook-id"]}
    [row] = await stored(settings)
    assert (row["kind"], row["shape"], row["company_id"]) == (kind, "legacy_signed", COMPANY_ID)
    assert row["body"] == body and row["status"] == "pending"
    assert await job_count(settings) == 1


async def test_read_completed_with_two_data_types_is_one_alert_keeping_both(
    database_url: str, clock: FixedClock
) -> None:
    """`read.completed` with several dataTypes becomes one alert that keeps them all."""
    settings = make_settings(database_url)
    payload = read_completed_body(("commerce-orders", "Complete"), ("commerce-payments", "FetchError"))
    body = json.dumps(payload).encode()
    async with running_app(settings, clock=clock) as (_, client):
        response = await post(client, body, svix_headers(body, msg_id=payload["id"]))
    assert response.status_code == 202
    [row] = await stored(settings)
    assert row["kind"] == "dataset_status" and row["shape"] == "envelope"
    assert [(d["data_type"], d["status"]) for d in row["data_types"]] == [
        ("commerce-orders", "Complete"), ("commerce-payments", "FetchError")]
    assert row["generated_at"] == pytest.approx(datetime(2024, 9, 29, 20, 26, 10, 344522, UTC).timestamp())


@pytest.mark.parametrize("event_key", ["eventType", "type"])
async def test_connection_deleted_envelope_with_either_type_key(
    database_url: str, clock: FixedClock, event_key: str
) -> None:
    """Envelopes naming the event in `type` instead of `eventType` are understood too."""
    settings = make_settings(database_url)
    payload = connection_deleted_body()
    payload[event_key] = payload.pop("eventType")
    body = json.dumps(payload).encode()
    async with running_app(settings, clock=clock) as (_, client):
        response = await post(client, body, svix_headers(body, prefix="svix-"))
    assert response.status_code == 202
    [row] = await stored(settings)
    assert (row["kind"], row["connection_id"]) == ("connection_deleted", payload["payload"]["connection"]["id"])


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda h: h.update({"webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode()}), "invalid_signature"),
        (lambda h: h.update({"webhook-timestamp": str(int(NOW - 301))}), "timestamp_out_of_tolerance"),
        (lambda h: h.update({"webhook-timestamp": str(int(NOW + 301))}), "timestamp_out_of_tolerance"),
        (lambda h: h.update({"webhook-timestamp": "soon"}), "invalid_signature"),
        (lambda h: h.update({"webhook-id": "another-id"}), "invalid_signature"),
        (lambda h: h.update({"webhook-signature": "v2,abc"}), "invalid_signature"),
    ],
    ids=["forged", "expired", "future", "bad-timestamp", "id-swapped", "unknown-version"],
)
async def test_bad_signatures_are_refused_and_nothing_is_stored(
    database_url: str, clock: FixedClock, mutate: Any, error: str
) -> None:
    """Forged, expired, future and tampered signatures answer 401 and store nothing."""
    settings = make_settings(database_url, webhook_auth_header=None)
    body = json.dumps(read_completed_body(("commerce-orders", "Complete"))).encode()
    headers = svix_headers(body)
    mutate(headers)
    async with running_app(settings, clock=clock) as (_, client):
        response = await post(client, body, headers)
    assert (response.status_code, response.json()) == (401, {"error": error})
    assert await stored(settings) == []


@pytest.mark.parametrize(
    ("timestamp", "error"),
    [
        ("9" * 310, "timestamp_out_of_tolerance"),
        (str(int(NOW * 1000)), "timestamp_out_of_tolerance"),
        (f"-{int(NOW)}", "invalid_signature"),
        ("-1", "invalid_signature"),
        (f" {int(NOW)}", "invalid_signature"),
        (f"{int(NOW)}.5", "invalid_signature"),
        ("1_750_000_000", "invalid_signature"),
        ("175000000\u00b2", "invalid_signature"),  # a Latin-1 "digit" to str.isdigit(), not to int()
        ("1e9", "invalid_signature"),
    ],
    ids=["310-digits", "milliseconds", "negative", "minus-one", "space", "fraction", "underscores",
         "superscript", "exponent"],
)  # fmt: skip
async def test_malformed_timestamps_answer_401_and_store_nothing(
    database_url: str, clock: FixedClock, timestamp: str, error: str
) -> None:
    """A timestamp that is not 1-12 ASCII digits is a 401 (never a 500 from an overflow); nothing is stored."""
    settings = make_settings(database_url, webhook_auth_header=None)
    body = json.dumps(read_completed_body(("commerce-orders", "Complete"))).encode()
    headers: dict[str, Any] = {**svix_headers(body), "webhook-timestamp": timestamp.encode("latin-1")}
    async with running_app(settings, clock=clock) as (_, client):
        response = await client.post("/webhooks/codat", content=body, headers=headers)
    assert (response.status_code, response.json()) == (401, {"error": error})
    assert await stored(settings) == []
    assert await job_count(settings) == 0


async def test_signature_over_other_bytes_is_refused(database_url: str, clock: FixedClock) -> None:
    """The raw bytes are verified: the same JSON re-serialised does not match."""
    settings = make_settings(database_url)
    payload = read_completed_body(("commerce-orders", "Complete"))
    headers = svix_headers(json.dumps(payload).encode())
    async with running_app(settings, clock=clock) as (_, client):
        response = await post(client, json.dumps(payload, indent=1).encode(), headers)
    assert response.status_code == 401


async def test_rotated_secrets_and_several_signatures(database_url: str, clock: FixedClock) -> None:
    """Either configured secret verifies, and any one of several `v1,` signatures may match."""
    settings = make_settings(database_url, webhook_secrets=f"{TEST_SECRET},{OLD_SECRET}")
    body = json.dumps(read_completed_body(("commerce-orders", "Complete"))).encode()
    old = svix_headers(body, secret=OLD_SECRET)
    unknown = "whsec_" + base64.b64encode(b"nobody-knows-this-one").decode()
    stranger = svix_headers(body, secret=unknown, msg_id=old["webhook-id"])
    old["webhook-signature"] = f"v1a,xyz {stranger['webhook-signature']} {old['webhook-signature']}"
    async with running_app(settings, clock=clock) as (_, client):
        assert (await post(client, body, old)).status_code == 202
        body2 = json.dumps(read_completed_body(("commerce-orders", "Complete"))).encode()
        assert (await post(client, body2, svix_headers(body2, secret=unknown))).status_code == 401
    assert len(await stored(settings)) == 1


@pytest.mark.parametrize(
    ("authorization", "status", "answer"),
    [
        (TEST_AUTH_HEADER, 202, "accepted"),
        ("Bearer legacy-shared-value-124", 401, "invalid_credentials"),
        (None, 401, "missing_authentication"),
    ],
)
async def test_unsigned_legacy_delivery_uses_the_authorization_header(
    database_url: str, clock: FixedClock, authorization: str | None, status: int, answer: str
) -> None:
    """Unsigned legacy deliveries carry the client-chosen Authorization value, checked exactly."""
    settings = make_settings(database_url)
    payload = legacy_body()
    headers = {"content-type": "application/json"}
    if authorization:
        headers["authorization"] = authorization
    async with running_app(settings, clock=clock) as (_, client):
        response = await post(client, json.dumps(payload).encode(), headers)
    assert response.status_code == status
    body = response.json()
    assert body.get("status", body.get("error")) == answer
    rows = await stored(settings)
    assert [r["id"] for r in rows] == ([payload["AlertId"]] if status == 202 else [])
    if rows:
        assert rows[0]["shape"] == "legacy"


@pytest.mark.parametrize("mode", ["legacy-header", "unauthenticated"])
@pytest.mark.parametrize("prefix", ["webhook-", "svix-"])
async def test_unsigned_delivery_ids_come_from_the_header_first(database_url: str, mode: str, prefix: str) -> None:
    """An unsigned delivery that carries `webhook-id`/`svix-id` is stored under that id, not the body's
    (CONTRACT.md's delivery-id rule holds whatever authenticated it)."""
    if mode == "legacy-header":
        settings = make_settings(database_url, webhook_secrets="")
        headers = {"authorization": TEST_AUTH_HEADER}
    else:
        settings = make_settings(database_url, webhook_secrets="", webhook_auth_header=None,
                                 allow_unauthenticated_webhooks=True)  # fmt: skip
        headers = {}
    async with running_app(settings) as (_, client):
        response = await post(client, json.dumps(legacy_body()).encode(), {**headers, f"{prefix}id": "hdr-1"})
    assert (response.status_code, response.json()) == (202, {"status": "accepted", "id": "hdr-1"})
    assert [row["id"] for row in await stored(settings)] == ["hdr-1"]


async def test_development_mode_recognises_a_redelivery_by_its_header_id(database_url: str) -> None:
    """Without authentication (development), Codat's redelivery — same `webhook-id`, the body regenerated with a
    new `AlertId` — is a duplicate of the first, as CONTRACT.md's delivery-id rule makes it; one row is stored."""
    settings = make_settings(database_url, webhook_secrets="", webhook_auth_header=None,
                             allow_unauthenticated_webhooks=True)  # fmt: skip
    async with running_app(settings) as (_, client):
        first = await post(client, json.dumps(legacy_body(AlertId="body-1")).encode(), {"webhook-id": "msg-1"})
        again = await post(client, json.dumps(legacy_body(AlertId="body-2")).encode(), {"webhook-id": "msg-1"})
    assert (first.status_code, first.json()) == (202, {"status": "accepted", "id": "msg-1"})
    assert (again.status_code, again.json()) == (200, {"status": "duplicate", "id": "msg-1"})
    assert [row["id"] for row in await stored(settings)] == ["msg-1"]


async def test_unsigned_delivery_refused_when_only_secrets_are_configured(database_url: str) -> None:
    """With only signing secrets configured, an unsigned delivery is missing authentication."""
    settings = make_settings(database_url, webhook_auth_header=None)
    async with running_app(settings) as (_, client):
        response = await post(client, json.dumps(legacy_body()).encode(), {})
    assert (response.status_code, response.json()) == (401, {"error": "missing_authentication"})


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2, 3]", "not a JSON object"),
        (b'"text"', "not a JSON object"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (json.dumps({"RuleType": "Sync Completed", "CompanyId": COMPANY_ID}).encode(), "no delivery id"),
        (json.dumps({"AlertId": {"nested": 1}}).encode(), "no delivery id"),
    ],
    ids=["broken", "array", "string", "binary", "no-id", "object-id"],
)
async def test_malformed_payloads_answer_400_and_store_nothing(
    database_url: str, body: bytes, detail: str
) -> None:
    """Authenticated but unusable bodies answer 400 malformed_payload (never 500), storing nothing."""
    settings = make_settings(database_url)
    async with running_app(settings) as (_, client):
        response = await post(client, body, {"authorization": TEST_AUTH_HEADER})
    assert response.status_code == 400
    assert response.json()["error"] == "malformed_payload" and detail in response.json()["detail"]
    assert await stored(settings) == []


async def test_unexpected_field_types_are_kept_as_other_and_ignored(database_url: str) -> None:
    """An authenticated object with a delivery id but odd fields is stored as kind `other`, 200 ignored."""
    settings = make_settings(database_url)
    payload = legacy_body(CompanyId=12345, Data=["not", "an", "object"])
    async with running_app(settings) as (_, client):
        response = await post(client, json.dumps(payload).encode(), {"authorization": TEST_AUTH_HEADER})
        unknown = await post(client, b'{"id": "evt-1", "hello": "world"}', {"authorization": TEST_AUTH_HEADER})
    assert response.json() == {"status": "ignored", "id": payload["AlertId"]}
    assert unknown.json() == {"status": "ignored", "id": "evt-1"} and unknown.status_code == 200
    rows = await stored(settings)
    assert [(r["kind"], r["status"]) for r in rows] == [("other", "ignored")] * 2
    assert await job_count(settings) == 0


async def test_known_events_we_do_not_act_on_are_stored_and_ignored(database_url: str, clock: FixedClock) -> None:
    """`Rate Limit Reached` is well-formed but not acted on: stored, 200 ignored, no job."""
    settings = make_settings(database_url)
    payload = legacy_body("Rate Limit Reached", Data={})
    body = json.dumps(payload).encode()
    async with running_app(settings, clock=clock) as (_, client):
        response = await post(client, body, svix_headers(body))
    assert response.status_code == 200 and response.json()["status"] == "ignored"
    assert [r["status"] for r in await stored(settings)] == ["ignored"]


async def test_oversize_bodies_get_413_without_being_stored(database_url: str) -> None:
    """Bodies over RELAY_MAX_BODY_BYTES answer 413, whether declared or streamed without a length."""
    settings = make_settings(database_url, max_body_bytes=2048)
    big = json.dumps(legacy_body(Message="x" * 5000)).encode()

    async def chunks() -> Any:
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    async with running_app(settings) as (_, client):
        declared = await post(client, big, {"authorization": TEST_AUTH_HEADER})
        streamed = await client.post("/webhooks/codat", content=chunks(), headers={"authorization": TEST_AUTH_HEADER})
    assert (declared.status_code, declared.json()) == (413, {"error": "payload_too_large"})
    assert streamed.status_code == 413
    assert await stored(settings) == []


STREAM_CHUNK = 64 * 1024
STREAM_TOTAL = 32 * 1024 * 1024  # 32 MiB, against the default 1 MiB limit


@pytest.mark.parametrize("declared", [False, True], ids=["chunked", "content-length"])
async def test_oversize_streamed_body_is_refused_without_reading_the_rest(database_url: str, declared: bool) -> None:
    """32 MiB streamed in 64 KiB chunks: 413 once the limit is passed, having pulled only about the limit (one
    chunk over) from the sender — none at all when Content-Length already says it is too large; nothing stored."""
    settings = make_settings(database_url)
    limit = settings.max_body_bytes
    pulled = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(STREAM_TOTAL // STREAM_CHUNK):
            pulled += STREAM_CHUNK
            yield b" " * STREAM_CHUNK

    headers = {"authorization": TEST_AUTH_HEADER, **({"content-length": str(STREAM_TOTAL)} if declared else {})}
    async with running_app(settings) as (_, client):
        response = await client.post("/webhooks/codat", content=body(), headers=headers)
    assert (response.status_code, response.json()) == (413, {"error": "payload_too_large"})
    if declared:
        assert pulled == 0
    else:
        assert limit < pulled <= limit + STREAM_CHUNK
    assert await stored(settings) == []


async def test_fifty_concurrent_duplicates_store_one_row(database_url: str, clock: FixedClock) -> None:
    """The same delivery sent 50 times at once: one 202, 49 x 200 duplicate, one row, one job."""
    settings = make_settings(database_url)
    body = json.dumps(read_completed_body(("commerce-orders", "FetchError"))).encode()
    headers = svix_headers(body)
    async with running_app(settings, clock=clock) as (_, client):
        responses = await asyncio.gather(*(post(client, body, headers) for _ in range(50)))
        later = await post(client, body, headers)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 49 + [202]
    assert {r.json()["status"] for r in responses if r.status_code == 200} == {"duplicate"}
    assert later.json() == {"status": "duplicate", "id": headers["webhook-id"]}
    assert len(await stored(settings)) == 1 and await job_count(settings) == 1


async def test_health_and_readiness(database_url: str) -> None:
    """/healthz answers while running; /readyz checks the database is reachable and migrated."""
    settings = make_settings(database_url)
    async with running_app(settings) as (_, client):
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


async def test_readiness_fails_on_an_unmigrated_database(tmp_path: Any) -> None:
    """An empty database is reachable but not migrated: 503."""
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/empty.db")
    async with running_app(settings) as (_, client):
        ready = await client.get("/readyz")
    assert ready.status_code == 503 and "migrations" in ready.json()["reason"]


async def test_liveness_fails_once_the_in_process_worker_has_died(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve` whose worker stopped on an error it does not ride out (here a bug in its round) would accept
    alerts that nobody processes: /healthz answers 503 naming why, so that a liveness probe restarts the
    process. While the worker runs, 200."""
    broken = asyncio.Event()
    real_turn = queue.turn

    async def turn(*args: Any, **kwargs: Any) -> tuple[int, list[Job]]:
        if broken.is_set():
            raise RuntimeError("a bug in the round")
        return await real_turn(*args, **kwargs)

    monkeypatch.setattr(queue, "turn", turn)
    settings = make_settings(database_url)
    with capture_logs() as logs:
        async with running_app(settings, options=AppOptions(run_workers=True)) as (app, client):
            alive = await client.get("/healthz")
            broken.set()
            app.state.runtime.wake_workers()

            async def died() -> bool:
                return (await client.get("/healthz")).status_code != 200

            await eventually(died, HEALTH_DEADLINE_S)
            dead = await client.get("/healthz")
            ready = await client.get("/readyz")
    assert (alive.status_code, alive.json()) == (200, {"status": "ok"})
    assert (dead.status_code, dead.json()) == (503, {"status": "unavailable", "reason": "worker stopped: RuntimeError"})
    assert ready.status_code == 200  # the database is fine: no reason to take the process out of service
    events = [entry["event"] for entry in logs]
    assert "worker_failed" in events and "worker_exited" in events



def test_the_receiver_refuses_an_in_memory_database() -> None:
    """An in-memory SQLite database is private to one connection: the receiver's writer would store every
    delivery where nobody reads it, so it refuses to start on one."""
    from service.batch_writers import batch_writer_for

    with pytest.raises(ValueError, match="SQLite file"):
        batch_writer_for("sqlite+aiosqlite:///:memory:")


async def send_then_hang_up(app: Any, path: str, headers: list[tuple[bytes, bytes]], part: bytes) -> list[Any]:
    """An ASGI request whose client sends `part` of a longer body, then disconnects; the messages sent back."""
    incoming = [{"type": "http.request", "body": part, "more_body": True}, {"type": "http.disconnect"}]
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST" if "records" not in
             path else "PUT", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"host", b"relay"), *headers], "client": ("127.0.0.1", 5000), "server": ("relay", 80),
             "root_path": "", "state": {}}  # fmt: skip
    await app(scope, receive, send)
    return sent


@pytest.mark.parametrize(
    ("path", "auth"),
    [("/webhooks/codat", TEST_AUTH_HEADER), ("/v1/companies/co-1/records/orders", "Bearer test-api-token")],
    ids=["webhook", "intake"],
)
async def test_a_client_hanging_up_mid_body_is_info_and_not_a_failed_delivery(
    database_url: str, path: str, auth: str
) -> None:
    """A sender that disconnects mid-body logs at info, counts no `error` delivery, and stores nothing."""
    from service.metrics import DELIVERIES

    settings = make_settings(database_url)
    errors_before = DELIVERIES.labels(outcome="error")._value.get()
    headers = [(b"authorization", auth.encode()), (b"content-length", b"100000")]
    async with running_app(settings) as (app, _):
        with capture_logs() as logs:
            await send_then_hang_up(app, path, headers, b'{"records": [')
    assert [line for line in logs if line["log_level"] in ("error", "critical", "warning")] == []
    assert {line["event"] for line in logs} & {"webhook_received", "client_disconnected"}
    if path.startswith("/webhooks"):
        assert [line["outcome"] for line in logs if line["event"] == "webhook_received"] == ["client_disconnected"]
    assert DELIVERIES.labels(outcome="error")._value.get() == errors_before
    assert await stored(settings) == []
