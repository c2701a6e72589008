"""Crash: signed deliveries at full speed while the real server is SIGKILLed and restarted.

Builds on tests/integration/test_crash_receiver.py (which proves acknowledged deliveries are *stored*):
here the relay also processes them (`codat-relay serve`, in-process workers, the recording handler), and
the test proves every acknowledged delivery is processed exactly once in effect, counting honestly how
many effects were applied twice (a SIGKILL between a handler's commit and its job's completion).
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.harness import free_port, relay_env, stop
from tests.reliability.common import (
    Tally,
    backend,
    delivery,
    read_outcome,
    redeliver_until_acked,
    report,
    send,
    slow,
    start_relay,
    until,
    until_processed,
    wait_healthy,
)
from tests.reliability.recording_handlers import create_tables

WORKER_CONCURRENCY = 4
LEASE_S = 3  # a killed process's jobs are taken over after this (the relay's default is 30 s)


@dataclass(frozen=True)
class Plan:
    deliveries: int
    kills: int
    concurrency: int  # simultaneous senders


FAST = Plan(deliveries=500, kills=1, concurrency=16)
FULL = Plan(deliveries=5000, kills=3, concurrency=32)


@pytest.mark.parametrize("plan", [pytest.param(FAST, id="fast"), pytest.param(FULL, id="full", marks=slow)])
async def test_sigkill_under_load_processes_every_acknowledged_delivery_once(
    database_url: str, tmp_path: Path, plan: Plan
) -> None:
    """Kill -9 mid-stream N times: nothing acknowledged is lost, every alert's effect exists exactly once."""
    await create_tables(database_url)
    port = free_port()
    env = relay_env(
        database_url, port,
        RELAY_WORKER_CONCURRENCY=str(WORKER_CONCURRENCY), RELAY_JOB_LEASE_SECONDS=str(LEASE_S),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/webhooks/codat"
    items = [delivery(i, "crash") for i in range(plan.deliveries)]
    log_path = tmp_path / "relay.log"
    tally = Tally()
    proc = start_relay(["serve"], env, log_path)
    started = time.monotonic()
    try:
        await wait_healthy(port, proc)
        sender = asyncio.create_task(send(url, items, tally, concurrency=plan.concurrency, requeue=True))
        acked_before_kill: list[int] = []
        lost_per_kill: list[int] = []  # acknowledged before a kill, missing right after the restart
        for kill in range(plan.kills):
            # Kill when a share of the stream is acknowledged, so each kill lands mid-stream at full speed.
            threshold = plan.deliveries * (kill + 1) // (plan.kills + 1)
            reached = lambda t=threshold: _now(len(tally.acked) >= t or sender.done())  # noqa: E731
            await until(reached, bool, 120, f"{threshold} acknowledged before kill {kill + 1}")
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            acked_at_kill = set(tally.acked)
            acked_before_kill.append(len(acked_at_kill))
            proc = start_relay(["serve"], env, log_path)
            await wait_healthy(port, proc)
            lost_per_kill.append(len(acked_at_kill - set((await read_outcome(database_url)).stored)))
        await sender
        sent_s = time.monotonic() - started
        acked = set(tally.acked)
        in_stream = Tally(acked=set(tally.acked), codes=tally.codes.copy())
        rounds = await redeliver_until_acked(url, items, tally, concurrency=plan.concurrency)
        redelivered_s = time.monotonic() - started
        outcome = await until_processed(database_url, {d.id for d in items}, deadline_s=120)
    finally:
        stop(proc, signal.SIGKILL)
    elapsed = time.monotonic() - started

    ids = {d.id for d in items}
    lost = acked - set(outcome.stored)
    twice = outcome.processed_twice()
    figures = {
        "backend": backend(database_url),
        "deliveries": plan.deliveries,
        "kills": plan.kills,
        "acknowledged": len(acked),
        "acknowledged_before_each_kill": acked_before_kill,
        "lost_per_kill": lost_per_kill,
        "lost": len(lost),
        "not_acknowledged_in_stream": plan.deliveries - len(acked),
        "redelivery_rounds": rounds,
        "stored": len(set(outcome.stored) & ids),
        "done": sum(1 for i in ids if outcome.stored.get(i) == "done"),
        "effects": len(set(outcome.effects) & ids),
        "processed_twice": twice,
        "max_runs_of_one_alert": max(outcome.runs.values(), default=0),
        "runs_started_beyond_one": sum(outcome.attempts[i] - 1 for i in ids if outcome.attempts.get(i, 0) > 1),
        "answers_5xx_in_stream": in_stream.server_errors,
        "answers_5xx_other_than_503": tally.errors_other_than_503,
        "transport_errors": tally.transport_errors,
        "seconds_stream": round(sent_s, 1),
        "seconds_redelivered": round(redelivered_s, 1),
        "seconds": round(elapsed, 1),
    }
    report(f"crash-{'full' if plan is FULL else 'fast'}-{backend(database_url)}", figures)
    assert lost_per_kill == [0] * plan.kills
    assert not lost, f"acknowledged but not stored: {sorted(lost)[:10]}"
    assert set(outcome.stored) >= ids and not outcome.not_done(ids)
    # The effect exists exactly once per alert, and records the state the delivery carried.
    assert {i: outcome.effects.get(i) for i in ids} == {d.id: d.status for d in items}
    # A second application needs a kill inside the handler-commit → job-complete window: at most the
    # jobs a process was running (or had finished but not yet recorded) when it died.
    assert twice <= plan.kills * WORKER_CONCURRENCY * 2, figures
    assert tally.errors_other_than_503 == 0 and tally.missing_retry_after == 0


async def _now(value: bool) -> bool:
    return value
