"""Connection events: timed ones apply in event-time order per company (a late, older one changes nothing);
legacy ones, which carry no time, are checked against what Codat says of the connection now."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import structlog
from pydantic import SecretStr

from handlers.connection import on_connection_deleted, on_connection_status
from service.alerts import parse_alert
from service.clock import FixedClock
from service.codat.client import CodatClient
from service.db import companies, create_engine, notifications
from service.notifications import Notifier
from service.testing import SANDBOX_API_KEY, SANDBOX_AUTH, connection_deleted_body, legacy_body, running_sandbox
from service.types import Context, Outcome
from tests.conftest import make_settings


def envelope(event: str, at: str, company: str = "co-1") -> Any:
    body = connection_deleted_body()
    body.update(eventType=event, generatedDate=at)
    body["payload"]["referenceCompany"]["id"] = company
    return parse_alert(body, json.dumps(body).encode(), header_id=None, signed=True)


async def test_a_late_older_reconnection_does_not_resume_a_deleted_connection(database_url: str) -> None:
    """deleted@10:05 then reconnected@10:00 (delivered late) → still paused; reconnected@10:10 → resumed."""
    settings = make_settings(database_url)
    engine = create_engine(settings)
    clock = FixedClock()
    ctx = Context(store=engine, codat=None, notifier=Notifier(engine, ["log"], 3600, clock), clock=clock,
                  log=structlog.get_logger(), attempt=1, tracker=None)
    try:
        assert await on_connection_deleted(envelope("connection.deleted", "2026-01-01T10:05:00Z"), ctx) is Outcome.DONE
        await on_connection_status(envelope("connection.reconnected", "2026-01-01T10:00:00Z"), ctx)
        async with engine.connect() as conn:
            still = (await conn.execute(sa.select(companies.c.paused, companies.c.pause_reason))).one()
        async with engine.connect() as conn:
            deleted_at = await conn.scalar(sa.select(companies.c.connection_deleted_at))
        await on_connection_status(envelope("connection.reconnected", "2026-01-01T10:10:00Z"), ctx)
        async with engine.connect() as conn:
            after = (await conn.execute(sa.select(companies.c.paused, companies.c.pause_reason,
                                                  companies.c.connection_deleted_at))).one()
    finally:
        await engine.dispose()
    assert tuple(still) == (True, "connection_deleted") and deleted_at is not None
    # Reconnected: resumed, and the deletion no longer shows (the page's "connection deleted" goes away).
    assert tuple(after) == (False, None, None)


def with_connection(alert: Any, connection_id: str) -> Any:
    body = json.loads(alert.body)
    body["payload"]["connection"]["id"] = connection_id
    return parse_alert(body, json.dumps(body).encode(), header_id=None, signed=True)


def legacy(rule: str, company: str, connection_id: str, **data: str) -> Any:
    body = legacy_body(rule, CompanyId=company, DataConnectionId=connection_id, Data=data)
    return parse_alert(body, json.dumps(body).encode(), header_id=None, signed=False)


@asynccontextmanager
async def against_sandbox(database_url: str) -> AsyncIterator[tuple[Context, httpx.AsyncClient, Any]]:
    """Handlers whose Codat is the sandbox app (in-process), which keeps real connection state."""
    settings = make_settings(database_url)
    engine = create_engine(settings)
    clock = FixedClock(1_900_000_000.0)  # processing happens after the timed events' 2026 dates
    async with running_sandbox(companies=["co-1"]) as (_app, transport):
        codat = CodatClient("http://sandbox", SecretStr(SANDBOX_API_KEY), transport=transport)
        ctx = Context(store=engine, codat=codat, notifier=Notifier(engine, ["log"], 3600, clock), clock=clock,
                      log=structlog.get_logger(), attempt=1, tracker=None)  # fmt: skip
        try:
            sandbox_client = httpx.AsyncClient(transport=transport, base_url="http://sandbox", headers=SANDBOX_AUTH)
            async with sandbox_client as sandbox:
                yield ctx, sandbox, engine
        finally:
            await codat.aclose()
            await engine.dispose()


async def paused(engine: Any) -> tuple[bool, str | None]:
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(companies.c.paused, companies.c.pause_reason))).one()
    return bool(row.paused), row.pause_reason


async def test_a_delayed_legacy_deletion_does_not_undo_a_newer_reconnection(database_url: str) -> None:
    """A legacy deletion processed after a newer timed reconnection changes nothing unless Codat confirms it."""
    async with against_sandbox(database_url) as (ctx, sandbox, engine):
        x = (await sandbox.post("/_sandbox/companies/co-1/delete-connection")).json()["connectionId"]
        y = (await sandbox.post("/_sandbox/companies/co-1/reconnect")).json()["connectionId"]
        await on_connection_deleted(with_connection(envelope("connection.deleted", "2026-01-01T10:05:00Z"), x), ctx)
        await on_connection_status(with_connection(envelope("connection.reconnected", "2026-01-01T10:10:00Z"), y), ctx)
        assert await paused(engine) == (False, None)
        assert await on_connection_deleted(legacy("Sync Connection Deleted", "co-1", x), ctx) is Outcome.DONE
        late_x = await paused(engine)
        zeros = "00000000-0000-0000-0000-000000000000"
        assert await on_connection_deleted(legacy("Sync Connection Deleted", "co-1", zeros), ctx) is Outcome.DONE
        late_zeros = await paused(engine)
        await sandbox.delete(f"/companies/co-1/connections/{y}")
        await on_connection_deleted(legacy("Sync Connection Deleted", "co-1", y), ctx)
        really = await paused(engine)
    assert late_x == late_zeros == (False, None)
    assert really == (True, "connection_deleted")


async def test_legacy_status_changes_follow_what_codat_says_now(database_url: str) -> None:
    """Legacy Linked/Unlinked are applied as Codat's status of the connection says now, not as the alert says."""
    async with against_sandbox(database_url) as (ctx, sandbox, engine):
        x = (await sandbox.post("/_sandbox/companies/co-1/delete-connection")).json()["connectionId"]
        await on_connection_deleted(legacy("Sync Connection Deleted", "co-1", x), ctx)
        await on_connection_status(legacy("DataConnectionStatusChanged", "co-1", x, newStatus="Linked"), ctx)
        still = await paused(engine)
        y = (await sandbox.post("/_sandbox/companies/co-1/reconnect")).json()["connectionId"]
        await on_connection_status(legacy("DataConnectionStatusChanged", "co-1", y, newStatus="Unlinked"), ctx)
        async with engine.connect() as conn:
            told = await conn.scalar(sa.select(sa.func.count()).where(notifications.c.kind == "auth_required"))
        after_unlinked = await paused(engine)
    assert still == (True, "connection_deleted")
    assert told == 0 and after_unlinked == (False, None)  # Codat says Y is Linked: that is what counts


