"""The sync, push-operation and connection-status handlers, in-process.

Sync alerts run against the Codat sandbox app through `httpx.ASGITransport` (real pushes, datasets and
scripted syncs); the others need no Codat answer.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import structlog

from handlers.connection import on_connection_status
from handlers.push_operation import on_push_operation
from handlers.sync import on_sync_completed
from service.alerts import parse_alert
from service.clock import Clock, SystemClock
from service.db import companies, create_engine, jobs, notifications, records, writer
from service.notifications import Notifier
from service.outbox import store_records
from service.pusher import Pusher
from service.queue import Job
from service.records import validate_records
from service.runtime import Runtime, build_runtime
from service.testing import SANDBOX_API_KEY, SANDBOX_AUTH, legacy_body, running_sandbox
from service.types import Alert, Context, Outcome
from tests.conftest import make_settings
from tests.queue_helpers import leased_job

COMPANY = "co-sync"


def alert(body: dict[str, Any]) -> Alert:
    return parse_alert(body, json.dumps(body).encode(), header_id=None, signed=False)


def envelope(event_type: str, payload: dict[str, Any], generated: str = "2026-01-01T10:00:00Z") -> Alert:
    body = {"id": str(uuid.uuid4()), "eventType": event_type, "generatedDate": generated,
            "payload": {"referenceCompany": {"id": COMPANY, "name": "Toft"}, **payload}}  # fmt: skip
    return alert(body)


@dataclass
class Relay:
    runtime: Runtime
    ctx: Context
    sandbox: httpx.AsyncClient

    async def states(self) -> dict[str, str]:
        async with self.runtime.engine.connect() as conn:
            rows = await conn.execute(sa.select(records.c.record_id, records.c.state))
            return {row.record_id: row.state for row in rows}

    async def told(self) -> list[dict[str, Any]]:
        async with self.runtime.engine.connect() as conn:
            rows = await conn.execute(sa.select(notifications).order_by(notifications.c.occurred_at))
            return [dict(row) for row in rows.mappings()]


@asynccontextmanager
async def accepted_orders(database_url: str, clock: Clock | None = None) -> AsyncIterator[Relay]:
    """Two orders pushed to the sandbox and accepted (their dataset Complete), ready for a sync."""
    clock = clock or SystemClock()  # the sandbox's clock too: syncs and datasets are compared in Codat's time
    async with running_sandbox(companies=[COMPANY], clock=clock) as (_app, transport):
        settings = make_settings(database_url, codat_base_url="http://sandbox", codat_api_key=SANDBOX_API_KEY)
        engine = create_engine(settings)
        runtime = await build_runtime(settings, engine, clock, transport=transport)
        ctx = Context(store=engine, codat=runtime.codat, notifier=runtime.notifier, clock=clock,
                      log=structlog.get_logger(), attempt=1, tracker=runtime.tracker)  # fmt: skip
        try:
            valid, _ = validate_records("commerce-orders", [{"id": "o-1", "totalAmount": 1.0},
                                                            {"id": "o-2", "totalAmount": 2.0}])  # fmt: skip
            await store_records(engine, COMPANY, "commerce-orders", valid, now=clock.now(), after=_nothing)
            pusher = Pusher(runtime)
            await pusher.run(await leased_job(engine, "push", {"company_id": COMPANY, "data_type": "commerce-orders"},
                                              clock.now()), 1)  # fmt: skip
            async with engine.connect() as conn:
                [poll] = (await conn.execute(sa.select(jobs).where(jobs.c.kind == "poll_dataset"))).mappings().all()
            await pusher.tracker.poll_dataset(_job("poll_dataset", poll["payload"]), 1)
            codat = httpx.AsyncClient(transport=transport, base_url="http://sandbox", headers=SANDBOX_AUTH)
            async with codat as sandbox:
                relay = Relay(runtime, ctx, sandbox)
                assert await relay.states() == {"o-1": "accepted", "o-2": "accepted"}
                yield relay
        finally:
            await runtime.close()
            await engine.dispose()


def _job(kind: str, payload: dict[str, Any]) -> Job:
    return Job(id=0, kind=kind, payload=payload, lock_key=None, queueing_lock=None, attempts=1, run_at=0.0,
               created_at=0.0)  # fmt: skip


async def _nothing(*_: Any) -> None:
    return None


async def run_sync(relay: Relay, code: int, message: str | None = None) -> None:
    """Script the company's next sync to end with `code`, start it, and let it finish."""
    script = {"companyId": COMPANY, "code": code, **({"errorMessage": message} if message else {})}
    assert (await relay.sandbox.post("/_sandbox/script/sync", json=script)).status_code == 200
    started = await relay.sandbox.post(f"/companies/{COMPANY}/sync/commerce/latest", json={})
    assert started.status_code == 200, started.text
    await relay.sandbox.post("/_sandbox/tick")


