"""Traces (issue 17): one delivery is one trace — webhook received → alert job → handler → Codat call →
notification job → notification sent — linked across the queue by the trace context the job row carries.

The relay runs in-process (so the SDK's InMemorySpanExporter sees its spans) with its workers, on each
backend; Codat is the sandbox as a separate process over real HTTP, and the notification target a real
HTTP server. Tracing is off by default and then adds nothing to a job's payload.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from service import tracing
from service.db import create_engine, jobs
from service.testing import legacy_body, running_app, sandbox_company
from service.web.app import AppOptions
from tests.conftest import TEST_AUTH_HEADER, make_settings
from tests.integration.e2e import CODAT_API_KEY, notification_target
from tests.integration.harness import free_port, relay_env, sandbox_process, stop, wait_http

DEADLINE_S = 60.0
CODAT_AUTH = {"Authorization": "Basic " + base64.b64encode(CODAT_API_KEY.encode()).decode()}


@pytest.fixture(scope="module")
def sandbox_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with sandbox_process(tmp_path_factory.mktemp("sb") / "log", env={"PATH": "/usr/bin:/bin"}) as base:
        yield base


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.use(provider)
    try:
        yield memory
    finally:
        tracing.use(None)
        provider.shutdown()


def deleted_connection(sandbox_url: str) -> tuple[str, str]:
    """A sandbox company whose connection Codat has deleted (GET answers 404): (company, connection)."""
    company = sandbox_company(sandbox_url)
    with httpx.Client(base_url=sandbox_url, headers=CODAT_AUTH, timeout=10) as codat:
        connection = codat.post(f"/_sandbox/companies/{company}/delete-connection").json()["connectionId"]
        assert codat.get(f"/companies/{company}/connections/{connection}").status_code == 404
    return company, connection


async def wait_for(fetch: Any, what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while not (value := fetch()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
    return value


def named(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_one_delivery_is_one_connected_trace(
    database_url: str, sandbox_url: str, exporter: InMemorySpanExporter
) -> None:
    company, connection = deleted_connection(sandbox_url)
    with notification_target() as (hook, target):
        settings = make_settings(database_url, codat_base_url=sandbox_url, codat_api_key=CODAT_API_KEY,
                                 notify_webhook_url=hook, codat_requests_per_minute=0)  # fmt: skip
        async with running_app(settings, options=AppOptions(run_workers=True)) as (_, client):
            # Codat's legacy rule: the relay asks Codat about the connection (404: it stands), pauses the
            # company and tells staff.
            body = legacy_body("Sync Connection Deleted", CompanyId=company, DataConnectionId=connection, Data={})
            answer = await client.post("/webhooks/codat", content=json.dumps(body).encode(),
                                       headers={"authorization": TEST_AUTH_HEADER})  # fmt: skip
            assert answer.status_code == 202, answer.text
            await wait_for(lambda: target.of(company, "connection_deleted"), "the staff notification")

            def finished() -> list[ReadableSpan]:
                spans = list(exporter.get_finished_spans())
                return spans if sum(x.name == "job notify" for x in spans) == 2 else []

            spans = await wait_for(finished, "both notify jobs' spans (senders: log, webhook)")

    received = named(spans, "POST /webhooks/codat")
    trace_id = received.context.trace_id
    in_trace = [s for s in spans if s.context.trace_id == trace_id]
    alert_job = named(in_trace, "job alert")
    handler = named(in_trace, "handler connection_deleted")
    codat_call = named(in_trace, "codat get_connection")
    notify_jobs = [s for s in in_trace if s.name == "job notify"]
    sent = named(in_trace, "notify webhook")
    logged = named(in_trace, "notify log")

    assert received.parent is None and received.kind is SpanKind.SERVER
    assert received.attributes is not None and received.attributes["codat.delivery_id"] == body["AlertId"]
    assert received.attributes["http.response.status_code"] == 202
    # Across the queue: the worker's job span is the received span's child, through the job row.
    assert parent_of(alert_job) == received.context.span_id and alert_job.kind is SpanKind.CONSUMER
    assert parent_of(handler) == alert_job.context.span_id
    assert parent_of(codat_call) == handler.context.span_id and codat_call.kind is SpanKind.CLIENT
    assert codat_call.attributes is not None and codat_call.attributes["http.response.status_code"] == 404
    # The notification was queued by the handler: its job and its sending continue the same trace.
    assert [parent_of(job) for job in notify_jobs] == [handler.context.span_id] * 2
    assert {parent_of(sent), parent_of(logged)} == {job.context.span_id for job in notify_jobs}
    assert sent.kind is SpanKind.CLIENT
    assert received.start_time is not None and sent.end_time is not None and received.start_time < sent.end_time


async def test_tracing_off_adds_nothing_to_the_jobs(database_url: str) -> None:
    """Off by default: no span context anywhere, and job payloads are exactly as before."""
    assert not tracing.enabled()
    async with running_app(make_settings(database_url)) as (_, client):
        body = legacy_body()
        answer = await client.post("/webhooks/codat", content=json.dumps(body).encode(),
                                   headers={"authorization": TEST_AUTH_HEADER})  # fmt: skip
        assert answer.status_code == 202
    engine = create_engine(make_settings(database_url))
    try:
        async with engine.connect() as conn:
            payloads = list((await conn.execute(sa.select(jobs.c.payload).where(jobs.c.kind == "alert"))).scalars())
    finally:
        await engine.dispose()
    assert payloads == [{"alert_id": body["AlertId"]}]


@pytest.mark.parametrize(
    ("environ", "exporters"),
    [({}, []), ({"OTEL_TRACES_EXPORTER": "none"}, []), ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
     ({"OTEL_TRACES_EXPORTER": "otlp, Console"}, ["otlp", "console"]),
     ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}, [])],
)
def test_the_standard_variables_turn_tracing_on(environ: dict[str, str], exporters: list[str]) -> None:
    assert tracing.exporters_from_env(environ) == exporters


def test_an_exporter_codat_relay_cannot_use_is_refused_by_name() -> None:
    with pytest.raises(tracing.TracingConfigError, match=r"^OTEL_TRACES_EXPORTER: jaeger"):
        tracing.exporters_from_env({"OTEL_TRACES_EXPORTER": "jaeger"})


def test_serve_refuses_an_unknown_exporter_by_name(tmp_path: Path) -> None:
    """`codat-relay serve` with OTEL_TRACES_EXPORTER=jaeger stops at start-up, exit 1, naming the variable."""
    env = relay_env(f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}", free_port(), OTEL_TRACES_EXPORTER="jaeger")
    done = subprocess.run([sys.executable, "-m", "service.cli", "serve"], env=env, capture_output=True, timeout=60,
                          check=False)  # fmt: skip
    assert done.returncode == 1
    assert b"OTEL_TRACES_EXPORTER: jaeger is not one of otlp, console" in done.stderr


def console_spans(path: Path) -> list[dict[str, Any]]:
    """The spans a process's console exporter wrote to its stdout (indented JSON objects, one after another)."""
    text, decoder, spans, at = path.read_text(), json.JSONDecoder(), [], 0
    while (at := _skip_space(text, at)) < len(text):
        try:
            span, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            break  # the exporter is writing the next one
        spans.append(span)
    return spans


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


