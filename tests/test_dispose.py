"""Closing the engine at shutdown is bounded (`service.db.dispose`): a PostgreSQL gone silent, its sockets
still open, must not hold a stopping process beyond its orchestrator's grace period."""

from __future__ import annotations

import asyncio
import time

import sqlalchemy as sa
from structlog.testing import capture_logs

from service.db import create_engine, dispose
from tests.conftest import make_settings
from tests.silent_proxy import silent_proxy

BOUND_S = 1.0
CONNECTIONS = 3
# dispose() must return soon after its bound; unbounded, asyncpg's graceful close of each connection waits
# on the silent socket (what the first assertion shows: it had not finished when the bound ran out).
DEADLINE_S = BOUND_S + 2.0


async def test_disposing_an_engine_whose_database_went_silent_returns_within_its_bound(postgres_url: str) -> None:
    async with silent_proxy(postgres_url) as proxy:
        engine = create_engine(make_settings(proxy.url(postgres_url)))
        try:
            # Several pooled connections, each used once, all back in the pool.
            connections = [await engine.connect() for _ in range(CONNECTIONS)]
            for conn in connections:
                assert await conn.scalar(sa.text("SELECT 1")) == 1
            for conn in connections:
                await conn.close()
            assert engine.pool.checkedin() == CONNECTIONS
            proxy.silence()
            started = time.monotonic()
            with capture_logs() as logs:
                finished = await asyncio.wait_for(dispose(engine, timeout_s=BOUND_S), DEADLINE_S)
            elapsed = time.monotonic() - started
        finally:
            await proxy.close()  # sockets aborted: whatever the cut-off close left waiting fails now
    assert finished is False, "closing the connections did not wait on the silent server (the test proves nothing)"
    assert BOUND_S <= elapsed < DEADLINE_S
    assert [entry["event"] for entry in logs] == ["engine_dispose_timed_out"]


async def test_disposing_an_engine_whose_database_answers_finishes(database_url: str) -> None:
    engine = create_engine(make_settings(database_url))
    async with engine.connect() as conn:
        assert await conn.scalar(sa.text("SELECT 1")) == 1
    assert await dispose(engine, timeout_s=BOUND_S) is True
    assert engine.pool.checkedin() == 0
