"""SIGKILL the real server while deliveries are in flight: every acknowledged one is still there."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

from service.db import alerts, create_engine
from service.testing import legacy_body, signed_headers
from tests.conftest import TEST_SECRET, make_settings
from tests.integration.harness import free_port, relay_env, start, stop, wait_http

DELIVERIES = 400
KILL_AFTER_ACKS = 150
CONCURRENCY = 16


def signed(index: int, now: int) -> tuple[str, bytes, dict[str, str]]:
    msg_id = f"crash-{index:05d}"
    body = json.dumps(legacy_body(AlertId=msg_id)).encode()
    return msg_id, body, signed_headers(body, TEST_SECRET, msg_id=msg_id, at=now)


async def send_all(url: str, ids: range, on_ack: asyncio.Event | None, acked: set[str]) -> None:
    """Send with CONCURRENCY clients; record what got a 2xx; set `on_ack` once enough were acked."""
    pending = list(ids)

    async def one(client: httpx.AsyncClient) -> None:
        while pending:
            index = pending.pop(0)
            msg_id, body, headers = signed(index, int(time.time()))
            try:
                response = await client.post(url, content=body, headers=headers)
            except httpx.TransportError:
                continue  # not acknowledged: Codat would deliver it again
            if 200 <= response.status_code < 300:
                acked.add(msg_id)
                if on_ack is not None and len(acked) >= KILL_AFTER_ACKS:
                    on_ack.set()

    async with httpx.AsyncClient(timeout=5.0) as client:
        await asyncio.gather(*(one(client) for _ in range(CONCURRENCY)))


async def stored_ids(database_url: str) -> set[str]:
    engine = create_engine(make_settings(database_url))
    try:
        async with engine.connect() as conn:
            return set((await conn.execute(sa.select(alerts.c.id))).scalars())
    finally:
        await engine.dispose()


async def test_sigkill_after_202_loses_nothing(database_url: str, tmp_path: Path) -> None:
    """Kill -9 mid-stream, restart: every acknowledged delivery is stored; redelivery completes the set."""
    port = free_port()
    env = relay_env(database_url, port)
    url = f"http://127.0.0.1:{port}/webhooks/codat"
    proc = start(["serve"], env, tmp_path / "relay.log")
    acked: set[str] = set()
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        enough = asyncio.Event()
        sender = asyncio.create_task(send_all(url, range(DELIVERIES), enough, acked))
        await asyncio.wait_for(enough.wait(), 60)
        proc.send_signal(signal.SIGKILL)
        await sender
    finally:
        stop(proc, signal.SIGKILL)
    acked_before_kill = set(acked)
    assert len(acked_before_kill) >= KILL_AFTER_ACKS

    proc = start(["serve"], env, tmp_path / "relay.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        assert acked_before_kill <= await stored_ids(database_url)
        # Codat-style redelivery of everything: the unacknowledged complete the set, the rest are duplicates.
        redelivered: set[str] = set()
        await send_all(url, range(DELIVERIES), None, redelivered)
    finally:
        assert stop(proc) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after a clean shutdown
    assert await stored_ids(database_url) == {f"crash-{i:05d}" for i in range(DELIVERIES)}