async def test_a_legacy_disconnection_codat_confirms_needs_a_person(database_url: str) -> None:
    """Legacy *DataConnectionStatusChanged* to Deauthorized, and Codat agrees: auth_required, once."""

    def codat(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": "conn-1", "status": "Deauthorized"})

    settings = make_settings(database_url)
    engine = create_engine(settings)
    clock = FixedClock()
    client = CodatClient("http://codat", None, transport=httpx.MockTransport(codat))
    ctx = Context(store=engine, codat=client, notifier=Notifier(engine, ["log"], 3600, clock), clock=clock,
                  log=structlog.get_logger(), attempt=1, tracker=None)  # fmt: skip
    try:
        for _ in range(2):
            await on_connection_status(legacy("DataConnectionStatusChanged", "co-1", "conn-1",
                                              newStatus="Deauthorized", oldStatus="Linked"), ctx)  # fmt: skip
        async with engine.connect() as conn:
            told = (await conn.execute(sa.select(notifications.c.kind))).scalars().all()
            status = await conn.scalar(sa.select(companies.c.connection_status))
    finally:
        await client.aclose()
        await engine.dispose()
    assert told == ["auth_required"] and status == "unlinked"


# -- the ordering clock cannot be pushed into the future -----------------------------------------------

FORGED_AT = "2099-01-01T00:00:00Z"


def _signed(body: dict[str, Any], msg_id: str, at: float) -> tuple[bytes, dict[str, str]]:
    from service.signatures import decode_secret, sign
    from tests.conftest import TEST_SECRET

    raw = json.dumps(body).encode()
    return raw, {"webhook-id": msg_id, "webhook-timestamp": str(int(at)),
                 "webhook-signature": sign(decode_secret(TEST_SECRET), msg_id, int(at), raw)}  # fmt: skip


def _event(event: str, at: str, connection_id: str, msg_id: str) -> dict[str, Any]:
    body = connection_deleted_body()
    body.update(id=msg_id, eventType=event, generatedDate=at)
    body["payload"]["referenceCompany"]["id"] = "co-1"
    body["payload"]["connection"]["id"] = connection_id
    return body


async def _process(ctx: Context, engine: Any, alert_id: str) -> None:
    from service.db import alerts
    from service.dispatch import alert_from_row

    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(alerts).where(alerts.c.id == alert_id))).mappings().one()
    alert = alert_from_row(row)
    handler = on_connection_deleted if alert.type == "connection.deleted" else on_connection_status
    await handler(alert, ctx)


