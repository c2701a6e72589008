"""The process's long-lived resources, created and closed in one place (the app lifespan or the worker)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from handlers import REGISTRY
from service import metrics, queue
from service.alert_index import INDEX_EVERY_S, INDEX_KIND, AlertIndexer
from service.budget import LEASE_MARGIN_S, SharedBudget
from service.clock import Clock
from service.codat.client import CodatClient
from service.db import behind_pgbouncer
from service.dispatch import make_alert_job
from service.notifications import NOTIFY_JOB_KIND, Notifier, NotifyJob, rate_limit_reached
from service.policies import job_policy, poll_policy, repush_policy, retry_policies
from service.purge import PURGE_KIND, PurgeJob
from service.pusher import Pusher
from service.queue import PRUNE_KIND
from service.retention import Pruner, Retention
from service.retry import RetryPolicy
from service.schedules import SCHEDULE_KIND, Scheduler
from service.schedules import SWEEP_EVERY_S as SCHEDULE_SWEEP_EVERY_S
from service.schedules import SWEEP_KIND as SCHEDULE_SWEEP_KIND
from service.senders import Sender, build_senders
from service.settings import Settings
from service.tracking import Tracker
from service.worker import JobFunction, Periodic, Worker

log = structlog.get_logger("service.runtime")
PRUNE_EVERY_S = 3600.0  # the retention prune (service/retention.py): small batches, every hour


def listen_dsn(settings: Settings) -> str | None:
    """The direct PostgreSQL connection workers LISTEN on (RELAY_DATABASE_LISTEN_URL), as asyncpg takes it."""
    url = settings.database_listen_url
    return url.replace("postgresql+asyncpg://", "postgresql://", 1) if url is not None else None


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    clock: Clock
    notifier: Notifier
    http: httpx.AsyncClient
    senders: dict[str, Sender]
    codat: CodatClient
    transport: httpx.AsyncBaseTransport | None = None
    workers: list[Worker] = field(default_factory=list)
    # The push pipeline's one Tracker: the pusher's jobs and the handlers (`Context.tracker`) share it.
    tracker: Tracker = field(init=False)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Work the web process runs beside its requests (a bulk replay from the admin API): cancelled on close,
    # never awaited to its end — such work keeps a cursor and is resumed by its id.
    _background: set[asyncio.Task[None]] = field(default_factory=set)
    # Why the in-process worker stopped before shutdown, if it did: /healthz then answers 503, so that a liveness
    # probe restarts a process that would otherwise keep accepting alerts nobody processes.
    worker_failure: str | None = None

    def __post_init__(self) -> None:
        self.tracker = Tracker(self, poll_policy(self.settings), repush_policy(self.settings))

    def build_worker(self, retry: RetryPolicy | None = None) -> Worker:
        """A worker running every job kind, each retried by its policy (`service.policies`); a `retry` given
        (tests) is every kind's instead, as it is."""
        pusher, scheduler = Pusher(self), Scheduler(self)
        jobs: dict[str, JobFunction] = {
            queue.ALERT_JOB_KIND: make_alert_job(REGISTRY, self),
            NOTIFY_JOB_KIND: NotifyJob(self.engine, self.senders, self.notifier),
            **pusher.jobs(),
            SCHEDULE_KIND: scheduler.run,
            SCHEDULE_SWEEP_KIND: scheduler.sweep,
            PRUNE_KIND: Pruner(self.engine, Retention.from_settings(self.settings), self.clock),
            PURGE_KIND: PurgeJob(self.engine, self.clock),
            INDEX_KIND: AlertIndexer(self.engine, self.clock),
        }
        return Worker(
            self.engine,
            jobs,
            concurrency=self.settings.worker_concurrency,
            lease_s=self.settings.job_lease_seconds,
            clock=self.clock,
            notifier=self.notifier,
            grace_s=self.settings.shutdown_grace_seconds,
            retry=retry or job_policy(self.settings),
            policies={} if retry is not None else retry_policies(self.settings),
            periodic=[*pusher.periodic(), Periodic(PRUNE_KIND, PRUNE_KIND, PRUNE_EVERY_S),
                      # schedules of companies first seen since (read within a minute), or not read for a day
                      Periodic(SCHEDULE_SWEEP_KIND, SCHEDULE_SWEEP_KIND, SCHEDULE_SWEEP_EVERY_S),
                      # alert search's text index, filled after the acknowledgement (service/alert_index.py)
                      Periodic(INDEX_KIND, INDEX_KIND, INDEX_EVERY_S)],
            listen_dsn=listen_dsn(self.settings),
            listen_via_pool=not (self.settings.database_pgbouncer or behind_pgbouncer(self.engine.url)),
        )

    async def start_workers(self) -> None:
        worker = self.build_worker()
        self.workers.append(worker)
        task = asyncio.create_task(worker.run(self._stop), name="worker")
        task.add_done_callback(self._worker_done)
        self._tasks.append(task)

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        if not self._stop.is_set():
            self.worker_exited(None if task.cancelled() else task.exception())

    def worker_exited(self, error: BaseException | None) -> None:
        """The process's worker ended before shutdown (raised, or could not start): logged, and from now on
        /healthz says so. Only the exception's type is kept: health answers carry no token."""
        self.worker_failure = f"worker stopped: {type(error).__name__}" if error is not None else "worker stopped"
        log.error("worker_exited", error=repr(error), exc_info=error)

    async def run_worker_forever(self, stop: asyncio.Event) -> None:
        """`codat-relay worker`: one worker until `stop` is set (SIGTERM)."""
        worker = self.build_worker()
        self.workers.append(worker)
        await worker.run(stop)

    def wake_workers(self) -> None:
        """New jobs were committed in this process: let idle workers claim them at once."""
        for worker in self.workers:
            worker.wake()

    def background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        async def logged() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background_failed", task=name)

        task = asyncio.create_task(logged(), name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._stop.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.http.aclose()
        if self.codat is not None:
            await self.codat.aclose()


def shared_budget(settings: Settings, engine: AsyncEngine, clock: Clock, notifier: Notifier) -> SharedBudget:
    """Codat's rate limits, shared with every other process on this database; staff hear of a spent quota."""

    async def tell(limit: int | None, reset_at: float) -> None:
        await notifier.notify(rate_limit_reached(limit, reset_at))

    return SharedBudget(
        engine, clock, company_slots=settings.codat_company_concurrency,
        reserve_percent=settings.codat_quota_reserve_percent,
        lease_s=settings.codat_timeout_seconds + LEASE_MARGIN_S, on_reached=tell,
        recheck_s=settings.codat_quota_recheck_seconds,
    )  # fmt: skip


async def build_runtime(
    settings: Settings, engine: AsyncEngine, clock: Clock, *, transport: httpx.AsyncBaseTransport | None = None
) -> Runtime:
    # Outbound calls other than Codat's (notification targets) share one client.
    http = httpx.AsyncClient(timeout=10.0)
    senders = build_senders(settings, http)
    notifier = Notifier(engine, sorted(senders), settings.notify_dedupe_seconds, clock)
    budget = shared_budget(settings, engine, clock, notifier)
    codat = CodatClient.from_settings(
        settings, transport=transport, on_response=metrics.count_codat_call, budget=budget
    )
    return Runtime(
        settings=settings, engine=engine, clock=clock, notifier=notifier, http=http, senders=senders,
        transport=transport, codat=codat,
    )
