"""Alert search benchmark: search p50/p99 for each filter at a million alerts, and what the text index
costs the webhook receiver's group-commit writer.

    python -m benchmarks.bench_search [--rows 1000000] [--backends postgres,sqlite] [--queries 200]
                                      [--ingest-alerts 20000] [--out .bench/search.json]

Each backend gets a throw-away database migrated to head, loaded in bulk with Codat-shaped bodies (legacy
alert rules, `read.completed`, `connection.*`; 10,000 companies, one dataset id per dataset alert, record ids
and error messages in the text), then indexed: PostgreSQL loads by COPY and fills `alert_texts` in one
INSERT … SELECT with the trigram index dropped and rebuilt with the migration's statement (a bulk GIN
build); SQLite inserts the alerts and runs the indexer job's own code (`service.alert_index`) over them.
Each filter then runs `--queries` first-page searches (50 rows, newest first) through
`service.alert_search.search_alerts`, the code the API, CLI and page run, with values drawn from the loaded
rows.

Ingest cost: `--ingest-alerts` deliveries written through the receiver's own batch writer
(`service.batch_writers`, batches of 64) into a fresh database at head (the text is indexed after the
acknowledgement: nothing on the insert), and into one with the earlier design put back (the text index
maintained in the insert: PostgreSQL's trigram GIN on `alerts`, SQLite's FTS5 insert trigger), for the
A/B; then the indexer job (`AlertIndexer`, batches of 500) indexes the head database's alerts: its rate is
the cost that moved to the worker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from benchmarks import common
from service import migrate
from service.alert_index import SETTLE_S, AlertIndexer
from service.alert_search import PG_TRGM_INDEX, AlertSearch, search_alerts
from service.batch_writers import batch_writer_for
from service.clock import FixedClock
from service.db import create_engine
from service.settings import Settings

COMPANIES = 10_000
PAGE = 50
INGEST_BATCH = 64
START = 1_760_000_000.0
PG_TRGM_SQL = f"CREATE INDEX IF NOT EXISTS {PG_TRGM_INDEX} ON alert_texts USING gin (text gin_trgm_ops)"
PG_FILL_SQL = ("INSERT INTO alert_texts (alert_id, received_at, text) "
               "SELECT id, received_at, encode(body, 'escape') FROM alerts")  # fmt: skip
PG_WATERMARK_SQL = ("UPDATE alert_text_watermark SET (received_at, alert_id) = "
                    "(SELECT received_at, id FROM alerts ORDER BY received_at DESC, id DESC LIMIT 1)")  # fmt: skip
# The earlier design, indexing in the receiver's insert (kept here only as the A/B's other arm).
INLINE_PG = "CREATE INDEX ix_alerts_body_trgm ON alerts USING gin (encode(body, 'escape') gin_trgm_ops)"
INLINE_SQLITE = ("CREATE VIRTUAL TABLE alerts_fts USING fts5(body, content='alerts', tokenize='trigram')",
                 "CREATE TRIGGER alerts_fts_insert AFTER INSERT ON alerts BEGIN "
                 "INSERT INTO alerts_fts(rowid, body) VALUES (new.rowid, new.body); END")  # fmt: skip
INDEX_BATCH = 500
COLUMNS = ("id", "kind", "type", "shape", "company_id", "connection_id", "dataset_id", "dataset_status",
           "data_types", "generated_at", "received_at", "status", "attempts", "last_error", "updated_at",
           "body")  # fmt: skip
STATUSES = ("FetchError", "ValidationError", "Complete", "MapError", "AuthError")
DATA_TYPES = ("commerce-orders", "commerce-payments", "commerce-transactions")


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


def alert_rows(count: int, seed: int = 17) -> Iterator[tuple[Any, ...]]:
    """`count` alerts as COLUMNS tuples, oldest first, one every 30 ms (a million span about 8 hours)."""
    rng = random.Random(seed)
    companies = [_uuid(rng) for _ in range(COMPANIES)]
    for n in range(count):
        company, delivery, at = companies[rng.randrange(COMPANIES)], _uuid(rng), START + n * 0.03
        connection, pick = _uuid(rng), rng.random()
        dataset = status = None
        if pick < 0.5:  # legacy dataset status rule, with Codat's message
            dataset, status, data_type = _uuid(rng), rng.choice(STATUSES), rng.choice(DATA_TYPES)
            record = f"order-{rng.randrange(10_000_000):07d}"
            kind, type_, shape = "dataset_status", "Data Sync Status Changed To Error", "legacy"
            body = {"ClientId": "bae71d36-ff47-420a-b4a6-f8c9ddf41140", "ClientName": "Acme", "CompanyId": company,
                    "DataConnectionId": connection, "RuleId": "70af3071-65d9-4ec3-b3cb-5283e8d55dac",
                    "RuleType": type_, "AlertId": delivery,
                    "Message": f"ERROR: syncing {data_type} triggered a {status} notification: {record} location "
                               f"till-{rng.randrange(100)} does not exist in the accounting platform",
                    "Data": {"dataType": data_type, "datasetStatus": status, "datasetId": dataset}}  # fmt: skip
        elif pick < 0.8:
            kind, type_, shape = "dataset_status", "read.completed", "envelope"
            body = {"id": delivery, "eventType": type_, "generatedDate": "2026-01-01T10:00:00Z",
                    "payload": {"referenceCompany": {"id": company, "name": f"Store {company[:6]}", "tags": {}},
                                "dataTypes": [{"connectionId": connection, "dataType": rng.choice(DATA_TYPES),
                                               "recordsModified": True, "status": "Complete",
                                               "issues": []}]}}  # fmt: skip
        else:
            type_ = rng.choice(("connection.deleted", "connection.reconnected", "client.rateLimit.reached"))
            kind = {"connection.deleted": "connection_deleted", "connection.reconnected": "connection_status"}.get(
                type_, "other")
            shape = "envelope"
            body = {"id": delivery, "eventType": type_, "generatedDate": "2026-01-01T10:00:00Z",
                    "payload": {"referenceCompany": {"id": company, "name": f"Store {company[:6]}"},
                                "connection": {"id": connection, "platformName": "Xero",
                                               "status": "Linked"}}}  # fmt: skip
        yield (delivery, kind, type_, shape, company, connection, dataset, status, "[]", None, at, "done", 1, None,
               at, orjson.dumps(body))  # fmt: skip


def sample_rows(count: int, every: int) -> list[tuple[Any, ...]]:
    return [row for n, row in enumerate(alert_rows(count)) if n % every == 0]


# -- loading ------------------------------------------------------------------------------------------------


async def load_postgres(url: str, count: int) -> float:
    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    conn = await asyncpg.connect(dsn)
    started = time.perf_counter()
    try:
        await conn.execute(f"DROP INDEX IF EXISTS {PG_TRGM_INDEX}")
        batch: list[tuple[Any, ...]] = []
        for row in alert_rows(count):
            batch.append(row)
            if len(batch) == 50_000:
                await conn.copy_records_to_table("alerts", records=batch, columns=COLUMNS)
                batch = []
        if batch:
            await conn.copy_records_to_table("alerts", records=batch, columns=COLUMNS)
        await conn.execute(PG_FILL_SQL)
        await conn.execute(PG_WATERMARK_SQL)
        await conn.execute("SET maintenance_work_mem = '256MB'")
        await conn.execute(PG_TRGM_SQL)
        await conn.execute("VACUUM ANALYZE alerts")
        await conn.execute("VACUUM ANALYZE alert_texts")
    finally:
        await conn.close()
    return time.perf_counter() - started


def load_sqlite(path: str, count: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    started = time.perf_counter()
    try:
        conn.execute("PRAGMA synchronous=OFF")
        placeholders = ",".join("?" * len(COLUMNS))
        conn.execute("BEGIN")
        batch: list[tuple[Any, ...]] = []
        for row in alert_rows(count):
            batch.append(row)
            if len(batch) == 50_000:
                conn.executemany(f"INSERT INTO alerts ({','.join(COLUMNS)}) VALUES ({placeholders})", batch)  # noqa: S608
                batch = []
        if batch:
            conn.executemany(f"INSERT INTO alerts ({','.join(COLUMNS)}) VALUES ({placeholders})", batch)  # noqa: S608
        conn.execute("COMMIT")
    finally:
        conn.close()
    asyncio.run(index_all(f"sqlite+aiosqlite:///{path}", count))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("ANALYZE")
    finally:
        conn.close()
    return time.perf_counter() - started


async def index_all(url: str, count: int) -> float:
    """The indexer job's own run over every loaded alert (a clock past the last one); returns alerts/s."""
    engine = create_engine(Settings(database_url=url, allow_unauthenticated_webhooks=True))
    clock = FixedClock(START + count * 0.03 + SETTLE_S + 1)
    try:
        started = time.perf_counter()
        indexed = await AlertIndexer(engine, clock, batch_rows=INDEX_BATCH, pause_s=0, budget_s=3600).run()
        elapsed = time.perf_counter() - started
    finally:
        await engine.dispose()
    assert indexed == count, (indexed, count)
    return count / elapsed


