"""The one database: table definitions (SQLAlchemy Core) and engine set-up for SQLite and PostgreSQL.

Times are stored as UNIX seconds (double precision) so that SQL comparisons behave the same on both
backends and every clock can be injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

import orjson
import sqlalchemy as sa
import structlog
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.settings import Settings
from service.sqlite_driver import OneHopConnection, inline_dbapi, one_hop_dbapi

SQLITE_BUSY_TIMEOUT_MS = 10_000

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only aliases the rowid (and so autoincrements) for a column typed exactly INTEGER.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("id", sa.String(255), primary_key=True),  # the delivery id
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("type", sa.String(255), nullable=False),
    sa.Column("shape", sa.String(16), nullable=False),
    sa.Column("company_id", sa.String(255)),
    sa.Column("connection_id", sa.String(255)),
    sa.Column("dataset_id", sa.String(255)),
    sa.Column("dataset_status", sa.String(255)),
    sa.Column("data_types", sa.JSON, nullable=False),
    sa.Column("generated_at", sa.Double),
    sa.Column("received_at", sa.Double, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Index(None, "received_at"),
    sa.Index(None, "company_id", "received_at"),
    sa.Index(None, "status", "received_at"),
    # Alert search (service/alert_search.py): the exact filters. Text in the body is indexed apart, after
    # the acknowledgement (`alert_texts` below), so nothing on this table slows the webhook's insert.
    sa.Index(None, "dataset_id", "received_at"),
    sa.Index(None, "type", "received_at"),
)

# Alert search's text index, filled by the indexer job (service/alert_index.py) from a watermark, not by the
# webhook's insert. One row per indexed alert, gone with its alert (PostgreSQL: the cascade; SQLite: the
# trigger of migration 0013, which also takes the alert's text out of the FTS5 table `alert_texts_fts`).
# `text` is the body as PostgreSQL's `encode(body, 'escape')` renders it, under a pg_trgm GIN index
# (migration 0013, outside this metadata); on SQLite it stays NULL: the text is in the FTS5 table only.
alert_texts = sa.Table(
    "alert_texts",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),  # SQLite: the FTS5 rowid, stable under VACUUM
    sa.Column("alert_id", sa.String(255), sa.ForeignKey("alerts.id", ondelete="CASCADE"), nullable=False),
    sa.Column("received_at", sa.Double, nullable=False),
    sa.Column("text", sa.Text),
    sa.UniqueConstraint("alert_id"),
)

# Where the indexer is: every alert at or before (received_at, alert_id) is in `alert_texts`; search scans
# the alerts after it. One row (id 1), written by service/alert_index.py only.
alert_text_watermark = sa.Table(
    "alert_text_watermark",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("received_at", sa.Double, nullable=False),
    sa.Column("alert_id", sa.String(255), nullable=False),
)

ACTIVE_JOBS = sa.text("status IN ('waiting', 'running')")

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("lock_key", sa.String(512)),
    sa.Column("queueing_lock", sa.String(512)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("run_at", sa.Double, nullable=False),
    sa.Column("lease_expires_at", sa.Double),
    sa.Column("worker_id", sa.String(128)),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("started_at", sa.Double),
    sa.Column("finished_at", sa.Double),
    sa.Index(None, "status", "run_at"),
    sa.Index(None, "lock_key", "id"),
    # At most one *waiting* job per queueing lock: a burst of identical requests collapses into one.
    sa.Index(
        "uq_jobs_waiting_queueing_lock",
        "queueing_lock",
        unique=True,
        postgresql_where=sa.text("status = 'waiting'"),
        sqlite_where=sa.text("status = 'waiting'"),
    ),
    # Active jobs only, so that claiming costs what the backlog costs, not the done history.
    sa.Index("ix_jobs_active_id", "id", postgresql_where=ACTIVE_JOBS, sqlite_where=ACTIVE_JOBS),
    sa.Index("ix_jobs_active_lock_key", "lock_key", "id", postgresql_where=ACTIVE_JOBS, sqlite_where=ACTIVE_JOBS),
)


notifications = sa.Table(
    "notifications",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("company_id", sa.String(255)),
    sa.Column("data_type", sa.String(64)),
    sa.Column("dataset_id", sa.String(255)),
    sa.Column("dedupe_key", sa.String(255), nullable=False),
    sa.Column("summary", sa.Text, nullable=False),
    sa.Column("details", sa.JSON, nullable=False),
    sa.Column("occurred_at", sa.Double, nullable=False),
    # The problem this message is about (service/problems.py), and whether it opened it or resolved it.
    sa.Column("problem_id", sa.String(32)),
    sa.Column("event", sa.String(16), nullable=False, server_default="opened"),
    sa.Index(None, "company_id", "occurred_at"),
    sa.Index(None, "occurred_at"),
)

# One row per problem (kind, company, subject — the notification's dedupe key) from when it opens until
# it resolves by itself; service/problems.py owns it. At most one unresolved row per key.
OPEN_PROBLEM = sa.text("resolved_at IS NULL")

problems = sa.Table(
    "problems",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("company_id", sa.String(255)),
    sa.Column("subject", sa.String(255), nullable=False),
    sa.Column("key", sa.String(255), nullable=False),
    sa.Column("data_type", sa.String(64)),
    sa.Column("summary", sa.Text, nullable=False),
    sa.Column("opened_at", sa.Double, nullable=False),
    sa.Column("last_seen_at", sa.Double, nullable=False),
    sa.Column("acknowledged_at", sa.Double),
    sa.Column("acknowledged_by", sa.String(255)),
    sa.Column("resolved_at", sa.Double),
    sa.Column("count", sa.Integer, nullable=False, server_default="1"),
    sa.Index("ix_problems_open_key", "key", unique=True, postgresql_where=OPEN_PROBLEM, sqlite_where=OPEN_PROBLEM),
    sa.Index(None, "key", "resolved_at"),
    sa.Index(None, "company_id", "kind"),
    sa.Index(None, "kind", "subject"),
    sa.Index(None, "opened_at"),
)

# A bulk replay (alerts) or bulk retry (dead jobs) under way or done (service/replays.py owns it): its
# filter, and a cursor — the (time, id) of the last item acted on — so a rerun with its id continues.
replay_runs = sa.Table(
    "replay_runs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("target", sa.String(16), nullable=False),
    sa.Column("filters", sa.JSON, nullable=False),
    sa.Column("cursor_at", sa.Double),
    sa.Column("cursor_id", sa.String(255)),
    sa.Column("done", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("finished_at", sa.Double),
)

# One row per problem: when it was last told. Deduplication is one atomic upsert on this key.
notification_dedupe = sa.Table(
    "notification_dedupe",
    metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("last_sent_at", sa.Double, nullable=False),
)


# -- Codat's rate-limit budget, shared by every process (service/budget.py is the only writer) ------------

# Per company, RELAY_CODAT_COMPANY_CONCURRENCY numbered slots; a request holds one until it ends, under a
# lease (`expires_at`) so that a crashed process frees its slots by itself. A free slot has expired.
codat_slots = sa.Table(
    "codat_slots",
    metadata,
    sa.Column("key", sa.String(255), primary_key=True),  # keys.codat_budget_key
    sa.Column("slot", sa.Integer, primary_key=True),
    sa.Column("holder", sa.String(64)),
    sa.Column("expires_at", sa.Double, nullable=False),
)

# One row (id 1): the client's daily quota as Codat last told it (X-Rate-Limit-*, client.rateLimit.*),
# counted down locally by every request sent, so that no process sends past a quota another one spent.
codat_quota = sa.Table(
    "codat_quota",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("daily_limit", sa.Integer),
    sa.Column("remaining", sa.Integer),
    sa.Column("reset_at", sa.Double),  # when the quota resets; past it, what we knew says nothing
    sa.Column("updated_at", sa.Double),
    sa.Column("probe_until", sa.Double),  # while the quota is unknown, one request probes it alone
    sa.Column("routine_after", sa.Double),  # while it thins, the next routine call waits until then
)

# A company Codat answered 429: none of its calls go before `not_before` (its Retry-After), from any process.
codat_company_waits = sa.Table(
    "codat_company_waits",
    metadata,
    sa.Column("key", sa.String(255), primary_key=True),  # keys.codat_budget_key
    sa.Column("not_before", sa.Double, nullable=False),
)


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


POOL_HEADROOM = 4  # connections beyond the worker concurrency: claims, completions, heartbeats, requests


PGBOUNCER_QUERY = "prepared_statement_cache_size"  # `=0` on a database URL: PgBouncer is in between


def behind_pgbouncer(url: str | sa.URL) -> bool:
    """Whether a database URL goes through PgBouncer's transaction pooling (what `create_engine` makes
    of RELAY_DATABASE_PGBOUNCER, or the URL's own `?prepared_statement_cache_size=0`)."""
    return sa.make_url(url).query.get(PGBOUNCER_QUERY) == "0"


