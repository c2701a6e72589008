"""The sandbox app: a scriptable stand-in for the Codat endpoints codat-relay uses (like stripe-mock)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette

from service.clock import Clock, SystemClock
from service.sandbox import codat_api, codat_config, codat_syncs, consumers, control
from service.sandbox.config import SandboxConfig
from service.sandbox.edge import Sandbox, not_served
from service.sandbox.state import SandboxState, ShiftedClock
from service.sandbox.webhooks import WebhookSender

# How often time-driven changes (datasets finishing, syncs ending) are settled and their webhooks sent.
# Requests settle them too, so with a fixed clock tests never depend on this timer.
TICK_S = 0.1


def create_sandbox_app(
    config: SandboxConfig,
    *,
    clock: Clock | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Starlette:
    state = SandboxState(config, ShiftedClock(clock or SystemClock()))
    consumer_store = consumers.ConsumerStore()
    sandbox = Sandbox(state, WebhookSender(state, transport, consumer_store))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        ticker = asyncio.get_running_loop().create_task(_tick_forever(sandbox))
        try:
            yield
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            await sandbox.sender.aclose()

    app = Starlette(
        routes=[*codat_api.ROUTES, *codat_syncs.ROUTES, *codat_config.ROUTES, *consumers.ROUTES, *control.ROUTES],
        exception_handlers={404: not_served, 405: not_served},
        lifespan=lifespan,
    )
    app.state.sandbox = sandbox
    app.state.consumers = consumer_store
    app.state.webhook_transport = transport
    return app


async def _tick_forever(sandbox: Sandbox) -> None:
    while True:
        sandbox.tick()
        await asyncio.sleep(TICK_S)


def run_sandbox(config: SandboxConfig, host: str = "127.0.0.1", port: int = 8900) -> None:
    """Serve the sandbox until interrupted (`codat-relay sandbox`)."""
    import uvicorn  # imported here so importing the package stays cheap for tests and the CLI's --help

    uvicorn.run(create_sandbox_app(config), host=host, port=port, log_level="info")
