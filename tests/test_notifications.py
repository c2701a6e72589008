"""Staff notifications: deduplicated per problem, one queue job per sender, delivered through outages."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from aiosmtpd.controller import Controller
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.clock import FixedClock, SystemClock
from service.db import create_engine, jobs, notifications
from service.notifications import Kind, Notification, Notifier
from service.retry import RetryPolicy
from service.runtime import build_runtime
from service.senders import EmailSender, slack_text
from tests.conftest import make_settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Target:
    """A real HTTP notification target that can be made to fail for a while."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.refusals = 0
        self.down = False
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> JSONResponse:
        if self.down:
            self.refusals += 1
            return JSONResponse({"error": "down"}, 503)
        self.received.append(await request.json())
        return JSONResponse({"ok": True})


@contextlib.asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "target did not start"
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def rows(database_url: str, table: sa.Table) -> list[dict[str, Any]]:
    engine = create_engine(make_settings(database_url))
    try:
        async with engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(sa.select(table))).mappings()]
    finally:
        await engine.dispose()


def failed_dataset(company: str = "co-1", dataset: str = "ds-1") -> Notification:
    return Notification(Kind.DATASET_FAILED, "Dataset failed validation", company_id=company,
                        data_type="commerce-orders", dataset_id=dataset, details={"message": "bad tax rate"})


async def test_the_same_problem_is_told_once_per_window(database_url: str) -> None:
    """Within RELAY_NOTIFY_DEDUPE_SECONDS the same (kind, company, subject) is suppressed; after it, told again."""
    clock = FixedClock()
    engine = create_engine(make_settings(database_url))
    notifier = Notifier(engine, ["log", "webhook"], dedupe_s=3600, clock=clock)
    try:
        first = await notifier.notify(failed_dataset())
        again = await notifier.notify(failed_dataset())
        other_company = await notifier.notify(failed_dataset(company="co-2"))
        clock.advance(3601)
        later = await notifier.notify(failed_dataset())
    finally:
        await engine.dispose()
    assert first and other_company and later and again is None
    assert len(await rows(database_url, notifications)) == 3
    sent = [(j["kind"], j["payload"]["sender"]) for j in await rows(database_url, jobs)]
    assert sorted(sent) == sorted([("notify", "log"), ("notify", "webhook")] * 3)


async def test_concurrent_notifications_of_one_problem_store_one(database_url: str) -> None:
    """Twenty processes' worth of concurrent notifies of one problem: exactly one is stored."""
    engine = create_engine(make_settings(database_url))
    notifier = Notifier(engine, ["log"], dedupe_s=3600, clock=FixedClock())
    try:
        results = await asyncio.gather(*(notifier.notify(failed_dataset()) for _ in range(20)))
    finally:
        await engine.dispose()
    assert sum(r is not None for r in results) == 1


async def test_target_down_for_a_while_gets_every_notification_once(database_url: str) -> None:
    """The webhook target answers 503 for a while: every notification arrives once it is back, none twice."""
    target = Target()
    target.down = True
    async with serving(target.app) as url:
        settings = make_settings(database_url, notify_webhook_url=f"{url}/hook")
        engine = create_engine(settings)
        runtime = await build_runtime(settings, engine, SystemClock())
        worker = runtime.build_worker(retry=RetryPolicy(base_s=0.05, cap_s=0.2, max_attempts=50))
        for i in range(5):
            await runtime.notifier.notify(failed_dataset(dataset=f"ds-{i}"))
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            deadline = time.monotonic() + 20
            while target.refusals < 5:
                assert time.monotonic() < deadline, "the worker never tried the target"
                await asyncio.sleep(0.02)
            target.down = False
            while len(target.received) < 5:
                assert time.monotonic() < deadline, f"only {len(target.received)} arrived"
                await asyncio.sleep(0.02)
        finally:
            stop.set()
            await task
            await runtime.close()
            await engine.dispose()
    assert sorted(m["datasetId"] for m in target.received) == [f"ds-{i}" for i in range(5)]
    message = target.received[0]
    assert set(message) == {"kind", "severity", "companyId", "dataType", "datasetId", "summary", "details",
                            "occurredAt"}
    assert (message["kind"], message["severity"]) == ("dataset_failed", "warning")


async def test_email_goes_out_over_smtp() -> None:
    """The e-mail sender speaks real SMTP: a plain-text mail with the summary and the company."""
    received: list[Any] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append(envelope)
            return "250 OK"

    port = free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        sender = EmailSender(f"smtp://127.0.0.1:{port}", "ops@example.com, oncall@example.com")
        await sender.send({"kind": "auth_required", "severity": "critical", "companyId": "co-9", "dataType": None,
                           "datasetId": None, "summary": "Merchant must re-authorise", "details": {},
                           "occurredAt": "2026-01-01T00:00:00Z"})
    finally:
        controller.stop()
    [envelope] = received
    assert envelope.rcpt_tos == ["ops@example.com", "oncall@example.com"]
    text = envelope.content.decode()
    assert "Merchant must re-authorise" in text and "companyId: co-9" in text


def test_email_sender_repr_hides_the_password() -> None:
    assert "hunter2" not in repr(EmailSender("smtps://ops:hunter2@mail.example.com", "a@b.c"))


def test_slack_message_is_readable() -> None:
    text = slack_text({"kind": "connection_deleted", "severity": "critical", "companyId": "co-1", "dataType": None,
                       "datasetId": None, "summary": "Sync connection deleted", "details": {"connectionId": "c-1"}})
    assert text.startswith(":rotating_light: *connection_deleted*")
    assert "companyId `co-1`" in text and "connectionId: c-1" in text


@pytest.mark.parametrize(("env", "problem"), [({"notify_email_to": "a@b.c"}, "go together"),
                                              ({"smtp_url": "http://x"}, "go together")])
def test_email_settings_are_checked(env: dict[str, str], problem: str) -> None:
    from service.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match=problem):
        load_settings({"RELAY_WEBHOOK_AUTH_HEADER": "x", **{f"RELAY_{k.upper()}": v for k, v in env.items()}})


async def test_httpx_client_is_closed_with_the_runtime(database_url: str) -> None:
    """The runtime owns its outbound client: closing the runtime closes it."""
    settings = make_settings(database_url)
    engine = create_engine(settings)
    runtime = await build_runtime(settings, engine, FixedClock())
    await runtime.close()
    await engine.dispose()
    assert runtime.http.is_closed
    with pytest.raises(RuntimeError):
        await runtime.http.get("http://127.0.0.1:1/")
    assert isinstance(runtime.http, httpx.AsyncClient)
