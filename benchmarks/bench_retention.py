"""Retention: a simulated year on an injected clock; database size per simulated day, and the receiver's p99
while the prune runs against without it, on SQLite and PostgreSQL.

    python -m benchmarks.bench_retention [--days 365] [--scale 1000] [--backends sqlite,postgres] [--quick]

The issue's rate is 50,000 alerts and 500,000 record versions a day; `--scale N` divides both (default
1,000: 50 alerts and 500 record versions a day). Each simulated day writes, through the relay's own
storage functions: its alerts (a `read.completed` body each, processed) and their done jobs; its record
versions (written by `record_states`, claimed into pushes of up to 5,000, their datasets ended Complete
and their push and poll jobs done); a notification per 100 alerts. Records are versions of a fixed
population (`--records`, default 20 days' worth): a record's current version is never pruned, so a
population that only grows grows the `records` table by design (one row per distinct record) — holding
it fixed measures what retention governs. After each day the prune runs once (the worker runs it hourly;
here a day's rows go in one run) with the default `RELAY_RETAIN_*` windows, then the size is sampled:
SQLite, the file's pages (after the prune's incremental vacuum); PostgreSQL, the sum of
`pg_total_relation_size` over the relay's tables after a plain `VACUUM` (not FULL: what autovacuum does,
made deterministic; a compressed run writes days in seconds, faster than autovacuum's naps).

The receiver: after the year, `--deliveries` signed deliveries are posted to `POST /webhooks/codat`
(in-process, the real app) once with nothing else running and once while the prune deletes a backlog of
`--backlog` expired alerts; the p99 of both and their ratio are from the same run. Results go to
`.bench/retention.json`; the format is in benchmarks/notes.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from benchmarks import common
from service import keys, migrate, queue, record_states
from service.clock import FixedClock
from service.db import alerts, bookkeeper, create_engine, datasets, metadata, notifications, pushes, records, writer
from service.logs import configure_logging
from service.retention import DAY_S, Pace, Pruner, Retention
from service.settings import Settings
from service.testing import read_completed_body, running_app, signed_headers

FULL_ALERTS_PER_DAY = 50_000
FULL_RECORDS_PER_DAY = 500_000
PUSH_MAX = 5_000
SECRET = "whsec_" + "YmVuY2htYXJrLW9ubHktc2VjcmV0LWtleS0zMmI="
COMPANIES = 20
CREATED_DATE = "2026-01-01T00:00:00Z"  # every version's createdDate (records.record_date, migration 0011)
CREATED_AT = 1767225600.0  # the same instant in Unix seconds
DATA_TYPE = "commerce-orders"
START = 1_800_000_000.0
OUTPUT = common.REPO / ".bench" / "retention.json"


@dataclass
class Run:
    backend: str
    days: int
    scale: int
    alerts_per_day: int
    records_per_day: int
    population: int
    size_mib: list[float] = field(default_factory=list)  # per simulated day, after that day's prune
    pruned: dict[str, int] = field(default_factory=dict)  # rows pruned over the year, per table
    idle_p99_ms: float = 0.0
    pruning_p99_ms: float = 0.0
    p99_ratio: float = 0.0
    idle_p50_ms: float = 0.0
    pruning_p50_ms: float = 0.0
    backlog_pruned: int = 0
    deliveries_idle: int = 0
    deliveries_pruning: int = 0
    idle_aa_ratio: float = 0.0  # the higher idle half's p99 over the lower's: the noise of this run
    pruning_rounds_throughout: int = 0  # pruning rounds whose deliveries all ran while the prune did
    seconds: float = 0.0

    def flat(self, window_days: int) -> tuple[float, float]:
        """(min, max) size over the days after the longest retention window (plus a week of slack)."""
        after = self.size_mib[window_days + 7 :] or self.size_mib[-1:]
        return min(after), max(after)


def settings_for(url: str) -> Settings:
    return Settings(database_url=url, webhook_secrets=(SECRET,), log_format="json", log_level="warning",
                    sqlite_synchronous="normal")  # fmt: skip


class Simulator:
    """Writes one simulated day at a time through the relay's storage functions."""

    def __init__(self, engine: AsyncEngine, clock: FixedClock, run: Run) -> None:
        self.engine, self.clock, self.run = engine, clock, run
        self.version = 0
        self.body = orjson.dumps(read_completed_body(("commerce-orders", "Complete")))

    async def day(self, day: int) -> None:
        start = self.clock.now()
        await self._alerts(day, start)
        await self._records(day, start)

    async def _alerts(self, day: int, start: float) -> None:
        n = self.run.alerts_per_day
        rows, job_rows, notes = [], [], []
        for i in range(n):
            at = start + i * DAY_S / max(n, 1)
            company = f"co-{i % COMPANIES}"
            alert_id = f"a-{day}-{i}"
            rows.append({"id": alert_id, "kind": "dataset_status", "type": "read.completed", "shape": "envelope",
                         "company_id": company, "data_types": [{"dataType": DATA_TYPE, "status": "Complete"}],
                         "received_at": at, "status": "done", "attempts": 1, "updated_at": at, "body": self.body})
            job_rows.append({**queue.alert_job(alert_id, company, now=at), "status": "done", "attempts": 1,
                             "finished_at": at})  # fmt: skip
            if i % 100 == 0:
                notes.append({"id": uuid.uuid4().hex, "kind": "dataset_failed", "severity": "warning",
                              "company_id": company, "data_type": DATA_TYPE, "dedupe_key": f"d|{company}|{day}",
                              "summary": "A dataset failed", "details": {"day": day}, "occurred_at": at})
        async with writer(self.engine).begin() as conn:
            for chunk in range(0, len(rows), 1000):
                await conn.execute(alerts.insert(), rows[chunk : chunk + 1000])
                await queue.insert_many(conn, job_rows[chunk : chunk + 1000])
            if notes:
                await conn.execute(notifications.insert(), notes)

    async def _records(self, day: int, start: float) -> None:
        """Versions spread over the companies, in pushes of at most 5,000, each dataset ended Complete."""
        per_company = max(1, self.run.records_per_day // COMPANIES)
        population = max(1, self.run.population // COMPANIES)
        for c in range(COMPANIES):
            company = f"co-{c}"
            at = start + c * DAY_S / COMPANIES
            ids = [f"o-{(self.version + k) % population:07d}" for k in range(per_company)]
            self.version += per_company
            await self._write(company, sorted(set(ids)), at)
            await self._push_all(company, at)

    async def _write(self, company: str, ids: list[str], at: float) -> None:
        async with writer(self.engine).begin() as conn:
            existing = set((await conn.execute(sa.select(records.c.record_id).where(
                records.c.company_id == company, records.c.data_type == DATA_TYPE,
                records.c.record_id.in_(ids)))).scalars())  # fmt: skip
            inserts: list[dict[str, Any]] = []
            updates: list[dict[str, Any]] = []
            for record_id in ids:
                body = orjson.dumps({"id": record_id, "orderNumber": record_id, "currency": "GBP",
                                     "totalAmount": self.version % 997, "createdDate": CREATED_DATE})
                values = {"b_id": record_id, "n_version": self.version, "n_hash": uuid.uuid4().hex, "n_body": body,
                          "n_delete": False, "n_state": "pending", "n_date": CREATED_AT}  # fmt: skip
                (updates if record_id in existing else inserts).append(values)
            await record_states.write_versions(conn, company, DATA_TYPE, at, inserts, updates)

    async def _push_all(self, company: str, at: float) -> None:
        after = ""
        while True:
            push_id = str(uuid.uuid4())
            dataset_id = str(uuid.uuid4())
            async with writer(self.engine).begin() as conn:
                await conn.execute(pushes.insert().values(
                    id=push_id, company_id=company, data_type=DATA_TYPE, dataset_id=dataset_id, record_count=0,
                    reason="intake", started_at=at, finished_at=at, outcome="pushed"))  # fmt: skip
                claimed, after = await record_states.claim(conn, company, DATA_TYPE, push_id, after, PUSH_MAX, at)
                if not claimed:
                    await conn.execute(pushes.delete().where(pushes.c.id == push_id))
                    return
                await conn.execute(datasets.insert().values(
                    id=dataset_id, company_id=company, data_type=DATA_TYPE, push_id=push_id,
                    record_count=len(claimed), status="Complete", terminal=True, requested_at=at, completed_at=at,
                    updated_at=at))  # fmt: skip
                await record_states.end_flight(conn, push_id, record_states.Event.COMPLETE, at,
                                               dataset_id=dataset_id, completed_at=at)  # fmt: skip
                lock = keys.push_lock(company, DATA_TYPE)
                await queue.insert_many(conn, [
                    {**queue.job_values("push", {"company_id": company, "data_type": DATA_TYPE}, now=at,
                                        lock_key=lock), "status": "done", "attempts": 1, "finished_at": at},
                    {**queue.job_values("poll_dataset", {"dataset_id": dataset_id, "company_id": company}, now=at),
                     "status": "done", "attempts": 1, "finished_at": at},
                ])  # fmt: skip


async def database_mib(engine: AsyncEngine) -> float:
    if engine.dialect.name == "sqlite":
        async with engine.connect() as conn:
            pages = (await conn.exec_driver_sql("PRAGMA page_count")).scalar() or 0
            size = (await conn.exec_driver_sql("PRAGMA page_size")).scalar() or 0
        return int(pages) * int(size) / 2**20
    names = [table.name for table in metadata.sorted_tables]
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        for name in names:
            await conn.exec_driver_sql(f"VACUUM {name}")
        total = 0
        for name in names:
            total += int((await conn.exec_driver_sql(f"SELECT pg_total_relation_size('{name}')")).scalar() or 0)
    return total / 2**20


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def deliveries(client: httpx.AsyncClient, clock: FixedClock, n: int, concurrency: int) -> list[float]:
    """Post `n` signed deliveries, `concurrency` at a time; each one's answer time in ms (every one a 202)."""
    latencies: list[float] = []
    queue_: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue_.put_nowait(i)

    async def one() -> None:
        while not queue_.empty():
            queue_.get_nowait()
            body = orjson.dumps(read_completed_body(("commerce-orders", "Complete")))
            headers = signed_headers(body, SECRET, at=clock.now()) | {"content-type": "application/json"}
            started = time.perf_counter()
            answer = await client.post("/webhooks/codat", content=body, headers=headers)
            latencies.append((time.perf_counter() - started) * 1e3)
            if answer.status_code != 202:
                raise RuntimeError(f"delivery answered {answer.status_code}: {answer.text}")

    await asyncio.gather(*(one() for _ in range(concurrency)))
    return latencies


async def receiver_p99(url: str, clock: FixedClock, run: Run, args: argparse.Namespace) -> None:
    """The receiver's p99 idle and while the prune deletes a backlog of expired alerts (same process, as `serve`).

    Measured in `--rounds` alternating rounds (idle, then pruning a share of the backlog), the same number of
    deliveries in each, pooled per condition, so a drift of the shared machine during the run weighs on both
    alike. A pruning round measures only while the prune runs; the prune then finishes unloaded. The idle
    rounds split in two (odd, even) give the same run's noise: `idle_aa_ratio`, idle against idle.
    """
    idle: list[list[float]] = []
    during: list[float] = []
    per_round = args.deliveries // args.rounds
    async with running_app(settings_for(url), clock=clock) as (app, client):
        engine = app.state.runtime.engine
        await deliveries(client, clock, 50, args.concurrency)  # warm-up
        share = args.backlog // args.rounds
        for round_ in range(args.rounds):
            idle.append(await deliveries(client, clock, per_round, args.concurrency))
            old = clock.now() - 40 * DAY_S
            async with bookkeeper(engine).begin() as conn:
                for chunk in range(0, share, 1000):
                    await conn.execute(alerts.insert(), [
                        {"id": f"backlog-{round_}-{i}", "kind": "other", "type": "t", "shape": "envelope",
                         "company_id": "co-0", "data_types": [], "received_at": old, "status": "done",
                         "updated_at": old, "body": b"x" * 700}
                        for i in range(chunk, min(chunk + 1000, share))])  # fmt: skip
            prune = asyncio.create_task(Pruner(engine, Retention(), clock).run())
            measured: list[float] = []
            while not prune.done() and len(measured) < per_round:
                measured += await deliveries(client, clock, args.concurrency * 4, args.concurrency)
            run.pruning_rounds_throughout += int(not prune.done())
            during += measured
            run.backlog_pruned += (await prune).get("alerts", 0)
    pooled = [ms for r in idle for ms in r]
    run.deliveries_idle, run.deliveries_pruning = len(pooled), len(during)
    run.idle_p50_ms, run.idle_p99_ms = percentile(pooled, 50), percentile(pooled, 99)
    run.pruning_p50_ms, run.pruning_p99_ms = percentile(during, 50), percentile(during, 99)
    run.p99_ratio = run.pruning_p99_ms / run.idle_p99_ms
    odd, even = [ms for r in idle[0::2] for ms in r], [ms for r in idle[1::2] for ms in r]
    if odd and even:
        run.idle_aa_ratio = max(percentile(odd, 99), percentile(even, 99)) / min(percentile(odd, 99),
                                                                                 percentile(even, 99))  # fmt: skip


async def simulate(url: str, run: Run, args: argparse.Namespace) -> Run:
    started = time.monotonic()
    clock = FixedClock(START)
    engine = create_engine(settings_for(url))
    try:
        sim = Simulator(engine, clock, run)
        pruner = Pruner(engine, Retention(), clock, pace=Pace.fixed(engine.url))
        for day in range(run.days):
            await sim.day(day)
            clock.advance(DAY_S)
            for table, n in (await pruner.run()).items():
                run.pruned[table] = run.pruned.get(table, 0) + n
            run.size_mib.append(round(await database_mib(engine), 3))
            if day % 30 == 0 or day == run.days - 1:
                print(f"  {run.backend:10} day {day + 1:3}: {run.size_mib[-1]:8.2f} MiB", flush=True)
    finally:
        await engine.dispose()
    await receiver_p99(url, clock, run, args)
    run.seconds = round(time.monotonic() - started, 1)
    return run


def on_fresh_database(backend: str, run: Run, args: argparse.Namespace, tmp: Path) -> Run:
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp / f'retention-{time.monotonic_ns()}.db'}"
        migrate.upgrade(url)
        return asyncio.run(simulate(url, run, args))
    name, url = common.create_postgres_database()
    try:
        migrate.upgrade(url)
        return asyncio.run(simulate(url, run, args))
    finally:
        common.drop_postgres_database(name)


def report(runs: list[Run], window_days: int) -> None:
    print(f"\n| backend | days | alerts/day | record versions/day | size at day {window_days} | "
          "size after (min-max) | last day | receiver p99 idle | while pruning (deliveries) | ratio | idle vs idle |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        low, high = r.flat(window_days)
        at_window = r.size_mib[min(window_days, len(r.size_mib)) - 1]
        print(f"| {r.backend} | {r.days} | {r.alerts_per_day:,} | {r.records_per_day:,} | {at_window:.1f} MiB | "
              f"{low:.1f}-{high:.1f} MiB | {r.size_mib[-1]:.1f} MiB | {r.idle_p99_ms:.1f} ms | "
              f"{r.pruning_p99_ms:.1f} ms ({r.deliveries_pruning}) | {r.p99_ratio:.2f}x | "
              f"{r.idle_aa_ratio:.2f}x |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_retention", description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--scale", type=int, default=1000, help="divide 50,000 alerts / 500,000 versions a day")
    parser.add_argument("--records", type=int, default=None, help="distinct records (default: 20 days of versions)")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--deliveries", type=int, default=2000, help="deliveries per p99 measurement")
    parser.add_argument("--backlog", type=int, default=50_000, help="expired alerts the measured prune deletes")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4, help="alternating idle / pruning rounds, pooled")
    parser.add_argument("--quick", action="store_true", help="120 days at scale 5,000, 500 deliveries, 10,000 backlog")
    args = parser.parse_args(argv)
    if args.quick:
        args.days, args.scale, args.deliveries, args.backlog = 120, 5000, 500, 10_000
    retention = Retention()
    window_days = int(max(v for v in asdict(retention).values() if v is not None) / DAY_S)
    alerts_per_day = FULL_ALERTS_PER_DAY // args.scale
    records_per_day = FULL_RECORDS_PER_DAY // args.scale
    population = args.records or records_per_day * 20
    print(f"retention benchmark: {args.days} days, 1/{args.scale} of the issue's rate ({alerts_per_day} alerts, "
          f"{records_per_day} record versions a day, {population} distinct records), PostgreSQL "
          f"{common.postgres_version()}", flush=True)  # fmt: skip
    runs = []
    with open(os.devnull, "w") as sink, tempfile.TemporaryDirectory() as tmp:
        configure_logging(settings_for("sqlite+aiosqlite://"), stream=sink)  # log lines rendered, then dropped
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            run = Run(backend, args.days, args.scale, alerts_per_day, records_per_day, population)
            runs.append(on_fresh_database(backend, run, args, Path(tmp)))
    report(runs, window_days)
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_text(json.dumps({"window_days": window_days, "machine": common.machine_info(),
                                  "runs": [asdict(r) for r in runs]}, indent=1))  # fmt: skip
    print(f"\nwritten to {OUTPUT.relative_to(common.REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
