"""Database outage: PostgreSQL unreachable for a while under load, then back, without restarting the relay.

PostgreSQL is made unreachable through `CuttableProxy` (tcp_proxy.py, on its own thread) rather than by stopping the
server: the server is shared with every other test on the machine, and from the relay's side a proxy
that resets every connection and refuses new ones is the same fault as the database host going away.

While it is down every delivery must be answered 503 with `Retry-After` (Codat retries 503, never
400/500), within Codat's 15 s; `/readyz` says 503. When it is back the same process accepts again,
its workers finish every alert, and nothing acknowledged is lost.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.integration.harness import free_port, relay_env, stop
from tests.reliability.common import (
    Delivery,
    Tally,
    delivery,
    post,
    redeliver_until_acked,
    report,
    slow,
    start_relay,
    until,
    until_processed,
    wait_healthy,
)
from tests.reliability.recording_handlers import create_tables
from tests.reliability.tcp_proxy import ProxyThread

SENDERS = 8
CODAT_ANSWER_DEADLINE_S = 15.0
ACKS_BEFORE_CUT = 50
ACKS_AFTER_RESTORE = 50
PAUSE_AFTER_503_S = 0.25
RECOVERY_DEADLINE_S = 30.0


class Load:
    """New deliveries, continuously, tallied by the phase in which each was sent."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.phase = "before"
        self.items: list[Delivery] = []
        self.tally = Tally()
        self.codes: dict[str, Counter[int | None]] = {p: Counter() for p in ("before", "outage", "after")}
        self.slowest_s: dict[str, float] = {p: 0.0 for p in self.codes}
        self.first_ack_after: float | None = None
        self._stop = asyncio.Event()

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=30.0) as client:
            await asyncio.gather(*(self._one(client) for _ in range(SENDERS)))

    def stop(self) -> None:
        self._stop.set()

    async def _one(self, client: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            item = delivery(len(self.items), "outage")
            self.items.append(item)
            phase, started = self.phase, time.monotonic()
            code = await post(client, self.url, item, self.tally)
            self.codes[phase][code] += 1
            self.slowest_s[phase] = max(self.slowest_s[phase], time.monotonic() - started)
            if code is not None and code < 300 and phase == "after" and self.first_ack_after is None:
                self.first_ack_after = time.monotonic()
            if code is None or code >= 500:
                # Codat waits for Retry-After (5 s); probing faster keeps the outage observed throughout.
                await asyncio.sleep(PAUSE_AFTER_503_S)


async def readiness(port: int) -> int:
    async with httpx.AsyncClient(timeout=10.0) as client:
        return (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code


@pytest.mark.parametrize("outage_s", [pytest.param(3.0, id="fast"), pytest.param(10.0, id="full", marks=slow)])
async def test_postgres_unreachable_under_load_answers_503_and_recovers_without_restart(
    postgres_url: str, tmp_path: Path, outage_s: float
) -> None:
    """PostgreSQL cut for `outage_s` under load → 503 + Retry-After meanwhile, then full recovery, 0 lost."""
    await create_tables(postgres_url)
    target = make_url(postgres_url)
    async with ProxyThread(target.host or "127.0.0.1", target.port or 5432) as proxy:
        via_proxy = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        port = free_port()
        env = relay_env(via_proxy, port, RELAY_JOB_LEASE_SECONDS="5", RELAY_WORKER_CONCURRENCY="8")
        proc = start_relay(["serve"], env, tmp_path / "relay.log")
        load = Load(f"http://127.0.0.1:{port}/webhooks/codat")
        t0 = time.monotonic()
        marks: dict[str, float] = {}
        try:
            await wait_healthy(port, proc)
            marks["healthy"] = time.monotonic() - t0
            sender = asyncio.create_task(load.run())
            await until(lambda: _value(len(load.tally.acked)), lambda n: n >= ACKS_BEFORE_CUT, 30, "acks before cut")
            await proxy.cut()
            load.phase = "outage"  # from here every request is sent with the database unreachable
            cut_at = time.monotonic()
            await asyncio.sleep(outage_s / 2)  # the outage's length is the point here, not a wait for work
            ready_during = await readiness(port)
            await asyncio.sleep(cut_at + outage_s - time.monotonic())
            await proxy.restore()
            load.phase = "after"
            restored_at = time.monotonic()
            await until(lambda: _value(load.first_ack_after), bool, RECOVERY_DEADLINE_S, "a 2xx after the outage")
            acked_after_restore = len(load.tally.acked)
            wanted = acked_after_restore + ACKS_AFTER_RESTORE
            await until(lambda: _value(len(load.tally.acked)), lambda n: n >= wanted, 30, "load flowing again")
            load.stop()
            await sender
            marks["load_stopped"] = time.monotonic() - t0
            ready_after = await readiness(port)
            acked = set(load.tally.acked)
            redelivered = await redeliver_until_acked(load.url, load.items, load.tally, concurrency=SENDERS)
            marks["redelivered"] = time.monotonic() - t0
            outcome = await until_processed(postgres_url, {d.id for d in load.items}, deadline_s=90)
            marks["processed"] = time.monotonic() - t0
            restarted = proc.poll() is not None
        finally:
            # Off the event loop: the proxy lives on it, and the relay closes its connections through it.
            exit_code = await asyncio.to_thread(stop, proc)

    ids = {d.id for d in load.items}
    outage_codes = load.codes["outage"]
    figures = {
        "backend": "postgres",
        "outage_seconds": outage_s,
        "deliveries": len(load.items),
        "acknowledged": len(acked),
        "lost": len(acked - set(outcome.stored)),
        "answers_before": _codes(load.codes["before"]),
        "answers_during_outage": _codes(outage_codes),
        "answers_after": _codes(load.codes["after"]),
        "answers_5xx_other_than_503": load.tally.errors_other_than_503,
        "answers_503_without_retry_after": load.tally.missing_retry_after,
        "slowest_answer_during_outage_s": round(load.slowest_s["outage"], 2),
        "readyz_during_outage": ready_during,
        "readyz_after": ready_after,
        "seconds_to_first_2xx_after_restore": round((load.first_ack_after or 0) - restored_at, 2),
        "redelivery_rounds": redelivered,
        "done": sum(1 for i in ids if outcome.stored.get(i) == "done"),
        "processed_twice": outcome.processed_twice(),
        "relay_restarted": restarted,
        "exit_code_on_sigterm": exit_code,
        "seconds": {k: round(v, 1) for k, v in marks.items()},
    }
    report(f"db-outage-{'full' if outage_s >= 10 else 'fast'}-postgres", figures)
    assert figures["lost"] == 0
    assert outage_codes[503] > 0 and set(outage_codes) == {503}, figures
    assert load.tally.errors_other_than_503 == 0 and load.tally.missing_retry_after == 0
    assert load.slowest_s["outage"] < CODAT_ANSWER_DEADLINE_S
    assert (ready_during, ready_after) == (503, 200)
    assert not restarted and exit_code in (0, -signal.SIGTERM)
    assert not outcome.not_done(ids) and {i: outcome.effects.get(i) for i in ids} == {
        d.id: d.status for d in load.items
    }


async def _value(value: object) -> object:
    return value


def _codes(counter: Counter[int | None]) -> dict[str, int]:
    return {("no_answer" if code is None else str(code)): n for code, n in sorted(counter.items(), key=str)}
