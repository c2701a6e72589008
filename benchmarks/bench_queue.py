"""Queue benchmark: no-op jobs/s and enqueue→start latency, codat-relay vs procrastinate, in one run.

    python -m benchmarks.bench_queue [--jobs 5000] [--concurrency 10,50] [--latency-jobs 400] [--rate 200]

Throughput: N no-op jobs are enqueued in bulk, then one worker process drains them; the time runs from
the worker's start until it has recorded every job done. Latency: with the worker idle, jobs are
enqueued one at a time at a steady rate and each job records how long after its enqueue it started.
codat-relay runs on SQLite and PostgreSQL; procrastinate on the same PostgreSQL server. Each run gets
its own throw-away database. Job log lines are rendered (JSON, level info) into /dev/null, as a
production worker would render them.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from benchmarks import common
from service import migrate, queue
from service.clock import SystemClock
from service.db import create_engine, jobs
from service.dead_jobs import LogDeadJobs
from service.logs import configure_logging
from service.retry import RetryPolicy
from service.settings import Settings
from service.worker import Worker

DEADLINE_S = 120.0
LEASE_S = 30.0
LATENCY_CONCURRENCY = 10


@dataclass
class Result:
    system: str
    backend: str
    concurrency: int
    jobs_per_s: float | None
    p50_ms: float | None = None
    p99_ms: float | None = None


def settings_for(url: str) -> Settings:
    return Settings(database_url=url, allow_unauthenticated_webhooks=True, log_format="json", log_level="info")


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def wait_for(condition: Callable[[], bool]) -> None:
    give_up = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > give_up:
            raise TimeoutError("benchmark did not finish before its deadline")
        await asyncio.sleep(0.005)


# --- codat-relay ------------------------------------------------------------------------------------


async def relay_throughput(url: str, n: int, concurrency: int) -> float:
    engine = create_engine(settings_for(url))
    rows = [queue.job_values("noop", {}, now=time.time()) for _ in range(n)]
    async with engine.begin() as conn:
        await queue.insert_many(conn, rows)
        if conn.dialect.name == "postgresql":
            await conn.execute(sa.text("ANALYZE jobs"))  # what autovacuum does on a live system
    seen = 0

    async def noop(job: queue.Job, attempt: int) -> None:
        nonlocal seen
        seen += 1
        if seen == n:
            stop.set()

    stop = asyncio.Event()
    worker = relay_worker(engine, noop, concurrency)
    started = time.perf_counter()
    await asyncio.wait_for(worker.run(stop), DEADLINE_S)  # returns once the last batch is recorded
    elapsed = time.perf_counter() - started
    async with engine.connect() as conn:
        done = await conn.scalar(sa.select(sa.func.count()).where(jobs.c.status == "done"))
    await engine.dispose()
    assert done == n, f"only {done} of {n} jobs done"
    return n / elapsed


async def relay_latency(url: str, n: int, rate: float) -> list[float]:
    engine = create_engine(settings_for(url))
    delays: list[float] = []

    async def noop(job: queue.Job, attempt: int) -> None:
        delays.append(time.perf_counter() - float(job.payload["t"]))

    stop = asyncio.Event()
    worker = relay_worker(engine, noop, LATENCY_CONCURRENCY)
    running = asyncio.create_task(worker.run(stop))
    await asyncio.sleep(0.5)  # let the worker go idle: the latency of an idle worker is the question
    for _ in range(n):
        await queue.enqueue(engine, "noop", {"t": time.perf_counter()}, now=time.time())
        worker.wake()  # what the receiver does after its commit; on PostgreSQL NOTIFY wakes it anyway
        await asyncio.sleep(1 / rate)  # pacing the load, not waiting for work
    await wait_for(lambda: len(delays) == n)
    stop.set()
    await running
    await engine.dispose()
    return delays


def relay_worker(engine: Any, function: Any, concurrency: int) -> Worker:
    return Worker(
        engine, {"noop": function}, concurrency=concurrency, lease_s=LEASE_S, retry=RetryPolicy(max_attempts=3),
        clock=SystemClock(), notifier=LogDeadJobs(), poll_interval_s=1.0,
    )  # fmt: skip


# --- procrastinate ----------------------------------------------------------------------------------


def procrastinate_app(url: str) -> Any:
    import procrastinate  # benchmark-only dependency (requirements-bench.lock)

    conninfo = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    return procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo))


async def procrastinate_throughput(url: str, n: int, concurrency: int) -> float:
    app = procrastinate_app(url)

    @app.task(name="noop")
    async def noop() -> None:
        return None

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        await noop.batch_defer_async(*({} for _ in range(n)))
        async with app.connector.pool.connection() as conn:
            await conn.execute("ANALYZE procrastinate_jobs")
        started = time.perf_counter()
        await app.run_worker_async(concurrency=concurrency, wait=False, install_signal_handlers=False)
        return n / (time.perf_counter() - started)


async def procrastinate_latency(url: str, n: int, rate: float) -> list[float]:
    app = procrastinate_app(url)
    delays: list[float] = []

    @app.task(name="noop_t")
    async def noop_t(t: float) -> None:
        delays.append(time.perf_counter() - t)

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        worker = asyncio.create_task(
            app.run_worker_async(concurrency=LATENCY_CONCURRENCY, wait=True, install_signal_handlers=False)
        )
        await asyncio.sleep(0.5)
        for _ in range(n):
            await noop_t.defer_async(t=time.perf_counter())
            await asyncio.sleep(1 / rate)
        await wait_for(lambda: len(delays) == n)
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
    return delays


# --- driver -----------------------------------------------------------------------------------------


def on_fresh_database(
    backend: str, run: Callable[[str], Coroutine[Any, Any, Any]], tmp: Path, migrated: bool
) -> Any:
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp / f'bench-{time.monotonic_ns()}.db'}"
        migrate.upgrade(url)
        return asyncio.run(run(url))
    name, url = common.create_postgres_database()
    try:
        if migrated:
            migrate.upgrade(url)
        return asyncio.run(run(url))
    finally:
        common.drop_postgres_database(name)


def measure(args: argparse.Namespace, tmp: Path) -> list[Result]:
    results: list[Result] = []
    plans: list[tuple[str, str, Any, Any]] = [
        ("codat-relay", "sqlite", relay_throughput, relay_latency),
        ("codat-relay", "postgresql", relay_throughput, relay_latency),
        ("procrastinate", "postgresql", procrastinate_throughput, procrastinate_latency),
    ]
    for system, backend, throughput, latency in plans:
        migrated = system == "codat-relay"
        for concurrency in args.concurrency:
            run = functools.partial(throughput, n=args.jobs, concurrency=concurrency)
            rate = on_fresh_database(backend, run, tmp, migrated)
            results.append(Result(system, backend, concurrency, rate))
            print(f"  {system:13} {backend:10} c={concurrency:<3} {rate:8.0f} jobs/s", flush=True)
        run = functools.partial(latency, n=args.latency_jobs, rate=args.rate)
        delays = on_fresh_database(backend, run, tmp, migrated)
        p50, p99 = percentile(delays, 50) * 1e3, percentile(delays, 99) * 1e3
        results.append(Result(system, backend, LATENCY_CONCURRENCY, None, p50, p99))
        print(f"  {system:13} {backend:10} latency p50 {p50:.1f} ms, p99 {p99:.1f} ms", flush=True)
    return results


def report(results: list[Result]) -> None:
    print("\n| system | backend | concurrency | no-op jobs/s | enqueue→start p50 | p99 |")
    print("|---|---|---|---|---|---|")
    for r in results:
        rate = f"{r.jobs_per_s:,.0f}" if r.jobs_per_s is not None else ""
        p50 = f"{r.p50_ms:.1f} ms" if r.p50_ms is not None else ""
        p99 = f"{r.p99_ms:.1f} ms" if r.p99_ms is not None else ""
        print(f"| {r.system} | {r.backend} | {r.concurrency} | {rate} | {p50} | {p99} |")
    peer = {r.concurrency: r.jobs_per_s for r in results if r.system == "procrastinate" and r.jobs_per_s}
    print()
    for r in results:
        if r.system == "codat-relay" and r.jobs_per_s and r.concurrency in peer:
            ratio = r.jobs_per_s / peer[r.concurrency]
            print(f"codat-relay {r.backend} / procrastinate at concurrency {r.concurrency}: {ratio:.1f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_queue", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[10, 50])
    parser.add_argument("--latency-jobs", type=int, default=400)
    parser.add_argument("--rate", type=float, default=200.0, help="enqueues per second in the latency run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)  # procrastinate logs through stdlib logging
    with open(os.devnull, "w") as sink, tempfile.TemporaryDirectory() as tmp:
        configure_logging(settings_for("sqlite+aiosqlite://"), stream=sink)
        print(f"queue benchmark: {args.jobs} jobs, PostgreSQL {common.postgres_version()}", flush=True)
        report(measure(args, Path(tmp)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
