"""Durable acknowledgement with group commit.

Every delivery must be committed before it is answered, but one transaction per request serialises on
SQLite's single writer (and on PostgreSQL's commit latency). So requests hand their alert to a writer
task, which takes every delivery waiting at that moment (a lone one waits LINGER_S for company) into ONE
transaction — alerts and their jobs together, in one round trip
(service/batch_writers.py) — and then releases each waiter with its own answer. Durability per delivery is
unchanged; the fsync is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from service import tracing
from service.alerts import parsed_fields
from service.batch_writers import batch_writer_for
from service.clock import Clock
from service.errors import StorageUnavailable
from service.types import Alert, AlertKind, AlertStatus

MAX_BATCH = 512
# A delivery that finds nobody else waiting gives others this long to join its batch (see Ingestor._run). A
# batch costs the relay a round trip (PostgreSQL) or a hop to the writer's thread, a commit and its fsync
# (SQLite), and wakes its workers once, so fewer, larger batches cost less CPU a delivery. At 500
# deliveries/s (bench_e2e, interleaved, 15 s each), the relay's CPU a delivery:
#   SQLite      5 ms 0.95-0.97 ms, 10 ms 0.78-0.84, 20 ms 0.66-0.68 (three each; answer p99 10.5, 16.9, 28 ms)
#   PostgreSQL  2 ms 0.94-1.02 ms,  5 ms 0.83-0.91, 10 ms 0.73-0.76 (three, five, two; answer p99 7, 10, 15 ms)
# 20 ms would put the answer's p99 past the durable ack's 25 ms aim. At 32 connections (bench_ingest, two
# runs each) the durable ack did not move beyond the noise: SQLite 0.23-0.27x bare for 0, 2, 5 and 10 ms;
# PostgreSQL 0.44-0.49x (2 ms), 0.43-0.50x (5 ms), 0.45-0.49x (10 ms). Never more than this added to an answer.
LINGER_S = 0.010
WRITE_TIMEOUT_S = 10.0  # well inside Codat's 15 s; past it we answer 503 and Codat retries

log = structlog.get_logger("service.ingest")


class Answer(enum.StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"


@dataclass(slots=True)
class _Pending:
    alert: Alert
    received_at: float
    traceparent: str | None  # the receiving request's span (tracing on): the alert's job continues its trace
    future: asyncio.Future[Answer]
    deadline: asyncio.TimerHandle  # fails the future with StorageUnavailable unless it is answered first


def is_actionable(alert: Alert) -> bool:
    return alert.kind is not AlertKind.OTHER


def alert_row(alert: Alert, received_at: float) -> dict[str, Any]:
    return {
        "id": alert.delivery_id,
        **parsed_fields(alert),
        "received_at": received_at,
        "updated_at": received_at,
        "status": (AlertStatus.PENDING if is_actionable(alert) else AlertStatus.IGNORED).value,
        "attempts": 0,
        "body": alert.body,
    }


class Ingestor:
    """Owns the writer task; `submit` is what a request awaits.

    ONE task, on either backend: the batch writer does one statement at a time anyway (one SQLite thread,
    one PostgreSQL connection), so more tasks only split the waiting deliveries into smaller batches and
    add wake-ups and lock waits on the event loop."""

    def __init__(
        self,
        engine: AsyncEngine,
        clock: Clock,
        *,
        max_batch: int = MAX_BATCH,
        linger_s: float | None = None,
        write_timeout_s: float = WRITE_TIMEOUT_S,
        on_commit: Callable[[], None] | None = None,
        sqlite_synchronous: str = "full",
    ) -> None:
        self._writer = batch_writer_for(engine.url.render_as_string(hide_password=False), sqlite_synchronous)
        self._clock = clock
        self._max_batch = max_batch
        self._linger_s = LINGER_S if linger_s is None else linger_s
        self._write_timeout_s = write_timeout_s
        self._on_commit = on_commit
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ingest-writer")

    async def stop(self, drain_timeout_s: float = WRITE_TIMEOUT_S) -> None:
        """Write what is queued (those requests still wait for their answer), then stop."""
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), drain_timeout_s)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._writer.close()

    async def submit(self, alert: Alert) -> Answer:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Answer] = loop.create_future()
        # A timer that fails the future, not `asyncio.timeout` around the await: no cancellation of the
        # waiting task to arm and undo per delivery (3 us against 6 us, timeit on uvloop).
        deadline = loop.call_later(self._write_timeout_s, _time_out, future)
        # Unbounded: the body cap and the timeout bound what waits.
        self._queue.put_nowait(_Pending(alert, self._clock.now(), tracing.traceparent(), future, deadline))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            if self._linger_s > 0 and self._queue.empty():
                # Alone: a moment for company first (LINGER_S). A batch costs one round trip whatever its size,
                # and on PostgreSQL whatever arrives while it is written waits for all of it: a batch of one at a
                # time made 32 connections' worth of deliveries queue behind lone writes (bench_ingest,
                # PostgreSQL, 32 connections, five runs each, interleaved: 0.31-0.51x bare without, 0.49-0.60x
                # with 2-3 ms).
                await asyncio.sleep(self._linger_s)
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write_batch(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _write_batch(self, batch: list[_Pending]) -> None:
        try:
            answers = await self._commit(batch)
        except Exception as exc:  # any storage fault: the whole batch answers 503
            if len(batch) > 1:
                # Isolate a poisoned delivery so it cannot fail its neighbours on every retry.
                for item in batch:
                    await self._write_batch([item])
                return
            log.warning("ingest_write_failed", error=type(exc).__name__, detail=str(exc)[:200])
            _resolve(batch[0], exc=StorageUnavailable(type(exc).__name__))
            return
        for item, answer in zip(batch, answers, strict=True):
            _resolve(item, answer=answer)
        if self._on_commit is not None:
            self._on_commit()

    async def _commit(self, batch: Sequence[_Pending]) -> list[Answer]:
        first_seen: dict[str, _Pending] = {}
        for item in batch:
            first_seen.setdefault(item.alert.delivery_id, item)
        rows = [alert_row(item.alert, item.received_at) for item in first_seen.values()]
        for row, item in zip(rows, first_seen.values(), strict=True):
            if item.traceparent is not None:
                row["traceparent"] = item.traceparent  # not a column: the batch writer hands it to the job
        inserted = await self._writer.write(rows, self._clock.now())
        return [_answer(item, first_seen, inserted) for item in batch]


def _answer(item: _Pending, first_seen: dict[str, _Pending], inserted: set[str]) -> Answer:
    if first_seen[item.alert.delivery_id] is not item or item.alert.delivery_id not in inserted:
        return Answer.DUPLICATE
    return Answer.ACCEPTED if is_actionable(item.alert) else Answer.IGNORED


def _time_out(future: asyncio.Future[Answer]) -> None:
    if not future.done():  # not answered, nor left (a cancelled request)
        # The write may still commit later; Codat's retry then gets "duplicate". Nothing is lost.
        future.set_exception(StorageUnavailable("storage write timed out"))


def _resolve(item: _Pending, *, answer: Answer | None = None, exc: Exception | None = None) -> None:
    item.deadline.cancel()
    future = item.future
    if future.done():  # the waiter timed out, or left
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        assert answer is not None
        future.set_result(answer)
