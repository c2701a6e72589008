"""`client.rateLimit.reached` / `reset` (webhooks-2024-10.yaml, ClientRateLimitWebhook) as the relay handles them:
the shared budget pauses and resumes, staff are told once per quota window."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
import structlog

from handlers.rate_limit import on_rate_limit
from service import queue
from service.alerts import parse_alert
from service.clock import FixedClock
from service.db import codat_quota, create_engine, notifications
from service.dispatch import alert_from_row
from service.runtime import Runtime, build_runtime
from service.types import Alert, AlertKind, Context, Outcome
from tests.conftest import make_settings
from tests.queue_helpers import job_rows

NOW = datetime(2026, 6, 1, 15, 0, tzinfo=UTC).timestamp()
EXPIRY = "2026-06-02T00:00:00Z"


def event(event_type: str, remaining: int, generated: str) -> tuple[Alert, bytes]:
    body = {"id": str(uuid.uuid4()), "eventType": event_type, "generatedDate": generated,
            "payload": {"dailyQuota": 2000, "quotaRemaining": remaining, "expiryDate": EXPIRY}}  # fmt: skip
    raw = json.dumps(body).encode()
    return parse_alert(body, raw, header_id=None, signed=True), raw


@pytest.fixture
async def runtime(database_url: str) -> AsyncIterator[Runtime]:
    settings = make_settings(database_url)
    engine = create_engine(settings)
    runtime = await build_runtime(settings, engine, FixedClock(NOW))
    yield runtime
    await runtime.close()
    await engine.dispose()


def context(runtime: Runtime) -> Context:
    return Context(store=runtime.engine, codat=runtime.codat, notifier=runtime.notifier, tracker=runtime.tracker,
                   clock=runtime.clock, log=structlog.get_logger(), attempt=1)  # fmt: skip


async def quota(runtime: Runtime) -> Any:
    async with runtime.engine.connect() as conn:
        return (await conn.execute(sa.select(codat_quota))).one()


async def told(runtime: Runtime) -> list[str]:
    async with runtime.engine.connect() as conn:
        return list((await conn.execute(sa.select(notifications.c.kind))).scalars())


async def test_reached_pauses_and_tells_staff_once_reset_resumes_the_waiting_jobs(runtime: Runtime) -> None:
    """Two `reached` deliveries: the quota is spent until `expiryDate`, staff hear of it once; `reset` gives the
    quota back and the job deferred on it runs now."""
    ctx = context(runtime)
    for _ in range(2):
        reached, _raw = event("client.rateLimit.reached", 0, "2026-06-01T14:59:00Z")
        assert reached.kind is AlertKind.RATE_LIMIT
        assert await on_rate_limit(reached, ctx) is Outcome.DONE
    row = await quota(runtime)
    assert (row.remaining, row.daily_limit, row.reset_at) == (0, 2000, datetime(2026, 6, 2, tzinfo=UTC).timestamp())
    assert await told(runtime) == ["rate_limit_reached"]
    job_id = await queue.enqueue(runtime.engine, "push", {}, now=NOW)
    [job] = await queue.claim(runtime.engine, "w", 1, NOW, 30.0)
    await queue.defer(runtime.engine, job, row.reset_at, "quota spent", NOW)
    reset, _raw = event("client.rateLimit.reset", 2000, "2026-06-01T15:00:00Z")
    assert await on_rate_limit(reset, ctx) is Outcome.DONE
    assert (await quota(runtime)).remaining == 2000
    [waiting] = await job_rows(runtime.engine, id=job_id)
    assert (waiting.run_at, waiting.attempts) == (NOW, 0)
    # A `reached` generated before that reset, delivered after it, changes nothing.
    late, _raw = event("client.rateLimit.reached", 0, "2026-06-01T14:59:30Z")
    await on_rate_limit(late, ctx)
    assert (await quota(runtime)).remaining == 2000


def test_a_stored_rate_limit_alert_carries_its_quota() -> None:
    """The alert a job loads from its row (whose columns keep no quota) reads the quota from the stored body."""
    parsed, raw = event("client.rateLimit.reset", 1999, "2026-06-01T15:00:00Z")
    row = {"id": parsed.delivery_id, "kind": "rate_limit", "type": parsed.type, "shape": "envelope",
           "company_id": None, "connection_id": None, "data_types": None, "generated_at": parsed.generated_at,
           "body": raw, "received_at": NOW}  # fmt: skip
    loaded = alert_from_row(row)  # type: ignore[arg-type]
    assert loaded.rate_limit == parsed.rate_limit
    assert loaded.rate_limit is not None and loaded.rate_limit.quota_remaining == 1999