def pgbouncer_connect_args(settings: Settings) -> dict[str, Any]:
    """asyncpg arguments for PgBouncer's transaction pooling (RELAY_DATABASE_PGBOUNCER).

    PgBouncer 1.18 (Debian 12) hands each transaction whichever server connection is free, so a statement
    prepared in one transaction may not exist in the next: asyncpg must not cache them, and each one gets
    a name of its own, so two clients' statements never collide on one server connection.
    """
    if not (settings.database_pgbouncer or behind_pgbouncer(settings.database_url)):
        return {}
    return pgbouncer_driver_args()


def pgbouncer_driver_args() -> dict[str, Any]:
    """asyncpg's arguments behind PgBouncer's transaction pooling, whoever makes the connection (the engine,
    the migrations)."""
    return {"statement_cache_size": 0, "prepared_statement_name_func": lambda: f"__relay_{uuid.uuid4().hex}__"}


def database_url(settings: Settings) -> str:
    """RELAY_DATABASE_URL, marked `?prepared_statement_cache_size=0` when RELAY_DATABASE_PGBOUNCER says PgBouncer
    is in between: whoever connects with it (the engine, the migrations) then knows."""
    if not settings.database_pgbouncer or settings.is_sqlite:
        return settings.database_url
    url = sa.make_url(settings.database_url).update_query_dict({PGBOUNCER_QUERY: "0"})
    return url.render_as_string(hide_password=False)


