"""The receiver's group commit: which deliveries share a batch (one transaction, one round trip)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.clock import SystemClock
from service.ingest import LINGER_S, Answer, Ingestor
from service.types import Alert, AlertKind, Shape

DEADLINE_S = 10.0


def alert(delivery_id: str) -> Alert:
    return Alert(delivery_id=delivery_id, kind=AlertKind.DATASET_STATUS, type="read.completed",
                 shape=Shape.ENVELOPE, company_id="C1", body=b"{}")  # fmt: skip


async def started(engine: AsyncEngine, linger_s: float) -> tuple[Ingestor, list[list[str]]]:
    """An ingestor on the real batch writer, each batch's ids recorded as the writer is called."""
    ingestor = Ingestor(engine, SystemClock(), linger_s=linger_s)
    batches: list[list[str]] = []
    write = ingestor._writer.write

    async def recording(rows: list[dict[str, Any]], now: float) -> set[str]:
        batches.append([row["id"] for row in rows])
        return await write(rows, now)

    ingestor._writer.write = recording  # type: ignore[method-assign]
    await ingestor.start()
    return ingestor, batches


def taken_not_done(ingestor: Ingestor) -> bool:
    """The writer has taken what was queued and not finished its batch yet."""
    queue = ingestor._queue
    return queue.qsize() == 0 and queue._unfinished_tasks > 0  # type: ignore[attr-defined]


async def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0)


@pytest.mark.parametrize("linger_s", [0.0, 0.5], ids=["no-linger", "linger"])
async def test_a_lone_delivery_waits_the_linger_for_company(engine: AsyncEngine, linger_s: float) -> None:
    """A delivery the writer takes alone is written after the linger, with whatever arrived meanwhile; with
    no linger it is written at once and the next one gets a batch of its own."""
    ingestor, batches = await started(engine, linger_s)
    try:
        first = asyncio.create_task(ingestor.submit(alert("d1")))
        await until(lambda: taken_not_done(ingestor))  # the writer holds d1: lingering, or writing it
        second = asyncio.create_task(ingestor.submit(alert("d2")))
        async with asyncio.timeout(DEADLINE_S):
            answers = await asyncio.gather(first, second)
    finally:
        await ingestor.stop()
    assert list(answers) == [Answer.ACCEPTED, Answer.ACCEPTED]
    assert batches == ([["d1", "d2"]] if linger_s else [["d1"], ["d2"]])


async def test_deliveries_waiting_together_are_written_at_once(engine: AsyncEngine) -> None:
    """The linger is only for a delivery alone: deliveries already waiting together are written without it
    (a 60 s linger would miss the deadline)."""
    ingestor, batches = await started(engine, linger_s=60.0)
    try:
        async with asyncio.timeout(DEADLINE_S):
            answers = await asyncio.gather(*(ingestor.submit(alert(f"d{n}")) for n in range(3)))
    finally:
        await ingestor.stop()
    assert answers == [Answer.ACCEPTED] * 3
    assert batches == [["d0", "d1", "d2"]]


async def test_a_lone_delivery_waits_the_default_linger(engine: AsyncEngine) -> None:
    """By default a lone delivery waits LINGER_S on either backend (each batch costs the relay a commit and
    wakes its workers: fewer, larger batches cost less CPU a delivery), and its answer comes no sooner."""
    expected = LINGER_S
    ingestor = Ingestor(engine, SystemClock())
    assert ingestor._linger_s == expected
    await ingestor.start()
    try:
        started_at = time.monotonic()
        async with asyncio.timeout(DEADLINE_S):
            answer = await ingestor.submit(alert("d1"))
        waited = time.monotonic() - started_at
    finally:
        await ingestor.stop()
    assert answer is Answer.ACCEPTED
    assert waited >= expected
