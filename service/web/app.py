"""The Starlette application: resources in the lifespan, errors mapped to HTTP in one table."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from service import metrics, migrate
from service.clock import Clock, SystemClock
from service.codat.client import CodatError
from service.db import create_engine, dispose
from service.errors import Rejected, RetryLater
from service.ingest import WRITE_TIMEOUT_S, Ingestor
from service.runtime import Runtime, build_runtime
from service.settings import Settings
from service.web import (
    alerts_api,
    companies_api,
    docs,
    jobs_api,
    openapi,
    problems_api,
    records_api,
    replays_api,
    syncs_api,
    ui,
    ui_views,
)
from service.web.auth import require
from service.web.responses import error_response, json_response, rejected_response, retry_later_response
from service.web.throttle import FailureThrottle
from service.web.webhooks import WEBHOOK_PATH, WebhookEndpoint

log = structlog.get_logger("service.web.app")


@dataclass
class AppOptions:
    """What differs between `serve` (web + workers), `web`, and tests."""

    run_workers: bool = False
    transport: httpx.AsyncBaseTransport | None = None
    write_timeout_s: float = WRITE_TIMEOUT_S
    # `POST /webhooks/codat` answered before Starlette's stack (RelayApp); off only to compare the two doors.
    webhook_fast_path: bool = True
    # The CLI's processes (`serve`, `web`, `worker`) freeze what start-up made (`freeze_startup_heap`); tests
    # leave it off: their process runs many apps, and frozen garbage is never collected.
    freeze_heap: bool = False


def freeze_startup_heap() -> None:
    """Collect once, then move every object start-up left (modules, classes, settings, the runtime) into the
    collector's permanent generation (`gc.freeze`): a full collection then scans only what was made since.

    Unfrozen, a full collection of a web process's ~120,000 start-up objects stalled its event loop 100-130
    ms, and every answer in flight waited (gc callbacks in `codat-relay web` under bench_ingest, 2026-12-07,
    AMD EPYC: one in ~10 s at full load). Frozen, the collections that remained took at most 0.7 ms."""
    gc.collect()
    gc.freeze()
    log.info("startup_heap_frozen", objects=gc.get_freeze_count())


async def rejected(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Rejected)
    return rejected_response(exc)


async def retry_later(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RetryLater)
    return retry_later_response(exc)


async def unexpected(_request: Request, exc: Exception) -> Response:
    # A bug of ours, never the client's input; logged with its traceback.
    log.error("unhandled_error", error=type(exc).__name__, exc_info=exc)
    return error_response("internal_error", 500)


async def client_disconnected(request: Request, _exc: Exception) -> Response:
    # The client hung up mid-body: anyone on the internet can do that, so it is no error of ours.
    log.info("client_disconnected", method=request.method, path=request.url.path)
    return Response(status_code=499)  # never read: the client has gone


async def codat_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CodatError)
    return syncs_api.codat_error_response(exc)


async def http_error(_request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no route matched) and 405, as JSON like every other error of the API."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(code, exc.status_code, headers=dict(exc.headers or {}))


EXCEPTION_HANDLERS: dict[Any, Any] = {
    HTTPException: http_error,
    Rejected: rejected,
    RetryLater: retry_later,
    CodatError: codat_error,
    ClientDisconnect: client_disconnected,
    Exception: unexpected,
}


async def healthz(request: Request) -> Response:
    """Liveness: 200 while the process runs, 503 once the worker it runs has stopped (it would not recover)."""
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is not None and runtime.worker_failure is not None:
        return json_response({"status": "unavailable", "reason": runtime.worker_failure}, 503)
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    engine: AsyncEngine = request.app.state.runtime.engine
    try:
        async with asyncio.timeout(3):
            async with engine.connect() as conn:
                current = await migrate.current_revision_quietly(conn)
    except Exception as exc:  # any failure to reach the database means "not ready"
        return json_response({"status": "unavailable", "reason": type(exc).__name__}, 503)
    head = request.app.state.migration_head
    if current != head:
        return json_response({"status": "unavailable", "reason": f"migrations at {current}, need {head}"}, 503)
    return json_response({"status": "ready"})


@require("admin")
async def metrics_endpoint(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    with contextlib.suppress(Exception):  # a database outage must not hide the other metrics
        await metrics.refresh_queue_gauges(runtime.engine, runtime.clock.now())
    if runtime.codat is not None and runtime.codat.rate_limit_remaining is not None:
        metrics.CODAT_RATE_LIMIT_REMAINING.set(runtime.codat.rate_limit_remaining)
    return PlainTextResponse(metrics.render(), media_type=metrics.CONTENT_TYPE)


def ops_routes() -> list[Route]:
    """Health and metrics: what every process that serves HTTP answers, `web` and `worker` alike."""
    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]


@contextlib.asynccontextmanager
async def _runtime(app: Starlette, settings: Settings, clock: Clock, options: AppOptions) -> AsyncIterator[Runtime]:
    """The process's engine and runtime, on `app.state`, closed (runtime, then engine) when the app stops."""
    engine = create_engine(settings)
    runtime = await build_runtime(settings, engine, clock, transport=options.transport)
    app.state.runtime = runtime
    try:
        yield runtime
    finally:
        await runtime.close()
        await dispose(engine)


