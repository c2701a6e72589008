"""The worker runtime: claims jobs in batches, runs them concurrently, records outcomes in batches.

One control loop per worker does all queue writes: each round records the finished jobs and claims into
the free slots in one transaction (`queue.turn`), so a burst of short jobs costs one transaction per
batch, not two per job. With many slots it claims a few jobs ahead of them (a local buffer, see
`Worker`): a slot that frees starts its next job at once instead of after a round trip. It sleeps until
something can have changed: a job of its own finished, a NOTIFY arrived (PostgreSQL), `wake()` was
called by an in-process enqueue, or the poll interval passed (the fallback for scheduled jobs and lost
notifications).
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast, runtime_checkable

import asyncpg
import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn

from service import keys, metrics, queue, tracing
from service.clock import Clock
from service.db import behind_pgbouncer
from service.dead_jobs import DeadJobObserver
from service.errors import Deferred, GiveUp
from service.queue import LEASE_LOST, NOTIFY_CHANNEL, Job, describe_error
from service.retry import RetryPolicy, Rng

# Storage faults the loop rides out: it logs, waits a poll interval and tries again.
TRANSIENT = (SQLAlchemyError, OSError, ConnectionError, TimeoutError)
# ... and LISTEN's own failures: asyncpg's errors reach it straight from the driver.
LISTEN_ERRORS = (*TRANSIENT, asyncpg.InterfaceError, asyncpg.InternalClientError, asyncpg.PostgresError)
HEARTBEATS_PER_LEASE = 3
LISTEN_CONNECT_S = 5.0
# Each database step of a worker's shutdown (recording finished jobs, releasing the rest, UNLISTEN, closing the
# listener's connection) gets this long. On a dead connection (a server or network gone silent, its sockets
# never closed) it would otherwise wait for the driver's command timeout, or for ever on a listener connection
# of its own, which has none. What a step could not do is not lost: the leases expire, other workers take over.
SHUTDOWN_STEP_S = 5.0
LINGER_S = 0.005  # how long a busy worker waits to complete and claim jobs in groups
LINGER_BATCH_DIVISOR = 4  # ... for a group of a quarter of its slots
# Claim-ahead: a worker with at least this many slots also claims up to half as many jobs again, held in
# a local buffer, so that a finished job's slot is refilled without waiting for the next round trip.
CLAIM_AHEAD_MIN_CONCURRENCY = 8
CLAIM_AHEAD_DIVISOR = 2
# Keyless jobs (no per-key order, so holding one keeps no other worker from its key's next job) are claimed
# further ahead: as many as the worker has been finishing in KEYLESS_AHEAD_S (two lingers, about two rounds
# at full speed), at most KEYLESS_AHEAD_SLOTS times its slots and KEYLESS_AHEAD_MAX. Paced by its own
# measured rate, a buffered keyless job waits about that long for a slot: a worker of slow jobs finishes few
# a second and holds none beyond `claim_ahead`, so it does not sit on work idle workers could start.
KEYLESS_AHEAD_S = 2 * LINGER_S
KEYLESS_AHEAD_SLOTS = 3
KEYLESS_AHEAD_MAX = 32

T = TypeVar("T")

JobFunction = Callable[[Job, int], Awaitable[object]]
"""`async def run(job, attempt)`: return to finish the job, raise to fail this attempt. What it returns
is handed to `Batched.finished` (other job functions return None)."""


@runtime_checkable
class DeadLetterAware(Protocol):
    """A job function that also wants to know when one of its jobs dies (e.g. to mark its alert)."""

    async def job_dead(self, job: Job, error: str) -> None: ...


@runtime_checkable
class Batched(Protocol):
    """A job function whose per-job bookkeeping rides on the worker's own statements.

    `claimed` runs inside the claim's transaction with the jobs about to run (e.g. mark their alerts
    processing), `finished` inside the completion's transaction with each successful job and what it
    returned (e.g. write the alerts' outcomes). A burst of N jobs then costs the queue's two statements
    plus one of each hook per batch, not two writes of its own per job.
    """

    async def claimed(self, conn: AsyncConnection, jobs: Sequence[Job], now: float) -> None: ...

    async def finished(self, conn: AsyncConnection, results: Sequence[tuple[Job, object]], now: float) -> None: ...


@dataclass(frozen=True)
class Periodic:
    """A job run every `interval_s` by whichever worker claims it; the queueing lock dedupes workers."""

    name: str
    kind: str
    interval_s: float
    payload: Mapping[str, Any] = field(default_factory=dict)

    @property
    def queueing_lock(self) -> str:
        return keys.periodic_lock(self.name)


@dataclass(frozen=True)
class _Finished:
    job: Job
    error: Exception | None
    duration_s: float
    result: object = None


def default_claim_ahead(concurrency: int) -> int:
    """Jobs claimed beyond the free slots: none with few slots (each claimed job would wait behind a running
    one, and a small worker's round trips are not its bound), half the slots again with many."""
    return concurrency // CLAIM_AHEAD_DIVISOR if concurrency >= CLAIM_AHEAD_MIN_CONCURRENCY else 0


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(
        self,
        engine: AsyncEngine,
        jobs: Mapping[str, JobFunction],
        *,
        concurrency: int,
        lease_s: float,
        clock: Clock,
        notifier: DeadJobObserver,
        retry: RetryPolicy,
        policies: Mapping[str, RetryPolicy] | None = None,
        worker_id: str | None = None,
        periodic: Sequence[Periodic] = (),
        poll_interval_s: float = 1.0,
        grace_s: float = 20.0,
        log: structlog.stdlib.BoundLogger | None = None,
        rng: Rng | None = None,
        listen_dsn: str | None = None,
        listen_via_pool: bool | None = None,
        claim_ahead: int | None = None,
        shutdown_step_s: float = SHUTDOWN_STEP_S,
    ) -> None:
        self._engine = engine
        self._jobs = dict(jobs)
        # Looked up once: isinstance() against a runtime-checkable Protocol costs more than a no-op job.
        self._batched_kinds = {k: cast(Batched, f) for k, f in self._jobs.items() if isinstance(f, Batched)}
        self._concurrency = concurrency
        self._lease_s = lease_s
        # Policies are applied as given, never amended (service/policies.py builds the relay's from settings):
        # `policies` per job kind, `retry` for a kind it does not name. One source of truth for the attempt
        # limit: the policy decides, the lost-lease rule agrees.
        self._policies = dict(policies or {})
        self._retry = retry
        self._clock = clock
        self._notifier = notifier
        self.worker_id = worker_id or default_worker_id()
        self._periodic = {p.queueing_lock: p for p in periodic}
        self._poll_interval_s = poll_interval_s
        self._grace_s = grace_s
        self._shutdown_step_s = shutdown_step_s
        self._abandoned: set[asyncio.Task[Any]] = set()  # shutdown steps given up on, still unwinding
        self._log = (log or structlog.get_logger("service.worker")).bind(worker_id=self.worker_id)
        self._rng = rng or random.Random()
        self._running: dict[int, tuple[Job, asyncio.Task[None]]] = {}
        # Claimed ahead of the free slots, oldest first; each with the time its lease is known to last until.
        # The rows are `running` under this worker's lease, so per-key order holds across processes exactly
        # as for a running job (the claim never takes a second job of a key with a live claimed one).
        self._claim_ahead = default_claim_ahead(concurrency) if claim_ahead is None else claim_ahead
        self._ahead: collections.deque[tuple[Job, float]] = collections.deque()
        self._keyless_ahead = 0  # keyless jobs to hold beyond the slots, paced each round (`_pace`)
        self._last_round: float | None = None
        self._draining = False
        self._finished: list[_Finished] = []
        self._wake = asyncio.Event()
        # LISTEN is a session's: on a pooled connection of the engine, or a direct one of its own
        # (`listen_dsn`, e.g. beside PgBouncer's transaction pooling, which cannot hold one); neither: polling.
        self._listen_dsn = listen_dsn
        self._listen_via_pool = not behind_pgbouncer(engine.url) if listen_via_pool is None else listen_via_pool
        self._listener: tuple[PoolProxiedConnection | None, asyncpg.Connection] | None = None

    def wake(self) -> None:
        """Look for work now (call after committing an enqueue in this process)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set, then finish or release what is running."""
        await self._start()
        watcher = asyncio.create_task(self._wake_on(stop))
        heartbeats = asyncio.create_task(self._heartbeat_loop())
        try:
            while not stop.is_set():
                await self._cycle()
        except Exception as exc:
            # Logged here, before the drain: releasing on a broken database can take a while.
            self._log.error("worker_failed", error=describe_error(exc), exc_info=exc)
            raise
        finally:
            watcher.cancel()
            await self._drain()
            heartbeats.cancel()
            await self._unlisten()

    async def _start(self) -> None:
        now = self._clock.now()
        for p in self._periodic.values():
            await queue.ensure_scheduled(
                self._engine, p.kind, p.payload, queueing_lock=p.queueing_lock, now=now
            )
        await self._listen()
        self._log.info("worker_started", concurrency=self._concurrency, kinds=sorted(self._jobs))

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    async def _cycle(self) -> None:
        self._wake.clear()  # before the reads below, so nothing that happens during them is missed
        try:
            await self._turn(claim=True)
        except TRANSIENT as exc:
            self._log.warning("queue_unavailable", error=describe_error(exc))
        try:
            async with asyncio.timeout(self._poll_interval_s):
                await self._wake.wait()
        except TimeoutError:
            await self._ensure_listening()
            return
        await self._linger()

    async def _linger(self) -> None:
        """Group completion: while jobs are still running, wait a moment (at most LINGER_S) for a few more
        to finish, so that one completion and one claim serve several jobs.

        Each round costs a transaction whatever its size; at hundreds of short jobs a second,
        waking for every single finish spent more on those than on the jobs themselves. With a small
        concurrency (the default 4) the batch target is one job, and nothing ever waits here.
        """
        target = self._concurrency // LINGER_BATCH_DIVISOR
        if target <= 1:
            return
        if self._claim_ahead:
            # Jobs that finishing ones just started from the buffer take their first step before the round
            # is counted: short jobs then finish in it too, and one round records them all.
            await asyncio.sleep(0)
        deadline = asyncio.get_running_loop().time() + LINGER_S
        while len(self._finished) < target and self._running:
            self._wake.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._wake.wait()
            except TimeoutError:
                return
        self._wake.set()  # whatever woke us is still to be handled by the next cycle

    def _start_claimed(self, claimed: Sequence[Job], lease_until: float) -> None:
        for job in claimed:
            if self._exhausted(job):  # it ends dead without running
                self._finished.append(_Finished(job, GiveUp(job.last_error or LEASE_LOST), 0.0))
                self._wake.set()
                continue
            self._ahead.append((job, lease_until))
        self._fill()

    def _fill(self) -> None:
        """Start buffered jobs, oldest first, into the free slots.

        A buffered job whose lease may have lapsed (heartbeats failed) is dropped unrun: another worker may
        already hold it, and it will be claimed again, as a new attempt, once its lease has expired.
        """
        if self._draining:
            return
        now = self._clock.now()
        while self._ahead and len(self._running) < self._concurrency:
            job, lease_until = self._ahead.popleft()
            if lease_until <= now:
                self._log.warning("claimed_ahead_lease_lapsed", job_id=job.id, kind=job.kind)
                continue
            self._running[job.id] = (job, asyncio.create_task(self._execute(job)))

    def _held(self) -> list[Job]:
        """Every job this worker holds a lease on: running, and claimed ahead."""
        return [job for job, _ in self._running.values()] + [job for job, _ in self._ahead]

    @property
    def kinds(self) -> frozenset[str]:
        """The job kinds this worker runs."""
        return frozenset(self._jobs)

    def policy(self, kind: str) -> RetryPolicy:
        """The retry policy this worker applies to jobs of `kind`."""
        return self._policies.get(kind, self._retry)

    def _exhausted(self, job: Job) -> bool:
        """A job claimed again after its policy's last attempt (each lost its lease: it likely kills its
        worker) or past its policy's age is run no more; a first attempt always runs."""
        policy = self.policy(job.kind)
        return job.attempts > 1 and policy.gives_up(
            job.attempts - 1, RuntimeError(LEASE_LOST), self._clock.now() - job.created_at
        )

    async def _in_claim(self, conn: AsyncConnection, claimed: list[Job], now: float) -> None:
        """In the claim's transaction: a periodic job starting schedules its successor (so exactly one
        is always waiting), and batched job functions prepare their jobs. Either both happen or the
        claim is undone, so no claimed job is ever stranded between two statements."""
        for job in claimed:
            p = self._periodic.get(job.queueing_lock or "")
            if p is not None:
                await queue.enqueue(
                    conn, p.kind, p.payload, now=now, lock_key=p.queueing_lock,
                    queueing_lock=p.queueing_lock, run_at=now + p.interval_s,
                )  # fmt: skip
        for function, group in self._batched([(job, None) for job in claimed if not self._exhausted(job)]):
            await function.claimed(conn, [job for job, _ in group], now)

    def _batched(self, items: Sequence[tuple[Job, object]]) -> list[tuple[Batched, list[tuple[Job, object]]]]:
        groups: dict[str, list[tuple[Job, object]]] = {}
        for job, result in items:
            if job.kind in self._batched_kinds:
                groups.setdefault(job.kind, []).append((job, result))
        return [(self._batched_kinds[kind], group) for kind, group in groups.items()]

    async def _execute(self, job: Job) -> None:
        started = time.perf_counter()
        error: Exception | None = None
        try:
            function = self._jobs.get(job.kind)
            if function is None:
                raise GiveUp(f"no job function for kind {job.kind!r}")
            if tracing.enabled():
                # A child of the span that enqueued it (its payload's trace context), in whichever process.
                attributes = {"relay.job.id": job.id, "relay.job.kind": job.kind, "relay.job.attempt": job.attempts,
                              "relay.job.queued_s": max(0.0, self._clock.now() - job.run_at)}  # fmt: skip
                parent = job.payload.get(tracing.TRACE_KEY)
                with tracing.span(f"job {job.kind}", kind=tracing.CONSUMER, parent=parent, attributes=attributes):
                    result = await function(job, job.attempts)
            else:
                result = await function(job, job.attempts)
        except Exception as exc:  # a job's failure is data for the retry policy, not a crash
            error, result = exc, None
        del self._running[job.id]
        self._finished.append(_Finished(job, error, time.perf_counter() - started, result))
        self._fill()  # the freed slot takes the next buffered job now, not after the next round trip
        self._wake.set()

    async def _turn(self, *, claim: bool) -> None:
        """Record finished jobs and claim into the free slots, in one transaction (all successes in one
        statement); then settle failures one by one (rare)."""
        batch, self._finished = self._finished, []
        held = len(self._running) + len(self._ahead)
        free = self._concurrency + self._claim_ahead - held if claim else 0
        keyless_free = self._concurrency + self._pace(batch) - held if claim and self._claim_ahead else 0
        if not batch and max(free, keyless_free) <= 0:
            return
        now = self._clock.now()
        done = [f for f in batch if f.error is None]
        failed = [f for f in batch if f.error is not None]
        results = {f.job.id: f.result for f in done}

        async def in_completion(conn: AsyncConnection, finished: list[Job]) -> None:
            for function, group in self._batched([(job, results[job.id]) for job in finished]):
                await function.finished(conn, group, now)

        async def in_claim(conn: AsyncConnection, claimed: list[Job]) -> None:
            await self._in_claim(conn, claimed, now)

        try:
            _, claimed = await queue.turn(
                self._engine, self.worker_id, done=[f.job for f in done], now=now, claim_limit=free,
                lease_s=self._lease_s, on_done=in_completion, on_claimed=in_claim, keyless_limit=keyless_free,
            )  # fmt: skip
        except BaseException:
            self._finished[:0] = batch  # written again next cycle; fencing makes repeats harmless
            raise
        for f in done:
            self._report(f, "done")
        self._start_claimed(claimed, now + self._lease_s)
        for index, f in enumerate(failed):
            try:
                outcome = await self._settle(f, now)
            except BaseException:
                self._finished[:0] = failed[index:]
                raise
            self._report(f, outcome)

    def _pace(self, batch: Sequence[_Finished]) -> int:
        """How many keyless jobs to hold beyond the slots: those this worker finished since the last round that
        finished any, scaled to KEYLESS_AHEAD_S; never fewer than `claim_ahead`, as any job may be held so far."""
        if batch:
            now = time.perf_counter()
            if self._last_round is not None and now > self._last_round:
                keyless = sum(1 for f in batch if f.job.lock_key is None)
                paced = int(keyless * KEYLESS_AHEAD_S / (now - self._last_round))
                self._keyless_ahead = min(paced, KEYLESS_AHEAD_SLOTS * self._concurrency, KEYLESS_AHEAD_MAX)
            self._last_round = now
        return max(self._keyless_ahead, self._claim_ahead)

    async def _settle(self, finished: _Finished, now: float) -> str:
        assert finished.error is not None
        job, error_text = finished.job, describe_error(finished.error)
        if isinstance(finished.error, Deferred):  # told to wait, not failed: no attempt spent
            await queue.defer(self._engine, job, now + finished.error.after_s, str(finished.error), now)
            return "deferred"
        run_at = self.policy(job.kind).decide(job.attempts, finished.error, now, self._rng, queued_at=job.created_at)
        if run_at is not None:
            await queue.retry(self._engine, job, run_at, error_text, now)
            return "retry"
        if await queue.fail(self._engine, job, error_text, now):
            await self._tell_dead(job, error_text)
        return "dead"

    async def _tell_dead(self, job: Job, error: str) -> None:
        function = self._jobs.get(job.kind)
        hooks: list[DeadLetterAware | DeadJobObserver] = [self._notifier]
        if isinstance(function, DeadLetterAware):
            hooks.insert(0, function)
        for hook in hooks:
            try:
                await hook.job_dead(job, error)
            except Exception as exc:  # telling must not stop the worker; the row says dead anyway
                self._log.exception("job_dead_hook_failed", job_id=job.id, error=describe_error(exc))

    def _report(self, finished: _Finished, outcome: str) -> None:
        job = finished.job
        metrics.JOBS_FINISHED.labels(job.kind, outcome).inc()
        metrics.JOB_DURATION.labels(job.kind).observe(finished.duration_s)
        failed = finished.error is not None and outcome != "deferred"
        log = self._log.warning if failed else self._log.info
        log(
            "job_finished",
            job_id=job.id,
            kind=job.kind,
            lock_key=job.lock_key,
            outcome=outcome,
            attempt=job.attempts,
            duration_ms=round(finished.duration_s * 1000, 3),
            **({"error": describe_error(finished.error)} if finished.error is not None else {}),
        )

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._lease_s / HEARTBEATS_PER_LEASE)  # a timer, not a wait for work
            held = self._held()
            if not held:
                continue
            try:
                now = self._clock.now()
                ids = await queue.renew(self._engine, held, now, self._lease_s)
                # A buffered job runs only under a lease known to be live: a lost one keeps its old deadline.
                self._ahead = collections.deque(
                    (job, now + self._lease_s if job.id in ids else until) for job, until in self._ahead
                )
            except TRANSIENT as exc:
                self._log.warning("heartbeat_failed", error=describe_error(exc))

    async def _drain(self) -> None:
        """Shutdown: no more claims; running jobs get `grace_s` to finish, the rest (and every job claimed
        ahead, never started) go back to waiting."""
        self._draining = True
        buffered = [job for job, _ in self._ahead]
        self._ahead.clear()
        tasks = [task for _, task in self._running.values()]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self._grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        unfinished = [job for job, _ in self._running.values()] + buffered
        self._running.clear()
        try:
            await self._bounded(self._turn(claim=False), "recording finished jobs")
            released = await self._bounded(queue.release(self._engine, unfinished, self._clock.now()), "releasing jobs")
        except TRANSIENT as exc:
            # Their leases expire and another worker takes them over.
            self._log.error("worker_release_failed", error=describe_error(exc), jobs=len(unfinished))
            return
        self._log.info("worker_stopped", released=released)

    async def _listen(self) -> None:
        if self._engine.dialect.name != "postgresql":
            return  # SQLite has no notifications: in-process `wake()` and polling cover it
        if self._listen_dsn is None and not self._listen_via_pool:
            return  # behind PgBouncer with no direct URL: polling every poll interval
        raw: PoolProxiedConnection | None = None
        try:
            if self._listen_dsn is not None:
                connection: asyncpg.Connection = await asyncpg.connect(self._listen_dsn, timeout=LISTEN_CONNECT_S)
            else:
                raw = await self._engine.raw_connection()
                connection = raw.driver_connection
            await connection.add_listener(NOTIFY_CHANNEL, self._on_notify)
        except LISTEN_ERRORS as exc:
            # asyncpg's own errors too: a pooled connection the server closed fails here, on the driver.
            self._log.warning("listen_failed", error=describe_error(exc))
            if raw is not None:
                await greenlet_spawn(raw.invalidate)
            return
        self._listener = (raw, connection)

    def _on_notify(self, connection: object, pid: int, channel: str, payload: str) -> None:
        # Not for its own rounds' notifications (queue.turn names the worker): the round's claim saw those
        # finishes already, and waking for them cost a loop pass and a smaller round each.
        if payload != self.worker_id:
            self._wake.set()

    async def _ensure_listening(self) -> None:
        """On a poll timeout: re-listen if the notification connection died."""
        if self._listener is not None and self._listener[1].is_closed():
            raw, _ = self._listener
            self._listener = None
            if raw is not None:
                await greenlet_spawn(raw.invalidate)
        if self._listener is None:
            await self._listen()

    async def _unlisten(self) -> None:
        if self._listener is None:
            return
        (raw, connection), self._listener = self._listener, None
        try:
            await self._bounded(connection.remove_listener(NOTIFY_CHANNEL, self._on_notify), "UNLISTEN")
        except LISTEN_ERRORS as exc:
            self._log.warning("unlisten_failed", error=describe_error(exc))
            # Perhaps still LISTENing, or mid-statement: such a connection is dropped, never pooled or waited on.
            connection.terminate()
            if raw is not None:
                await greenlet_spawn(raw.invalidate)
            return
        try:
            if raw is None:
                await connection.close(timeout=self._shutdown_step_s)
            else:
                # Back to the pool only with the callback gone; the pool's reset needs a greenlet.
                await self._bounded(greenlet_spawn(raw.close), "returning the listener's connection")
        except LISTEN_ERRORS as exc:
            self._log.warning("unlisten_failed", error=describe_error(exc))
            connection.terminate()  # a pooled one's hung check-in then fails, and the pool discards it

    async def _bounded(self, step: Coroutine[Any, Any, T], what: str) -> T:
        """A database step of the shutdown, given `shutdown_step_s` (SHUTDOWN_STEP_S); TimeoutError past that.

        The step runs as a task of its own, cancelled but not waited for when its time is up: its cleanup (a
        ROLLBACK on the same dead connection) could hang as long again.
        """
        task = asyncio.ensure_future(step)
        try:
            done, _ = await asyncio.wait({task}, timeout=self._shutdown_step_s)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not done:
            task.cancel()
            self._abandoned.add(task)  # held until it has unwound: the loop keeps only weak references
            task.add_done_callback(self._unwound)
            raise TimeoutError(f"{what}: no answer within {self._shutdown_step_s:g} s")
        return task.result()

    def _unwound(self, task: asyncio.Task[Any]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: what it ended with was reported as the step's timeout already