# How long closing the engine's pooled connections may take at shutdown (`dispose`).
DISPOSE_S = 5.0


async def dispose(engine: AsyncEngine, timeout_s: float = DISPOSE_S) -> bool:
    """`engine.dispose()`, bounded; whether it finished in time.

    asyncpg closes a connection gracefully (Terminate, then waits for the server to hang up): on a database or
    network gone silent, sockets still open, each waits for the driver's own timeout, and a pool's worth of
    them one after the other held a stopping process far longer than any orchestrator's grace period. What
    is left unclosed is closed by the operating system as the process exits; the server drops the sessions.
    """
    try:
        async with asyncio.timeout(timeout_s):
            await engine.dispose()
    except TimeoutError:
        structlog.get_logger("service.db").warning("engine_dispose_timed_out", timeout_s=timeout_s)
        return False
    return True


def create_engine(settings: Settings, **kwargs: Any) -> AsyncEngine:
    """The process's engine; on SQLite, WAL with `BEGIN IMMEDIATE` for write transactions."""
    # Every running job may hold a connection, and the worker's own claim/complete and the ingest writer
    # need theirs: a pool smaller than that churns overflow connections (on PostgreSQL a TCP+TLS
    # handshake and a cold statement cache each time, on SQLite a new thread and connection; measured at
    # an eighth of the worker's CPU at 32 concurrent jobs).
    # orjson for JSON columns (job payloads, alert data types): stdlib json was a twentieth of a no-op job.
    kwargs.setdefault("json_serializer", _json_dumps)
    kwargs.setdefault("json_deserializer", orjson.loads)
    pool_size = max(settings.db_pool_size, settings.worker_concurrency + POOL_HEADROOM)
    if ":memory:" not in settings.database_url:  # an in-memory database has one static connection
        kwargs.setdefault("pool_size", pool_size)
        kwargs.setdefault("max_overflow", pool_size)
    if settings.is_sqlite:
        if sa.make_url(settings.database_url).get_driver_name() == "aiosqlite":
            kwargs.setdefault("module", one_hop_dbapi())  # one thread hop per statement, not three or four
        engine = create_async_engine(settings.database_url, **kwargs)
        _configure_sqlite(engine, settings.sqlite_synchronous)
        return engine
    kwargs.setdefault("pool_recycle", 1800)
    kwargs.setdefault("pool_timeout", 5)
    kwargs.setdefault("connect_args", {"timeout": 5, "command_timeout": 30, **pgbouncer_connect_args(settings)})
    # Behind PgBouncer, SQLAlchemy's own cache of prepared statements, per connection, is off as asyncpg's is.
    engine = create_async_engine(database_url(settings), **kwargs)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        options = conn.get_execution_options()
        if options.get("relaxed") and not options.get("relaxed_in_statements"):
            # Bookkeeping commits need not wait for the WAL flush (see `bookkeeper`).
            conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")

    return engine