def create_app(settings: Settings, *, clock: Clock | None = None, options: AppOptions | None = None) -> Starlette:
    clock = clock or SystemClock()
    options = options or AppOptions()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with _runtime(app, settings, clock, options) as runtime:
            ingestor = Ingestor(
                runtime.engine,
                clock,
                write_timeout_s=options.write_timeout_s,
                on_commit=runtime.wake_workers,
                sqlite_synchronous=settings.sqlite_synchronous,
            )
            endpoint.bind(ingestor)
            await ingestor.start()
            if options.run_workers:
                await runtime.start_workers()
            if options.freeze_heap:
                freeze_startup_heap()
            try:
                yield
            finally:
                await ingestor.stop()

    endpoint = _LazyWebhook(settings, clock)
    app = RelayApp(
        endpoint if options.webhook_fast_path else None,
        routes=[
            Route(WEBHOOK_PATH, endpoint.handle, methods=["POST"]),
            *ops_routes(),
            *replays_api.routes(),  # before /v1/alerts/{id}: `replay` is no alert id here
            *alerts_api.routes(),
            *jobs_api.routes(),
            *problems_api.routes(),
            *ui.routes(),
            *ui_views.routes(),
            *records_api.routes(),
            *companies_api.routes(),
            *syncs_api.routes(),
            *openapi.routes(),
            *docs.routes(),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.migration_head = migrate.head_revision()
    app.state.auth_throttle = auth_throttle(settings)
    return app


def auth_throttle(settings: Settings) -> FailureThrottle:
    return FailureThrottle(settings.auth_failure_limit, settings.auth_failure_window_seconds)


WorkerExited = Callable[[BaseException | None], None]


def create_worker_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    options: AppOptions | None = None,
    on_worker_exit: WorkerExited | None = None,
) -> Starlette:
    """`codat-relay worker`: the job-processing half, serving only /healthz, /readyz and /metrics.

    Counters are per process, so a worker's pushes, notifications and job runs can only be scraped
    from the worker itself. `on_worker_exit` is called if the worker stops before shutdown (say, the
    database is not migrated yet): the CLI then exits, so a worker that does no work never looks alive.
    """
    clock = clock or SystemClock()
    options = options or AppOptions()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with _runtime(app, settings, clock, options) as runtime:
            stop = asyncio.Event()
            task = asyncio.create_task(runtime.run_worker_forever(stop), name="worker")

            def exited(done: asyncio.Task[None]) -> None:
                if stop.is_set():
                    return
                error = None if done.cancelled() else done.exception()
                runtime.worker_exited(error)  # logged; /healthz answers 503 until the process exits
                if on_worker_exit is not None:
                    on_worker_exit(error)

            task.add_done_callback(exited)
            if options.freeze_heap:
                freeze_startup_heap()
            try:
                yield
            finally:
                stop.set()  # running jobs get RELAY_SHUTDOWN_GRACE_SECONDS; the rest are released
                await asyncio.gather(task, return_exceptions=True)

    app = Starlette(routes=ops_routes(), exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan)
    app.state.settings = settings
    app.state.auth_throttle = auth_throttle(settings)
    app.state.migration_head = migrate.head_revision()
    return app


class RelayApp(Starlette):
    """Starlette, with `POST /webhooks/codat` taken before its middleware, router and Request are built.

    That route is the one answered thousands of times a second; per request, Starlette's stack cost
    more than the relay's own work. The fast path shares the endpoint (`WebhookEndpoint.answer`), so
    answers, durability, log lines and counters are the same; anything else (another method, a
    trailing slash, a root path) goes through Starlette as before. A bug is answered as
    ServerErrorMiddleware answers it (`unexpected`: logged, 500) and re-raised to the server, like it.
    """

    def __init__(self, webhook: _LazyWebhook | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._webhook = webhook

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self._webhook is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] == WEBHOOK_PATH
            and not scope.get("root_path")
        ):
            scope["app"] = self
            try:
                await self._webhook.asgi(scope, receive, send)
            except Exception as exc:
                response = await unexpected(Request(scope, receive), exc)
                await response(scope, receive, send)
                raise
            return
        await super().__call__(scope, receive, send)


class _LazyWebhook:
    """The route exists before the lifespan creates the ingestor it needs."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self._settings = settings
        self._clock = clock
        self._endpoint: WebhookEndpoint | None = None

    def bind(self, ingestor: Ingestor) -> None:
        self._endpoint = WebhookEndpoint(self._settings, ingestor, self._clock)

    async def handle(self, request: Request) -> Response:
        if self._endpoint is None:
            raise RetryLater("starting up")
        return await self._endpoint.handle(request)

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._endpoint is None:
            await retry_later_response(RetryLater("starting up"))(scope, receive, send)
            return
        await self._endpoint.asgi(scope, receive, send)
