"""The raw ASGI fast path of `POST /webhooks/codat` answers exactly as the Starlette route does.

Every other webhook test goes through the fast path (it is on by default); this one replays one table
of requests against two relays, the fast path on and off, each on a fresh database of the same backend,
and compares what a client and an operator see: the ASGI messages sent back (status, raw headers,
body), the `webhook_received` log lines, the delivery counters, and what was stored.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from service.clock import FixedClock
from service.db import alerts, create_engine, jobs
from service.metrics import DELIVERIES
from service.settings import Settings
from service.testing import legacy_body, read_completed_body, running_app, signed_headers
from service.web.app import AppOptions
from tests.conftest import TEST_AUTH_HEADER, TEST_SECRET, _admin, fresh_postgres, make_settings

NOW = 1_750_000_000.0
LIMIT = 4096
OUTCOMES = ("accepted", "duplicate", "ignored", "invalid_signature", "invalid_credentials",
            "missing_authentication", "timestamp_out_of_tolerance", "malformed_payload", "payload_too_large",
            "unavailable", "client_disconnected", "error")  # fmt: skip


@dataclass(frozen=True)
class Call:
    """One raw ASGI request: its body arrives in `chunks`; `hang_up` disconnects after them."""

    name: str
    headers: dict[str, str]
    chunks: tuple[bytes, ...] = ()
    method: str = "POST"
    path: str = "/webhooks/codat"
    hang_up: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _signed(body: bytes, *, at: float = NOW, msg_id: str | None = None) -> dict[str, str]:
    return {**signed_headers(body, TEST_SECRET, at=at, msg_id=msg_id), "content-type": "application/json"}


@functools.cache
def _calls() -> tuple[Call, ...]:
    """Built once: both relays must get the very same bytes (ids and signatures included)."""
    good = json.dumps(legacy_body(AlertId="alert-fast-1")).encode()
    good_headers = _signed(good, msg_id="msg_fast_1")
    read_completed = json.dumps(read_completed_body(("commerce-orders", "Complete"))).encode()
    ignored = json.dumps({"id": "evt-ignored", "eventType": "company.created", "payload": {"id": "c1"}}).encode()
    legacy = json.dumps(legacy_body(AlertId="alert-fast-2")).encode()
    no_id = legacy_body()
    del no_id["AlertId"]
    big = json.dumps(legacy_body(Message="x" * (LIMIT * 2))).encode()
    auth = {"authorization": TEST_AUTH_HEADER}
    return (
        Call("signed, accepted", good_headers, (good,)),
        Call("the same again, duplicate", good_headers, (good,)),
        Call("read.completed in three chunks", _signed(read_completed), (read_completed[:10], read_completed[10:40],
                                                                       read_completed[40:])),
        Call("an event we do not act on, ignored", _signed(ignored), (ignored,)),
        Call("legacy Authorization, accepted", auth, (legacy,)),
        Call("bad signature", {**_signed(good), "webhook-signature": "v1,AAAA"}, (good,)),
        Call("signed with another secret", {**signed_headers(good, "whsec_" + "QUJD" * 8, at=NOW)}, (good,)),
        Call("timestamp out of tolerance", _signed(good, at=NOW - 3600), (good,)),
        Call("malformed timestamp", {**_signed(good), "webhook-timestamp": "+17"}, (good,)),
        Call("no authentication", {"content-type": "application/json"}, (legacy,)),
        Call("wrong legacy Authorization", {"authorization": "Bearer nope-nope-nope"}, (legacy,)),
        Call("too large, declared", {**auth, "content-length": str(len(big))}, (big,)),
        Call("too large, streamed", auth, tuple(big[i : i + 1000] for i in range(0, len(big), 1000))),
        Call("not JSON", auth, (b"{not json",)),
        Call("a JSON array", auth, (b"[1, 2]",)),
        Call("no delivery id", auth, (json.dumps(no_id).encode(),)),
        Call("empty body", auth, ()),
        Call("hangs up mid-body", {**auth, "content-length": "1000"}, (b'{"RuleType": ',), hang_up=True),
        Call("wrong method", auth, (legacy,), method="GET"),
        Call("PUT", auth, (legacy,), method="PUT"),
        Call("trailing slash", auth, (legacy,), path="/webhooks/codat/"),
    )


async def _send(app: Any, call: Call) -> list[dict[str, Any]]:
    """Drive the app as a server would, and return the messages it sent back."""
    incoming: list[dict[str, Any]] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(call.chunks) - 1 or call.hang_up}
        for i, chunk in enumerate(call.chunks)
    ] or [{"type": "http.request", "body": b"", "more_body": False}]
    if call.hang_up:
        incoming.append({"type": "http.disconnect"})
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"host", b"relay"), *((k.lower().encode(), v.encode()) for k, v in call.headers.items())]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": call.method,
             "scheme": "http", "path": call.path, "raw_path": call.path.encode(), "query_string": b"",
             "headers": headers, "client": ("127.0.0.1", 5000), "server": ("relay", 80), "root_path": "",
             "state": {}}  # fmt: skip
    await app(scope, receive, send)
    return sent


def _counts() -> dict[str, float]:
    return {outcome: DELIVERIES.labels(outcome=outcome)._value.get() for outcome in OUTCOMES}


async def _stored(settings: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            alert_rows = (await conn.execute(
                sa.select(alerts.c.id, alerts.c.kind, alerts.c.status, alerts.c.body).order_by(alerts.c.id)
            )).mappings()  # fmt: skip
            job_rows = (await conn.execute(
                sa.select(jobs.c.kind, jobs.c.payload, jobs.c.lock_key, jobs.c.status).order_by(jobs.c.id)
            )).mappings()  # fmt: skip
            return [dict(r) for r in alert_rows], [dict(r) for r in job_rows]
    finally:
        await engine.dispose()


async def _replay(settings: Settings, *, fast: bool) -> tuple[list[Any], list[Any], dict[str, float]]:
    """Each call's messages and log lines (durations dropped), and the counters' increase."""
    before = _counts()
    answers: list[Any] = []
    lines: list[Any] = []
    options = AppOptions(webhook_fast_path=fast)
    async with running_app(settings, clock=FixedClock(NOW), options=options) as (app, _):
        for call in _calls():
            with capture_logs() as logs:
                answers.append((call.name, await _send(app, call)))
            lines.append((call.name, [{k: v for k, v in line.items() if k != "duration_ms"} for line in logs]))
    after = _counts()
    return answers, lines, {outcome: after[outcome] - before[outcome] for outcome in OUTCOMES}


@pytest.fixture
def second_database_url(database_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """Another migrated, empty database of `database_url`'s backend."""
    if database_url.startswith("sqlite"):
        path = tmp_path / "second.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    name, url = fresh_postgres(request.getfixturevalue("postgres_template"))
    yield url
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_the_fast_path_answers_logs_counts_and_stores_as_the_starlette_route(
    database_url: str, second_database_url: str
) -> None:
    """A table of requests (accepted, duplicate, ignored, bad signatures, too large, bad JSON, hang-up, wrong
    method, trailing slash …): the same messages, log lines, counters and stored rows through both doors."""
    fast_settings = make_settings(database_url, max_body_bytes=LIMIT)
    route_settings = make_settings(second_database_url, max_body_bytes=LIMIT)

    fast_answers, fast_logs, fast_counts = await _replay(fast_settings, fast=True)
    route_answers, route_logs, route_counts = await _replay(route_settings, fast=False)

    for (name, fast), (_, route) in zip(fast_answers, route_answers, strict=True):
        assert fast == route, name
    assert fast_logs == route_logs
    assert fast_counts == route_counts
    assert await _stored(fast_settings) == await _stored(route_settings)
    # The table means something: it covers the answers the README lists (a 499 is never read).
    statuses = {name: messages[0]["status"] for name, messages in fast_answers}
    assert set(statuses.values()) == {200, 202, 307, 400, 401, 405, 413, 499}
    assert statuses["signed, accepted"] == 202 and statuses["the same again, duplicate"] == 200
    assert fast_counts["accepted"] == 3 and fast_counts["payload_too_large"] == 2
    assert fast_counts["client_disconnected"] == 1 and fast_counts["invalid_signature"] >= 2
    assert len((await _stored(fast_settings))[0]) == 4