@functools.cache
def sqlite_insert_rows(table: str, columns: tuple[str, ...], count: int) -> str:
    """sqlite3 text inserting `count` rows of `columns` into `table` in ONE statement (their values flattened,
    row after row): the raw batch writers' inserts, one statement per table instead of a step per row."""
    row = "(" + ",".join("?" * len(columns)) + ")"
    return f"INSERT INTO {table} ({','.join(columns)}) VALUES {','.join([row] * count)}"  # noqa: S608 - fixed columns


SYNCHRONOUS_INFO = "relay_sqlite_synchronous"  # a connection's current `PRAGMA synchronous`, in its record's info


def _configure_sqlite(engine: AsyncEngine, synchronous: str) -> None:
    durable = synchronous.upper()
    dialect = engine.sync_engine.dialect
    # A rollback with no transaction open at SQLite's level (after a `reader` block, or a pooled connection's
    # reset on return) does nothing but costs aiosqlite a hop to its thread and back: skip exactly those.
    # SQLAlchemy's own test of "autocommit" (`isolation_level is None`) would be true of every connection
    # here, writers included, so it is replaced by SQLite's answer: is a transaction open on this connection.
    dialect.skip_autocommit_rollback = True
    dialect.detect_autocommit_setting = _outside_transaction  # type: ignore[method-assign,assignment]

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        # Take transaction control from the driver so that BEGIN IMMEDIATE can be issued below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL (default): a commit survives power loss too; NORMAL: it survives the process being killed.
        cursor.execute(f"PRAGMA synchronous={durable}")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
        record.info[SYNCHRONOUS_INFO] = durable

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers take the write lock up front: a deferred transaction that later writes can fail
        # with SQLITE_BUSY instead of waiting for the lock.
        options = conn.get_execution_options()
        if options.get("sqlite_autocommit"):
            return  # `reader`: every statement on its own, no BEGIN/ROLLBACK round trips
        wanted = "NORMAL" if options.get("relaxed") else durable if options.get("sqlite_immediate") else None
        info = conn.connection.info
        if wanted is not None and info.get(SYNCHRONOUS_INFO) != wanted:
            # Only when it changes: each statement is a round trip to aiosqlite's thread, and a worker's
            # rounds (NORMAL) outnumber the durable writes (FULL) on a connection many times over.
            conn.exec_driver_sql(f"PRAGMA synchronous={wanted}")
            info[SYNCHRONOUS_INFO] = wanted
        begin = "BEGIN IMMEDIATE" if options.get("sqlite_immediate") else "BEGIN"
        driver = conn.connection.dbapi_connection
        if isinstance(driver, OneHopConnection):
            driver.defer_begin(begin)  # sent with the first statement, in its hop
        else:
            conn.exec_driver_sql(begin)


def _outside_transaction(dbapi_connection: Any) -> bool:
    """Whether no transaction is open on an SQLite connection (aiosqlite reads it without its thread).
    A BEGIN still deferred (a transaction that ran no statement) counts as open: the rollback forgets it,
    without a hop, so that the next user of the connection does not send it."""
    if getattr(dbapi_connection, "deferred_begin", None) is not None:
        return False
    return not dbapi_connection.driver_connection.in_transaction