@pytest.mark.parametrize("path", ["signed_with_a_skewed_clock", "legacy_authorization"])
async def test_a_forged_future_event_cannot_block_a_genuine_reconnect(database_url: str, path: str) -> None:
    """A deletion dated 2099 (signed, or on the legacy Authorization path that signs nothing) does not make the
    genuine, signed reconnect that follows it stale: the company ends resumed."""
    from datetime import UTC, datetime

    from service.testing import running_app
    from tests.conftest import TEST_AUTH_HEADER

    async with against_sandbox(database_url) as (ctx, sandbox, engine):
        clock: FixedClock = ctx.clock  # type: ignore[assignment]
        linked = (await sandbox.post("/_sandbox/companies/co-1/reconnect")).json()["connectionId"]
        async with running_app(make_settings(database_url), clock=clock) as (_, relay):
            forged = _event("connection.deleted", FORGED_AT, linked, "forged-1")
            if path == "legacy_authorization":
                raw, headers = json.dumps(forged).encode(), {"authorization": TEST_AUTH_HEADER}
            else:
                raw, headers = _signed(forged, "forged-1", clock.now())
            assert (await relay.post("/webhooks/codat", content=raw, headers=headers)).status_code == 202
            await _process(ctx, engine, "forged-1")
            clock.advance(300)  # the merchant reconnects five minutes later; Codat says so, signed
            at = datetime.fromtimestamp(clock.now(), UTC).isoformat().replace("+00:00", "Z")
            raw, headers = _signed(_event("connection.reconnected", at, linked, "genuine-1"), "genuine-1", clock.now())
            assert (await relay.post("/webhooks/codat", content=raw, headers=headers)).status_code == 202
        await _process(ctx, engine, "genuine-1")
        assert await paused(engine) == (False, None)
        async with engine.connect() as conn:
            newest = await conn.scalar(sa.select(companies.c.connection_event_at))
        assert newest is not None and newest <= clock.now() + 60  # no event time past arrival + skew is kept


@pytest.mark.parametrize("event", ["connection.connected", "connection.reconnected", "connection.disconnected"])
async def test_a_connection_event_queues_a_read_of_the_companys_sync_schedule(database_url: str, event: str) -> None:
    """Issue 14: a new or changed connection may come with a new schedule and name: one refresh is queued,
    however many events arrive before it runs."""
    from service.db import jobs
    from service.keys import schedule_lock
    from service.schedules import SCHEDULE_KIND

    engine = create_engine(make_settings(database_url))
    clock = FixedClock()
    ctx = Context(store=engine, codat=None, notifier=Notifier(engine, ["log"], 3600, clock), clock=clock,
                  log=structlog.get_logger(), attempt=1, tracker=None)
    try:
        await on_connection_status(envelope(event, "2026-01-01T10:00:00Z"), ctx)
        await on_connection_status(envelope(event, "2026-01-01T10:01:00Z"), ctx)
        async with engine.connect() as conn:
            queued = (await conn.execute(sa.select(jobs.c.kind, jobs.c.lock_key, jobs.c.payload).where(
                jobs.c.kind == SCHEDULE_KIND))).all()  # fmt: skip
    finally:
        await engine.dispose()
    assert [(k, lock, p["phase"]) for k, lock, p in queued] == [(SCHEDULE_KIND, schedule_lock("co-1", "refresh"),
                                                                 "refresh")]