# -- searching ----------------------------------------------------------------------------------------------


def filters(samples: list[tuple[Any, ...]]) -> dict[str, Callable[[random.Random], AlertSearch]]:
    """Each filter, as a function drawing one search's values from the loaded rows."""
    col = {name: i for i, name in enumerate(COLUMNS)}
    with_dataset = [r for r in samples if r[col["dataset_id"]]]

    def record_id(r: tuple[Any, ...]) -> str:
        return str(orjson.loads(r[col["body"]])["Message"].split(": ", 2)[2].split(" ")[0])

    return {
        "company": lambda rng: AlertSearch(company=rng.choice(samples)[col["company_id"]], limit=PAGE),
        "dataset": lambda rng: AlertSearch(dataset=rng.choice(with_dataset)[col["dataset_id"]], limit=PAGE),
        "delivery": lambda rng: AlertSearch(delivery=rng.choice(samples)[col["id"]], limit=PAGE),
        "type": lambda rng: AlertSearch(type=rng.choice(("read.completed", "connection.deleted")), limit=PAGE),
        "q: a whole dataset id": lambda rng: AlertSearch(q=rng.choice(with_dataset)[col["dataset_id"]], limit=PAGE),
        "q: 8 characters of a delivery id": lambda rng: AlertSearch(q=rng.choice(samples)[col["id"]][:8], limit=PAGE),
        "q: a record id": lambda rng: AlertSearch(q=record_id(rng.choice(with_dataset)), limit=PAGE),
        "q: a common word (ValidationError)": lambda rng: AlertSearch(q="validationerror", limit=PAGE),
        "q + company": lambda rng: (lambda r: AlertSearch(q="Store", company=r[col["company_id"]], limit=PAGE))(
            rng.choice(samples)),
    }


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def measure(url: str, samples: list[tuple[Any, ...]], queries: int) -> list[dict[str, Any]]:
    engine = create_engine(Settings(database_url=url, allow_unauthenticated_webhooks=True))
    results = []
    try:
        rng = random.Random(3)
        for name, draw in filters(samples).items():
            await search_alerts(engine, draw(rng))  # warm the plan and the pool
            timings, found = [], 0
            for _ in range(queries):
                search = draw(rng)
                started = time.perf_counter()
                page = await search_alerts(engine, search)
                timings.append((time.perf_counter() - started) * 1000)
                found += len(page.rows)
            results.append({"filter": name, "p50_ms": round(percentile(timings, 50), 2),
                            "p99_ms": round(percentile(timings, 99), 2),
                            "rows_per_page": round(found / queries, 1)})  # fmt: skip
            print(f"  {name}: p50 {results[-1]['p50_ms']} ms, p99 {results[-1]['p99_ms']} ms", flush=True)
    finally:
        await engine.dispose()
    return results