async def test_a_webhook_before_start_up_answers_503_through_both_doors(database_url: str) -> None:
    """Before the lifespan has made the writer, both doors answer 503 with Retry-After (Codat retries it)."""
    from service.web.app import create_app

    body = json.dumps(legacy_body()).encode()
    call = Call("early", {"authorization": TEST_AUTH_HEADER}, (body,))
    settings = make_settings(database_url)
    fast = await _send(create_app(settings, options=AppOptions(webhook_fast_path=True)), call)
    route = await _send(create_app(settings, options=AppOptions(webhook_fast_path=False)), call)
    assert fast == route
    assert fast[0]["status"] == 503 and (b"retry-after", b"5") in fast[0]["headers"]


async def test_the_fast_path_does_not_enter_starlettes_stack(database_url: str) -> None:
    """`POST /webhooks/codat` never reaches Starlette's middleware stack; every other request still does."""
    reached: list[str] = []

    async def stack(scope: Any, _receive: Any, send: Any) -> None:
        reached.append(f"{scope['method']} {scope['path']}")
        await send({"type": "http.response.start", "status": 418, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    body = json.dumps(legacy_body()).encode()
    async with running_app(make_settings(database_url), clock=FixedClock(NOW)) as (app, client):
        app.middleware_stack = stack  # Starlette's own stack, replaced by a recorder
        accepted = await client.post("/webhooks/codat", content=body, headers={"authorization": TEST_AUTH_HEADER})
        other = await client.get("/healthz")
    assert accepted.status_code == 202
    assert other.status_code == 418
    assert reached == ["GET /healthz"]