@pytest.mark.parametrize("code", [2000, 2040])
async def test_a_successful_sync_marks_accepted_records_synced_and_tells_nobody(database_url: str, code: int) -> None:
    """*Sync Completed*: Codat's sync status is read; on 2000 or 2040 the accepted records become `synced`."""
    async with accepted_orders(database_url) as relay:
        await run_sync(relay, code)
        outcome = await on_sync_completed(alert(legacy_body("Sync Completed", CompanyId=COMPANY, Data={})), relay.ctx)
        states, told = await relay.states(), await relay.told()
        async with relay.runtime.engine.connect() as conn:
            last = (await conn.execute(sa.select(companies.c.last_sync_code, companies.c.last_sync_success_at))).one()
    assert outcome is Outcome.DONE
    assert states == {"o-1": "synced", "o-2": "synced"}
    assert told == [] and last.last_sync_code == code and last.last_sync_success_at is not None


@pytest.mark.parametrize(("code", "meaning"), [(4200, "map error"), (4260, "accounting software billing expired"),
                                               (5130, "data write error")])  # fmt: skip
async def test_a_failed_sync_is_told_with_the_meaning_of_its_code(database_url: str, code: int, meaning: str) -> None:
    """A 4xxx/5xxx sync leaves records accepted and is told once, with the code's meaning and Codat's message."""
    async with accepted_orders(database_url) as relay:
        await run_sync(relay, code, "Account 400 is missing")
        failed = legacy_body("Sync Failed", CompanyId=COMPANY, Data={})
        await on_sync_completed(alert(failed), relay.ctx)
        await on_sync_completed(alert({**failed, "AlertId": str(uuid.uuid4())}), relay.ctx)
        states, told = await relay.states(), await relay.told()
    assert states == {"o-1": "accepted", "o-2": "accepted"}
    [note] = told
    assert (note["kind"], note["severity"], note["company_id"]) == ("sync_failed", "warning", COMPANY)
    assert note["details"]["syncStatusCode"] == code and note["details"]["meaning"] == meaning
    assert meaning in note["summary"] and note["details"]["errorMessage"] == "Account 400 is missing"


async def test_a_sync_alert_for_a_company_codat_never_synced_is_done_quietly(database_url: str) -> None:
    """No sync in Codat (404 on sync status): nothing to mark, nothing to tell."""
    async with accepted_orders(database_url) as relay:
        outcome = await on_sync_completed(alert(legacy_body("Sync Completed", CompanyId=COMPANY, Data={})), relay.ctx)
        states, told = await relay.states(), await relay.told()
    assert outcome is Outcome.DONE and told == [] and set(states.values()) == {"accepted"}