_VARIANTS: weakref.WeakKeyDictionary[AsyncEngine, dict[str, AsyncEngine]] = weakref.WeakKeyDictionary()


def _variant(engine: AsyncEngine, name: str, **options: Any) -> AsyncEngine:
    """`engine.execution_options(**options)`, made once per engine: making one registers event
    listeners and copies the engine's options, which cost more than the statement on the job hot path."""
    variants = _VARIANTS.setdefault(engine, {})
    if name not in variants:
        variants[name] = engine.execution_options(**options)
    return variants[name]


# One lock per SQLite file per event loop (tests run many loops; an asyncio.Lock belongs to one).
_SQLITE_GATES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def sqlite_path(url: str | sa.URL) -> str | None:
    """The absolute path of an SQLite file database URL; None for anything else (PostgreSQL, in memory)."""
    database = _sqlite_database(url)
    return None if database is None else os.path.abspath(database)  # now: a relative path follows the cwd


@functools.lru_cache(maxsize=64)
def _sqlite_database(url: str | sa.URL) -> str | None:
    """The database of an SQLite file URL as written. Cached: parsing the URL was a share of every write
    turn and loop-thread read on SQLite (each asks this once)."""
    parsed = sa.make_url(url)
    if not parsed.drivername.startswith("sqlite") or not parsed.database or parsed.database == ":memory:":
        return None
    return parsed.database


@contextlib.asynccontextmanager
async def sqlite_write_turn(url: str | sa.URL) -> AsyncIterator[None]:
    """Wait for this process's turn to write an SQLite file (a no-op on PostgreSQL).

    SQLite has one writer at a time; a writer that finds the file locked waits in SQLite's busy handler,
    which sleeps 1, 2, 5, 10 … 100 ms between tries whatever the lock's holder does. Measured at 500
    deliveries/s (bench_e2e): the receiver's group commits and the worker's rounds, taking turns that
    way, spent a third of the time asleep (BEGIN IMMEDIATE p90 30 ms, p99 120 ms) and the workers fell
    behind. Within one process they queue here instead, each starting the moment the other commits.
    Other processes on the same file still meet the busy handler, as before.
    """
    path = sqlite_path(url)
    if path is None:
        yield
        return
    gates = _SQLITE_GATES.setdefault(asyncio.get_running_loop(), {})
    async with gates.setdefault(path, asyncio.Lock()):
        yield


def reader(engine: AsyncEngine) -> AsyncEngine:
    """For read-only blocks on hot paths: no transaction, so no BEGIN and ROLLBACK round trips.

    Each statement sees what was committed when it started, as under READ COMMITTED (PostgreSQL's
    level anyway); use a transaction where several reads must agree with each other.
    """
    if engine.dialect.name == "postgresql":
        return _variant(engine, "reader", isolation_level="AUTOCOMMIT")
    # Not SQLAlchemy's AUTOCOMMIT on SQLite: resetting it would hand transaction control back to the driver.
    return _variant(engine, "reader", sqlite_autocommit=True)


def writer(engine: AsyncEngine) -> AsyncEngine:
    """The same pool, but transactions begin with the write lock on SQLite (no-op elsewhere)."""
    return _variant(engine, "writer", sqlite_immediate=True)


def bookkeeper(engine: AsyncEngine) -> AsyncEngine:
    """A writer for the queue's own bookkeeping (claims, completions, alert statuses).

    Its commits do not wait for the disk (SQLite synchronous=NORMAL, PostgreSQL synchronous_commit off):
    losing one to a power cut or a crash of the database only makes a job run again, which
    at-least-once processing already allows, and the next durable commit (an acknowledgement) flushes
    the log it sits in anyway. Anything acknowledged to a client keeps using `writer`.
    """
    return _variant(engine, "bookkeeper", sqlite_immediate=True, relaxed=True)