WORKER_SPANS = {"job alert", "handler connection_deleted", "codat get_connection", "job notify", "notify webhook"}


@pytest.mark.integration
def test_a_trace_crosses_from_the_web_process_to_a_worker_process(
    database_url: str, sandbox_url: str, tmp_path: Path
) -> None:
    """`codat-relay web` and `codat-relay worker` as two processes, OTEL_TRACES_EXPORTER=console: the
    worker's job span is the child of the web process's request span, through the job row alone."""
    company, connection = deleted_connection(sandbox_url)
    web_port, worker_port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    with notification_target() as (hook, target):
        for role, port in (("web", web_port), ("worker", worker_port)):
            env = relay_env(database_url, port, RELAY_CODAT_BASE_URL=sandbox_url, RELAY_CODAT_API_KEY=CODAT_API_KEY,
                            RELAY_NOTIFY_WEBHOOK_URL=hook, RELAY_CODAT_REQUESTS_PER_MINUTE="0",
                            OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME=f"relay-{role}",
                            OTEL_BSP_SCHEDULE_DELAY="50")  # fmt: skip
            with (tmp_path / f"{role}.spans").open("wb") as out, (tmp_path / f"{role}.log").open("wb") as log:
                procs.append(subprocess.Popen([sys.executable, "-m", "service.cli", role], env=env, stdout=out,
                                              stderr=log, cwd=Path(__file__).resolve().parents[1]))  # fmt: skip
        try:
            wait_http(f"http://127.0.0.1:{web_port}/readyz", procs[0])
            wait_http(f"http://127.0.0.1:{worker_port}/readyz", procs[1])
            body = legacy_body("Sync Connection Deleted", CompanyId=company, DataConnectionId=connection, Data={})
            answer = httpx.post(f"http://127.0.0.1:{web_port}/webhooks/codat", content=json.dumps(body).encode(),
                                headers={"authorization": TEST_AUTH_HEADER}, timeout=10)  # fmt: skip
            assert answer.status_code == 202, answer.text
            deadline = time.monotonic() + DEADLINE_S
            # Until every span the test looks at is written: the exporter writes in batches, and each notify
            # target runs in a job of its own (a `job notify` of the log target's can be written before the
            # webhook target's `notify webhook`, which ends only after the target has received the message).
            while not (target.of(company, "connection_deleted") and WORKER_SPANS <= {
                    s["name"] for s in console_spans(tmp_path / "worker.spans")}):  # fmt: skip
                assert time.monotonic() < deadline, "not every span from the worker"
                time.sleep(0.1)
            web = console_spans(tmp_path / "web.spans")
            worker = console_spans(tmp_path / "worker.spans")
        finally:
            for proc in procs:
                stop(proc)

    received = next(s for s in web if s["name"] == "POST /webhooks/codat")
    trace_id = received["context"]["trace_id"]
    mine = {s["name"]: s for s in worker if s["context"]["trace_id"] == trace_id}
    assert received["resource"]["attributes"]["service.name"] == "relay-web"
    assert WORKER_SPANS <= set(mine)
    assert mine["job alert"]["parent_id"] == received["context"]["span_id"]
    assert mine["job alert"]["resource"]["attributes"]["service.name"] == "relay-worker"
    assert mine["handler connection_deleted"]["parent_id"] == mine["job alert"]["context"]["span_id"]
    assert mine["codat get_connection"]["parent_id"] == mine["handler connection_deleted"]["context"]["span_id"]
