"""One round trip per batch of deliveries: the hot path of the durable acknowledgement.

Measured (benchmarks/bench_ingest.py): through SQLAlchemy a batch cost about twelve thread hops on
aiosqlite and six network round trips on PostgreSQL, each waiting for the busy event loop, so the
commit cycle — not the database — bounded throughput. Here a batch is ONE call: on SQLite a dedicated
thread with its own connection runs BEGIN IMMEDIATE … COMMIT; on PostgreSQL one statement inserts the
alerts, their jobs and the NOTIFY atomically. Everything else keeps using SQLAlchemy.
"""

from __future__ import annotations

import asyncio
import functools
import operator
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import asyncpg
import orjson
import sqlalchemy as sa

from service import queue
from service.db import PGBOUNCER_QUERY, SQLITE_BUSY_TIMEOUT_MS, behind_pgbouncer, sqlite_insert_rows, sqlite_write_turn

ALERT_COLUMNS = (
    "id", "kind", "type", "shape", "company_id", "connection_id", "dataset_id", "dataset_status",
    "data_types", "generated_at", "received_at", "updated_at", "status", "attempts", "body",
)  # fmt: skip
CONNECT_TIMEOUT_S = 5.0


class BatchWriter(Protocol):
    async def write(self, rows: list[dict[str, Any]], now: float) -> set[str]:
        """Insert alert rows (skipping known ids) and a job for each new actionable one; return new ids."""
        ...

    async def close(self) -> None: ...


def _job_rows(rows: list[dict[str, Any]], now: float) -> list[tuple[Any, ...]]:
    """The job of each of these alerts, built by the queue, as its raw statements take it."""
    return [queue.raw_job(queue.alert_job(row["id"], row["company_id"], now=now, traceparent=row.get("traceparent")))
            for row in rows]  # fmt: skip