def round_keeper(engine: AsyncEngine) -> AsyncEngine:
    """`bookkeeper` for the worker's round (service/queue.py `turn`), whose PostgreSQL statements relax
    their transaction's commit themselves (RELAX_COMMIT in their WHERE) instead of a `SET LOCAL` statement
    after BEGIN: a round trip fewer on every round. It is the same transaction-local setting (so PgBouncer's
    transaction pooling keeps it per transaction); a round whose statements changed no row may commit
    durably, which is never less safe, and its commit writes nothing worth waiting for anyway."""
    return _variant(engine, "round_keeper", sqlite_immediate=True, relaxed=True, relaxed_in_statements=True)


# -- SQLite: the worker's round on the event loop's own thread ---------------------------------------------

_Made = TypeVar("_Made")


class PerThread(Generic[_Made]):
    """One thing per (engine, thread), made on first use in that thread and closed when the engine is
    disposed: what the event loop's own thread uses of an SQLite file (`loop_engine`, hot_reads' reader)."""

    def __init__(self, close: Callable[[_Made], None]) -> None:
        self._close = close
        self._made: weakref.WeakKeyDictionary[AsyncEngine, dict[int, _Made]] = weakref.WeakKeyDictionary()

    def get(self, engine: AsyncEngine, make: Callable[[], _Made]) -> _Made:
        made = self._made.get(engine)
        if made is None:
            made = self._made[engine] = {}
            event.listen(engine.sync_engine, "engine_disposed", lambda _: self._close_all(made))
        thread = threading.get_ident()
        if (found := made.get(thread)) is None:
            found = made[thread] = make()
        return found

    def _close_all(self, made: dict[int, _Made]) -> None:
        while made:
            self._close(made.popitem()[1])


# Closed while the engine is disposed (AsyncEngine.dispose runs that in a greenlet, as these need).
_LOOP_ENGINES: PerThread[AsyncEngine] = PerThread(lambda found: found.sync_engine.dispose())


def loop_engine(engine: AsyncEngine) -> AsyncEngine | None:
    """For the worker's round on an SQLite file (service/queue.py `turn`): an engine of ONE connection, made on
    and used from this thread (the event loop's), whose statements run right there instead of on aiosqlite's
    thread. None for anything else (PostgreSQL, memory, another SQLite driver).

    On SQLite each statement's hop to its connection's thread and back was most of a round's cost (context
    switches: 20 a delivery at 500/s against PostgreSQL's 4, the loop pre-empted as the threads it wakes run).
    Nothing on this connection waits: SQLite's lock is answered busy at once (`busy_timeout=0`; the caller then
    takes the pooled path, which waits in its thread), its commits are the rounds' (synchronous=NORMAL: no
    fsync) and never checkpoint the WAL (`wal_autocheckpoint=0`: the pool's and the receiver's connections do).
    """
    if sqlite_path(engine.url) is None or engine.url.get_driver_name() != "aiosqlite":
        return None
    return _LOOP_ENGINES.get(engine, lambda: _make_loop_engine(engine))


def _make_loop_engine(engine: AsyncEngine) -> AsyncEngine:
    made = create_async_engine(
        engine.url, module=inline_dbapi(), pool_size=1, max_overflow=0, pool_timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
        json_serializer=_json_dumps, json_deserializer=orjson.loads,
    )  # fmt: skip
    _configure_sqlite(made, "NORMAL")  # only rounds run here, and they relax their commits anyway
    event.listen(made.sync_engine, "connect", _never_wait)
    return made