@asynccontextmanager
async def bare(database_url: str) -> AsyncIterator[tuple[Context, Any]]:
    """A context with storage and a notifier only: these handlers never ask Codat."""
    settings = make_settings(database_url)
    engine = create_engine(settings)
    clock = SystemClock()
    ctx = Context(store=engine, codat=None, notifier=Notifier(engine, ["log"], 3600, clock), clock=clock,
                  log=structlog.get_logger(), attempt=1, tracker=None)  # fmt: skip
    try:
        yield ctx, engine
    finally:
        await engine.dispose()


async def _told(engine: Any) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(sa.select(notifications))).mappings()]


def push_operation(status: str, key: str = "po-1", rule: str = "Push Operation Status Changed()") -> Alert:
    return alert(legacy_body(rule, CompanyId=COMPANY,
                             Data={"dataType": "invoices", "status": status, "pushOperationKey": key}))  # fmt: skip


async def test_push_operation_failures_are_told_once_per_operation(database_url: str) -> None:
    """Failed, timed-out and unsuccessful push operations are told once per operation; successes are ignored."""
    async with bare(database_url) as (ctx, engine):
        outcomes = [
            await on_push_operation(push_operation("Success", "po-0"), ctx),
            await on_push_operation(push_operation("Failed"), ctx),
            await on_push_operation(push_operation("Failed"), ctx),  # another alert rule, another AlertId
            await on_push_operation(push_operation("", "po-2", rule="Push Operation Timed Out"), ctx),
            await on_push_operation(envelope("invoices.write.unsuccessful", {"id": "po-3", "status": "Failed"}), ctx),
            await on_push_operation(envelope("invoices.write.successful", {"id": "po-4", "status": "Success"}), ctx),
        ]
        told = await _told(engine)
    assert outcomes == [Outcome.IGNORED, Outcome.DONE, Outcome.DONE, Outcome.DONE, Outcome.DONE, Outcome.IGNORED]
    assert sorted(n["details"]["operation"] for n in told) == ["po-1", "po-2", "po-3"]
    assert {n["kind"] for n in told} == {"dataset_failed"}


@pytest.mark.parametrize("event", ["connection.disconnected", "connection.failed"])
async def test_a_connection_that_needs_a_person_is_told_auth_required(database_url: str, event: str) -> None:
    """connection.disconnected/failed: the connection is marked unlinked and staff hear auth_required (critical)."""
    async with bare(database_url) as (ctx, engine):
        assert await on_connection_status(envelope(event, {"connection": {"id": "conn-1"}}), ctx) is Outcome.DONE
        told = await _told(engine)
        async with engine.connect() as conn:
            status = await conn.scalar(sa.select(companies.c.connection_status))
    [note] = told
    assert (note["kind"], note["severity"], note["details"]["connectionId"]) == ("auth_required", "critical", "conn-1")
    assert status == "unlinked"


async def test_a_connected_event_resumes_a_deleted_connections_company_and_pushes_its_backlog(
    database_url: str,
) -> None:
    """connection.connected lifts a connection pause and schedules the backlog; an unknown event is ignored."""
    async with bare(database_url) as (ctx, engine):
        valid, _ = validate_records("commerce-payments", [{"id": "p-1", "amount": 1.0}])
        await store_records(engine, COMPANY, "commerce-payments", valid, now=0.0, after=_nothing)
        async with writer(engine).begin() as conn:
            await conn.execute(companies.update().values(paused=True, pause_reason="connection_deleted"))
        unknown = await on_connection_status(envelope("connection.renamed", {"connection": {"id": "c"}}), ctx)
        resumed = await on_connection_status(envelope("connection.connected", {"connection": {"id": "conn-2"}}), ctx)
        async with engine.connect() as conn:
            company = (await conn.execute(sa.select(companies.c.paused, companies.c.connection_id))).one()
            pushes = (await conn.execute(sa.select(jobs.c.lock_key).where(jobs.c.kind == "push"))).scalars().all()
    assert (unknown, resumed) == (Outcome.IGNORED, Outcome.DONE)
    assert tuple(company) == (False, "conn-2") and pushes == [f"push:{COMPANY}:commerce-payments"]