def _tagged_jobs(rows: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """The job of each of these alerts, built by the queue, tagged with its alert's id (`pg_insert_jobs`)."""
    jobs = []
    for row in rows:
        job = queue.alert_job(row["id"], row["company_id"], now=now, traceparent=row.get("traceparent"))
        job["tag"] = row["id"]
        jobs.append(job)
    return jobs


def _pending(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The alerts that get a job: the actionable ones (an `other` alert is stored `ignored`, with none)."""
    return [row for row in rows if row["status"] == "pending"]


_DATA_TYPES = ALERT_COLUMNS.index("data_types")
_BEFORE_DATA_TYPES = operator.itemgetter(*ALERT_COLUMNS[:_DATA_TYPES])
_AFTER_DATA_TYPES = operator.itemgetter(*ALERT_COLUMNS[_DATA_TYPES + 1 :])


def _sqlite_values(row: dict[str, Any]) -> tuple[Any, ...]:
    """The row's ALERT_COLUMNS values, its data types as JSON text."""
    return (*_BEFORE_DATA_TYPES(row), orjson.dumps(row["data_types"]).decode(), *_AFTER_DATA_TYPES(row))


@functools.cache
def _sqlite_known(count: int) -> str:
    return f"SELECT id FROM alerts WHERE id IN ({','.join('?' * count)})"  # noqa: S608 - placeholders only


def _first_new(rows: list[dict[str, Any]], known: set[str]) -> list[dict[str, Any]]:
    """The rows to insert: those of ids not `known`, the first of each id only."""
    seen, new = set(known), []
    for row in rows:
        if row["id"] not in seen:
            seen.add(row["id"])
            new.append(row)
    return new


class SqliteBatchWriter:
    """A dedicated thread and connection: the batch crosses threads once, not once per statement."""

    def __init__(self, path: str, synchronous: str = "full") -> None:
        self._path = path
        self._synchronous = synchronous.upper()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-sqlite")
        self._conn: sqlite3.Connection | None = None

    async def write(self, rows: list[dict[str, Any]], now: float) -> set[str]:
        loop = asyncio.get_running_loop()
        # Taking turns with this process's other writers (the workers' rounds) rather than meeting them in
        # SQLite's sleeping busy handler. The turn is an optimisation, not the lock: SQLite's own lock still
        # serialises writers (a cancelled caller that leaves while the thread writes costs only a wait).
        async with sqlite_write_turn(f"sqlite:///{self._path}"):
            return await loop.run_in_executor(self._executor, self._write, rows, now)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        return conn

    def _write(self, rows: list[dict[str, Any]], now: float) -> set[str]:
        if self._conn is None:
            self._conn = self._connect()
        conn = self._conn
        ids = [row["id"] for row in rows]
        conn.execute("BEGIN IMMEDIATE")
        try:
            # The known ids are asked for first (the write lock is held: nobody inserts in between), not
            # with RETURNING, and each table gets ONE insert, not `executemany`'s step per job: sqlite3
            # gives up the GIL around every step and must take it back from the busy event loop.
            new = _first_new(rows, {r[0] for r in conn.execute(_sqlite_known(len(ids)), ids)})
            if new:
                values = [v for row in new for v in _sqlite_values(row)]
                conn.execute(sqlite_insert_rows("alerts", ALERT_COLUMNS, len(new)), values)
                if jobs := _job_rows(_pending(new), now):
                    conn.execute(queue.sqlite_insert_jobs(len(jobs)), [v for job in jobs for v in job])
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return {row["id"] for row in new}

    async def close(self) -> None:
        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        self._executor.shutdown(wait=True)


# Alerts, their jobs and the wake-up in ONE statement: data-modifying CTEs run exactly once, and the
# statement is its own transaction. Three parameters whatever the batch: the alerts as one JSON array ($1,
# zipped by position with their bodies, $2), and their jobs, built by the queue, as another ($3) — asyncpg
# encodes an array parameter element by element in Python, a large share of the write's CPU. Each
# job is tagged with its alert's id: only those of alerts new to the table are inserted, in arrival order,
# so one company's alerts keep the order they were received in.
# Each column's type as PostgreSQL reads it from a JSON row: all but the last, `body`, which is the bytea array.
_PG_JSON_COLUMNS = ", ".join(f"{c} {t}" for c, t in zip(ALERT_COLUMNS[:-1], (
    "text", "text", "text", "text", "text", "text", "text", "text", "json", "float8", "float8", "float8", "text", "int",
), strict=True))  # fmt: skip
PG_BATCH = f"""
WITH src AS (
    SELECT * FROM ROWS FROM (
        json_to_recordset($1::json) AS ({_PG_JSON_COLUMNS}),
        unnest($2::bytea[])
    ) AS t({", ".join(ALERT_COLUMNS)})
), ins AS (
    INSERT INTO alerts ({", ".join(ALERT_COLUMNS)})
    SELECT {", ".join(ALERT_COLUMNS)} FROM src
    ON CONFLICT (id) DO NOTHING
    RETURNING id
), queued AS (
    {queue.pg_insert_jobs("$3::json", where="new_jobs.tag IN (SELECT id FROM ins)")}
    RETURNING 1
), woke AS (
    SELECT pg_notify('{queue.NOTIFY_CHANNEL}', '') WHERE EXISTS (SELECT 1 FROM queued)
)
SELECT id, (SELECT count(*) FROM woke) AS woke FROM ins
"""  # noqa: S608 - the channel name is a constant


def _no_body(value: Any) -> None:
    """orjson's fallback: a row's `body` (bytes) travels apart, in the bytea array; the JSON has it null."""
    if isinstance(value, bytes):
        return None
    raise TypeError(f"{type(value).__name__} is not JSON")


class PostgresBatchWriter:
    """Its own asyncpg connection (reconnected after a failure), one statement per batch."""

    def __init__(self, dsn: str, *, statement_cache_size: int = 100) -> None:
        self._dsn = dsn
        self._statement_cache_size = statement_cache_size
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()

    async def write(self, rows: list[dict[str, Any]], now: float) -> set[str]:
        # json_to_recordset reads the row's columns by name and ignores the rest (`body`, `traceparent`).
        alerts_json = orjson.dumps(rows, default=_no_body).decode()
        bodies = [row["body"] for row in rows]
        jobs_json = orjson.dumps(_tagged_jobs(_pending(rows), now)).decode()
        async with self._lock:  # one statement at a time on one connection
            conn = await self._connection()
            try:
                result = await conn.fetch(PG_BATCH, alerts_json, bodies, jobs_json, timeout=10)
            except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError):
                await self._drop()
                raise
        return {r["id"] for r in result}

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(
                self._dsn, timeout=CONNECT_TIMEOUT_S, statement_cache_size=self._statement_cache_size
            )
        return self._conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


def batch_writer_for(database_url: str, sqlite_synchronous: str = "full") -> BatchWriter:
    if database_url.startswith("sqlite"):
        path = database_url.split(":///", 1)[1].split("?", 1)[0]
        if not path or path == ":memory:" or "mode=memory" in database_url:
            # The writer's own connection would open a private database that nobody else ever reads.
            raise ValueError("the webhook receiver needs an SQLite file, not an in-memory database")
        return SqliteBatchWriter(path, sqlite_synchronous)
    # The engine's URL says whether PgBouncer is in between (service.db: its statement cache is off).
    url = sa.make_url(database_url)
    dsn = url.difference_update_query([PGBOUNCER_QUERY]).set(drivername="postgresql")
    return PostgresBatchWriter(dsn.render_as_string(hide_password=False),
                               statement_cache_size=0 if behind_pgbouncer(url) else 100)  # fmt: skip
