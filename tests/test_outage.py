"""Storage unavailable: 503 with Retry-After (Codat retries that, never a 500), then recovery without restart."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time

import httpx

from service.testing import legacy_body, running_app
from service.web.app import AppOptions
from tests.conftest import TEST_AUTH_HEADER, _admin, make_settings

HEADERS = {"authorization": TEST_AUTH_HEADER}


async def post_new(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post("/webhooks/codat", content=json.dumps(legacy_body()).encode(), headers=HEADERS)


async def until_accepted(client: httpx.AsyncClient, deadline_s: float = 20.0) -> httpx.Response:
    """Poll with fresh deliveries until one is accepted again (the pool reconnects on its own)."""
    deadline = time.monotonic() + deadline_s
    while True:
        response = await post_new(client)
        if response.status_code == 202 or time.monotonic() > deadline:
            return response
        assert response.status_code == 503, response.text
        await asyncio.sleep(0.2)


async def test_postgres_refusing_connections_gives_503_then_recovers(postgres_url: str) -> None:
    """PostgreSQL refusing connections → 503 + Retry-After; allowed again → 202, same process."""
    name = postgres_url.rsplit("/", 1)[1]
    settings = make_settings(postgres_url)
    async with running_app(settings) as (_, client):
        assert (await post_new(client)).status_code == 202
        await asyncio.to_thread(_admin, f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        await asyncio.to_thread(
            _admin, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        )
        try:
            down = await post_new(client)
            ready = await client.get("/readyz")
        finally:
            await asyncio.to_thread(_admin, f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        assert (down.status_code, down.json()) == (503, {"error": "unavailable"})
        assert int(down.headers["retry-after"]) > 0
        assert ready.status_code == 503
        assert (await until_accepted(client)).status_code == 202
        assert (await client.get("/readyz")).status_code == 200


async def test_sqlite_locked_by_another_writer_gives_503_then_recovers(tmp_path, sqlite_template) -> None:  # type: ignore[no-untyped-def]
    """A SQLite file held by another writer → 503 + Retry-After in time; released → 202 again."""
    path = tmp_path / "relay.db"
    path.write_bytes(sqlite_template.read_bytes())
    settings = make_settings(f"sqlite+aiosqlite:///{path}")
    async with running_app(settings, options=AppOptions(write_timeout_s=0.5)) as (_, client):
        assert (await post_new(client)).status_code == 202
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            down = await post_new(client)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert down.status_code == 503 and "retry-after" in down.headers
        assert (await until_accepted(client)).status_code == 202