# -- the receiver's cost -----------------------------------------------------------------------------------


async def ingest_rate(url: str, count: int) -> float:
    """Deliveries per second through the webhook receiver's batch writer (batches of 64, one commit each)."""
    writer = batch_writer_for(url)
    rows = [dict(zip(COLUMNS, r, strict=True)) for r in alert_rows(count, seed=99)]
    for row in rows:
        row["status"], row["data_types"] = "pending", []
    started = time.perf_counter()
    try:
        for i in range(0, len(rows), INGEST_BATCH):
            await writer.write(rows[i:i + INGEST_BATCH], START)
    finally:
        await writer.close()
    return count / (time.perf_counter() - started)


async def index_in_the_insert(url: str) -> None:
    """Put back the earlier design: the text indexed by every insert into `alerts` (the A/B's other arm)."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.split(":///", 1)[1])
        for statement in INLINE_SQLITE:
            conn.execute(statement)
        conn.close()
        return
    pg = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await pg.execute(INLINE_PG)
    finally:
        await pg.close()


# -- one backend ------------------------------------------------------------------------------------------


class Database:
    def __init__(self, backend: str, tmp: Path) -> None:
        self.backend, self._tmp = backend, tmp
        self._names: list[str] = []

    def fresh(self) -> str:
        if self.backend == "postgres":
            name, url = common.create_postgres_database()
            self._names.append(name)
        else:
            url = f"sqlite+aiosqlite:///{self._tmp / f'search-{len(self._names)}.db'}"
            self._names.append(url)
        migrate.upgrade(url)
        return url

    def close(self) -> None:
        if self.backend == "postgres":
            for name in self._names:
                common.drop_postgres_database(name)


def run_backend(backend: str, rows: int, queries: int, ingest_alerts: int, tmp: Path) -> dict[str, Any]:
    db = Database(backend, tmp)
    try:
        url = db.fresh()
        print(f"{backend}: loading {rows:,} alerts", flush=True)
        load_s = asyncio.run(load_postgres(url, rows)) if backend == "postgres" else load_sqlite(
            url.split(":///", 1)[1], rows)
        print(f"{backend}: loaded in {load_s:.0f} s; searching", flush=True)
        samples = sample_rows(rows, max(1, rows // 5_000))
        searches = asyncio.run(measure(url, samples, queries))
        ingest: dict[str, float] = {}
        if ingest_alerts:
            head = db.fresh()
            ingest["receiver_per_s"] = round(asyncio.run(ingest_rate(head, ingest_alerts)))
            ingest["indexer_per_s"] = round(asyncio.run(index_all(head, ingest_alerts)))
            inline = db.fresh()
            asyncio.run(index_in_the_insert(inline))
            ingest["receiver_indexing_in_the_insert_per_s"] = round(asyncio.run(ingest_rate(inline, ingest_alerts)))
            print(f"{backend}: ingest {ingest}", flush=True)
        return {"backend": backend, "rows": rows, "load_s": round(load_s, 1), "searches": searches, "ingest": ingest}
    finally:
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--backends", default="postgres,sqlite")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ingest-alerts", type=int, default=20_000, help="0 skips the ingest measurement")
    parser.add_argument("--out", default=".bench/search.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        for backend in args.backends.split(","):
            results.append(run_backend(backend.strip(), args.rows, args.queries, args.ingest_alerts, Path(tmp)))
    report = {"machine": common.machine_info(), "results": results}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    for result in results:
        print(f"\n{result['backend']}, {result['rows']:,} alerts (loaded in {result['load_s']} s)")
        print(common.format_table(["filter", "p50 ms", "p99 ms", "rows/page"],
                                  [[s["filter"], str(s["p50_ms"]), str(s["p99_ms"]), str(s["rows_per_page"])]
                                   for s in result["searches"]]))  # fmt: skip
        if result["ingest"]:
            print(f"ingest through the batch writer: {result['ingest']}")


if __name__ == "__main__":
    main()
