"""Duplicates and reordering: every delivery sent three times, concurrently and out of order.

Codat delivers at least once and promises no order (FACTS.md §4). Against a real `codat-relay serve`
with the recording handler: each delivery id is answered `accepted` once and `duplicate` twice, stored
once, processed once (no crash here, so a second run would be a bug), and its effect records the state
that delivery carried. The three shapes are mixed: legacy unsigned, legacy signed (webhook-*), envelope
signed (svix-*); copies carry different timestamps, so different signatures, as Codat's retries do.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.integration.harness import free_port, relay_env, stop
from tests.reliability.common import (
    Tally,
    backend,
    delivery,
    report,
    send,
    shuffled,
    slow,
    start_relay,
    until_processed,
    wait_healthy,
)
from tests.reliability.recording_handlers import create_tables

COPIES = 3
SENDERS = 32  # enough that copies of one delivery are in flight at the same moment


@pytest.mark.parametrize("deliveries", [pytest.param(100, id="fast"), pytest.param(3000, id="full", marks=slow)])
async def test_each_delivery_three_times_out_of_order_is_processed_once(
    database_url: str, tmp_path: Path, deliveries: int
) -> None:
    """3 copies of each delivery, shuffled, 32 at once → one `accepted` per id, one run, right final state."""
    await create_tables(database_url)
    port = free_port()
    url = f"http://127.0.0.1:{port}/webhooks/codat"
    # Few companies: many alerts per company, so per-company ordering is exercised by the shuffle.
    items = [delivery(i, "dup", mixed=True, companies=10) for i in range(deliveries)]
    stream = shuffled([d for d in items for _ in range(COPIES)], seed=deliveries)
    tally = Tally()
    proc = start_relay(["serve"], relay_env(database_url, port), tmp_path / "relay.log")
    started = time.monotonic()
    try:
        await wait_healthy(port, proc)
        await send(url, stream, tally, concurrency=SENDERS)
        outcome = await until_processed(database_url, {d.id for d in items}, deadline_s=90)
    finally:
        assert stop(proc) in (0, -signal.SIGTERM)
    answers = Counter(tally.answers)
    per_id = {d.id: (answers[(d.id, "accepted")], answers[(d.id, "duplicate")]) for d in items}
    wrong_answers = {i: a for i, a in per_id.items() if a != (1, COPIES - 1)}
    ids = {d.id for d in items}
    figures = {
        "backend": backend(database_url),
        "deliveries": deliveries,
        "requests": len(stream),
        "answers": dict(sorted(tally.codes.items())),
        "accepted": sum(a for a, _ in per_id.values()),
        "duplicate": sum(d for _, d in per_id.values()),
        "stored": len(set(outcome.stored) & ids),
        "done": sum(1 for i in ids if outcome.stored.get(i) == "done"),
        "processed_twice": outcome.processed_twice(),
        "runs_started_beyond_one": sum(max(0, outcome.attempts.get(i, 0) - 1) for i in ids),
        "wrong_final_state": sum(1 for d in items if outcome.effects.get(d.id) != d.status),
        "seconds": round(time.monotonic() - started, 1),
    }
    report(f"duplicates-{'full' if deliveries > 100 else 'fast'}-{backend(database_url)}", figures)
    assert tally.codes.keys() <= {200, 202} and tally.transport_errors == 0, figures
    assert not wrong_answers, dict(list(wrong_answers.items())[:10])
    assert len(outcome.stored) == deliveries and not outcome.not_done(ids)
    assert outcome.processed_twice() == 0 and figures["runs_started_beyond_one"] == 0
    assert figures["wrong_final_state"] == 0