def _never_wait(dbapi_connection: Any, record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=0")
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()


# `SET LOCAL synchronous_commit TO OFF` as an expression: a volatile function, so PostgreSQL evaluates it for
# every row the statement's WHERE reaches; a statement that changed a row has run it.
RELAX_COMMIT = "set_config('synchronous_commit', 'off', true) IS NOT NULL"


# -- the push outbox (service/outbox.py, service/pusher.py, service/datasets.py) ----------------------

companies = sa.Table(
    "companies",
    metadata,
    sa.Column("id", sa.String(255), primary_key=True),
    sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("pause_reason", sa.String(64)),
    sa.Column("connection_id", sa.String(255)),
    sa.Column("connection_status", sa.String(64)),
    sa.Column("connection_deleted_at", sa.Double),
    # The newest connection event applied (events arrive out of order; an older one changes nothing).
    sa.Column("connection_event_at", sa.Double),
    sa.Column("last_sync_code", sa.Integer),
    sa.Column("last_sync_at", sa.Double),
    # When the latest *successful* sync started: records Codat held before then are in the books.
    sa.Column("last_sync_success_at", sa.Double),
    sa.Column("last_sync_checked_at", sa.Double),
    # Where the company's syncs reach: the latest `finish` of every successful sync (Codat's "last
    # successful sync" a `latest` sync starts from). A record dated before it that no sync covered is late.
    sa.Column("synced_through", sa.Double),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    # Codat's name of the company and its Sync for Commerce schedule (service/schedules.py writes these):
    # `next_sync_at` is when Codat will next sync it, `at_risk_sync_at` the sync staff were told was at risk.
    sa.Column("name", sa.String(255)),
    sa.Column("sync_frequency", sa.String(16)),
    sa.Column("sync_hour", sa.Integer),
    sa.Column("sync_time_zone", sa.String(64)),
    sa.Column("sync_start_date", sa.Double),
    sa.Column("schedule_fetched_at", sa.Double),
    sa.Column("schedule_error", sa.Text),
    sa.Column("next_sync_at", sa.Double),
    sa.Column("at_risk_sync_at", sa.Double),
)

# Every sync the relay knows of, with the date range it covers (service/coverage.py). A sync the relay
# started has the range of Codat's `SyncSummary.syncDateRangeUtc`; one it learnt of from sync status (a
# scheduled sync) covers from the previous successful sync's end to its `syncUtc`. `start` NULL: unbounded.
syncs = sa.Table(
    "syncs",
    metadata,
    sa.Column("id", sa.String(255), primary_key=True),  # Codat's commerceSyncId (or syncId)
    sa.Column("company_id", sa.String(255), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # latest | historic | scheduled (not started by us)
    sa.Column("range_start", sa.Double),
    sa.Column("range_finish", sa.Double, nullable=False),
    sa.Column("sync_utc", sa.Double),
    sa.Column("code", sa.Integer),
    sa.Column("requested_at", sa.Double, nullable=False),
    sa.Column("applied_at", sa.Double),  # its records were marked synced (once, on success)
    sa.Index(None, "company_id", "sync_utc"),
)

# The latest version of every record the merchant's platform handed us, and where it stands with Codat.
# `body` is canonical JSON, pushed as stored. `pushed_*` is the version last sent, `accepted_*` the version
# Codat holds (its dataset ended Complete at `accepted_at`), `synced_*` the version the books hold and
# `synced_at` when they took it. Only service/record_states.py writes this table.
records = sa.Table(
    "records",
    metadata,
    sa.Column("company_id", sa.String(255), primary_key=True),
    sa.Column("data_type", sa.String(32), primary_key=True),
    sa.Column("record_id", sa.String(255), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("content_hash", sa.String(32), nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("is_delete", sa.Boolean, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    # In a push whose dataset is not yet terminal: a newer version waits, so two datasets never race.
    sa.Column("inflight", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("push_id", sa.String(36)),
    sa.Column("pushed_version", sa.Integer),
    sa.Column("pushed_hash", sa.String(32)),
    sa.Column("dataset_id", sa.String(255)),
    sa.Column("accepted_version", sa.Integer),
    sa.Column("accepted_hash", sa.String(32)),
    sa.Column("accepted_at", sa.Double),
    sa.Column("synced_at", sa.Double),
    # The version the books hold, set once by the sync that took it: a later `accepted_*` never erases it.
    sa.Column("synced_hash", sa.String(32)),
    sa.Column("synced_version", sa.Integer),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    # Re-pushes of this record's failed datasets since it last reached Codat (RELAY_REPUSH_MAX_ATTEMPTS).
    sa.Column("repush_count", sa.Integer, nullable=False, server_default="0"),
    # The `createdDate` of the latest version (Unix seconds), the date a sync's range is matched on;
    # NULL (no createdDate, or stored before migration 0011) counts as covered by every sync.
    sa.Column("record_date", sa.Double),
    # When staff were told this record reached Codat too late for any `latest` sync (told once).
    sa.Column("late_told_at", sa.Double),
    # Serves the pusher's keyset scan: pending records of one company and data type, by id. Partial, so
    # it stays small and a lookup by id never uses it: with `record_id IN (…)` as a filter over all of a
    # company's rows, PostgreSQL's generic plans turned each intake into a scan (seconds per 5,000).
    sa.Index(
        "ix_records_pending", "company_id", "data_type", "record_id",
        postgresql_where=sa.text("state = 'pending'"), sqlite_where=sa.text("state = 'pending'"),
    ),
    # Records the books hold no version of, by date: what a sync may cover, and what is late. Partial,
    # so a sync's marking reads the few records not yet in the books, never all of a company's.
    sa.Index(
        "ix_records_unbooked", "company_id", "data_type", "record_date",
        postgresql_where=sa.text("synced_hash IS NULL"), sqlite_where=sa.text("synced_hash IS NULL"),
    ),
    # A push's records, found by the push alone: every per-dataset update is index-driven at any size.
    sa.Index(None, "push_id"),
)

datasets = sa.Table(
    "datasets",
    metadata,
    sa.Column("id", sa.String(255), primary_key=True),  # Codat's datasetId
    sa.Column("company_id", sa.String(255), nullable=False),
    sa.Column("data_type", sa.String(32), nullable=False),
    sa.Column("push_id", sa.String(36)),
    sa.Column("record_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("error_message", sa.Text),
    sa.Column("terminal", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("requested_at", sa.Double, nullable=False),
    sa.Column("completed_at", sa.Double),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("polls", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_poll_at", sa.Double),
    sa.Column("repush_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("repush_of", sa.String(255)),
    # When the last question to Codat about this dataset was sent (handlers/dataset_status.py): an alert
    # that arrived before it is answered by it, and asks nothing again.
    sa.Column("checked_at", sa.Double),
    sa.Index(None, "company_id", "requested_at"),
    sa.Index(None, "terminal", "next_poll_at"),
    sa.Index(None, "terminal", "updated_at"),  # the retention prune's scan of old finished datasets
)

# Every push: its id is the Idempotency-Key, and `payload` is kept until the outcome is recorded, so a
# re-run after a crash sends the same bytes under the same key and Codat answers from its cache.
pushes = sa.Table(
    "pushes",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("company_id", sa.String(255), nullable=False),
    sa.Column("data_type", sa.String(32), nullable=False),
    sa.Column("dataset_id", sa.String(255)),
    sa.Column("record_count", sa.Integer, nullable=False),
    sa.Column("payload", sa.LargeBinary),
    sa.Column("reason", sa.String(16), nullable=False),
    sa.Column("started_at", sa.Double, nullable=False),
    sa.Column("finished_at", sa.Double),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("idempotency_key", sa.String(36)),  # this attempt's key; NULL: the push's id (the first's)
    sa.Index(None, "company_id", "data_type", "started_at"),
    sa.Index(None, "started_at"),  # the retention prune's scan of old pushes
)

# Which version (and content) of which record went into which push (and so into which dataset): a sync
# learnt of late asks it which version Codat held when the sync started.
push_records = sa.Table(
    "push_records",
    metadata,
    sa.Column("push_id", sa.String(36), primary_key=True),
    sa.Column("record_id", sa.String(255), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("content_hash", sa.String(32)),
    sa.Index(None, "record_id"),
)

# Sign-in sessions of the Sync Health page (service/sessions.py owns it): a session is valid while its
# row exists, so signing out ends it on the server, not only in the browser.
ui_sessions = sa.Table(
    "ui_sessions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # sha256 of the cookie's nonce, never the nonce
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False),
    sa.Index(None, "expires_at"),
)


# One line per company purge (service/purge.py owns it): who asked, when, and how many rows of each table
# went. It holds the company's id and nothing else of its data: the audit trail a GDPR request asks for.
purges = sa.Table(
    "purges",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("company_id", sa.String(255), nullable=False),
    sa.Column("requested_by", sa.String(255), nullable=False),
    sa.Column("requested_at", sa.Double, nullable=False),
    sa.Column("finished_at", sa.Double, nullable=False),
    sa.Column("counts", sa.JSON, nullable=False),
    sa.Index(None, "company_id"),
)
