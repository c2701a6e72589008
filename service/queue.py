"""The durable job queue: storage operations only. The worker (service/worker.py) decides, this writes.

Every transition of a claimed job is fenced by `(id, attempts)`: a worker whose lease expired and whose
job was claimed again cannot complete, fail or release the newer attempt.
"""

from __future__ import annotations

import enum
import re
import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import asyncpg
import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.sqlite.aiosqlite import AsyncAdapt_aiosqlite_connection
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import keys, sqlite_driver, tracing
from service.db import (
    RELAX_COMMIT,
    bookkeeper,
    jobs,
    loop_engine,
    reader,
    round_keeper,
    sqlite_insert_rows,
    sqlite_write_turn,
    writer,
)

ALERT_JOB_KIND = "alert"  # processes one stored alert (service/dispatch.py); the webhook receiver queues it
NOTIFY_CHANNEL = "relay_jobs"
LEASE_LOST = "lease expired: the worker running this job was lost"
MAX_ERROR_CHARS = 4_000
# The periodic retention prune (service/retention.py); named when it pruned only jobs, and kept so a job of
# this kind still waiting in a database from before runs under the new code.
PRUNE_KIND = "prune_jobs"
# The last error of a job waiting on Codat's rate-limit budget starts so (`defer`), so that the quota's
# reset can bring exactly those jobs forward (`resume_deferred`) and metrics can count them.
DEFERRED_PREFIX = "deferred: "


class JobStatus(enum.StrEnum):
    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"
    DEAD = "dead"


_WAITING: str = JobStatus.WAITING.value  # `.value` on an enum costs about a microsecond, once per delivery


@dataclass(frozen=True)
class Job:
    """One claimed job; `attempts` counts this run (1 on the first)."""

    id: int
    kind: str
    payload: Mapping[str, Any]
    lock_key: str | None
    queueing_lock: str | None
    attempts: int
    run_at: float
    created_at: float
    last_error: str | None = None


# Per-key order, and why it holds under READ COMMITTED with several claimers:
# a waiting job J of key K is claimable only if no other job of K is running (live lease) and none
# with a smaller id is waiting or running. J1 < J2 of one key: while J1 is waiting or running, every
# snapshot shows it so, and J2 is excluded; J1 stops blocking only once its `done`/`dead` commits, and
# no later transition brings a finished job back. Two claimers reaching for J1 meet at its row lock:
# SKIP LOCKED makes one pass over it, and a row another claimer committed meanwhile is re-checked by
# PostgreSQL against `status = 'waiting'` on its new version, so it is never taken twice. One claim can
# take at most one job per key, as the rule excludes all but the oldest. A retry puts J1 back to
# `waiting` with its old id, so J2 stays behind it through the backoff. The order is id order among
# committed rows: two transactions enqueueing one key concurrently are ordered by whichever commits
# first (a receiver process has one writer, so its ids and commit order agree; on PostgreSQL several
# receiver processes may write, and two deliveries of one company in flight at once, which arrived in
# no defined order, may then run in commit order; a job that becomes visible behind a running later one
# waits for it).
# The `status IN ('waiting', 'running')` terms repeat the partial indexes' predicate (db.py) so that
# both backends use them: done jobs never enter a claim's cost. "Oldest of its key" is a correlated
# `min()` (one index probe per candidate) rather than a NOT EXISTS: PostgreSQL flattens NOT EXISTS into
# an anti-join whose plan, on a table not yet analysed, rescans every active row per candidate
# (quadratic); the scalar subquery stays linear in the backlog whatever the statistics say.
# An expired lease makes a running job claimable again, as a new attempt (its worker is presumed dead;
# a job that kills its worker every time must end dead, see the worker) — and it still blocks the
# later jobs of its key, being running with a smaller id.
# On PostgreSQL the chosen ids are an array (`= ANY(ARRAY(…))`), so the update finds them through the
# primary key whatever the statistics say: as `id IN (…)` the planner made it a hash semi-join over a
# sequential scan of the whole table, done history included (1.2 of a claim's 2.3 ms at 5,000 rows).
# Two limits: the oldest `:limit` candidates are locked, and of them a keyed job is taken only among the
# first `:keyed_limit` (so keyed jobs are never claimed further ahead than with one limit of that size:
# workers share the heads of the keys), a keyless one anywhere (it has no order to keep; see the worker).
# The row lock sits on the innermost query, as PostgreSQL allows no FOR UPDATE beside a window function.
_CLAIM = """
UPDATE jobs SET status = 'running', attempts = attempts + 1, worker_id = :worker_id,
    started_at = :now, lease_expires_at = :lease_until,
    last_error = CASE WHEN status = 'running' THEN :lease_lost ELSE last_error END
WHERE id {chosen_open}
    SELECT w.id FROM (
    SELECT c.id, c.lock_key, row_number() OVER (ORDER BY c.id) AS n FROM (
    SELECT j.id, j.lock_key FROM jobs j
    WHERE j.status IN ('waiting', 'running')
      AND (j.status = 'waiting' AND j.run_at <= :now OR j.status = 'running' AND j.lease_expires_at < :now)
      AND (j.lock_key IS NULL OR (
          j.id = (SELECT min(k.id) FROM jobs k
                  WHERE k.lock_key = j.lock_key AND k.status IN ('waiting', 'running'))
          AND NOT EXISTS (SELECT 1 FROM jobs k
                  WHERE k.lock_key = j.lock_key AND k.status = 'running' AND k.id > j.id
                    AND k.lease_expires_at >= :now)))
    ORDER BY j.id LIMIT :limit {row_lock}
    ) AS c
    ) AS w WHERE w.lock_key IS NULL OR w.n <= :keyed_limit
{chosen_close}{relax}
RETURNING id, kind, payload, lock_key, queueing_lock, attempts, run_at, created_at, last_error
"""
_CLAIM_COLUMNS = [
    jobs.c[name]
    for name in (
        "id", "kind", "payload", "lock_key", "queueing_lock", "attempts", "run_at", "created_at", "last_error"
    )
]  # fmt: skip
# SQLite's key probes through the active-only index, named: with the full (lock_key, id) index beside it,
# SQLite took the full one for both (no statistics; it does not prove `status = 'running'` implies the
# partial index's predicate either), so "oldest of its key" walked the key's whole done history, a row
# lookup per done job: 3.35 ms a claim of 50 waiting jobs over 11,950 done in 50 keys, 0.36 ms so.
_SQLITE_KEY_PROBES = (  # (text, its replacement, how many times the claim has it)
    ("FROM jobs k", "FROM jobs k INDEXED BY ix_jobs_active_lock_key", 2),
    ("k.status = 'running'", "k.status IN ('waiting', 'running') AND k.status = 'running'", 1),
)


def _sqlite_claim() -> str:
    claim = _CLAIM.format(chosen_open="IN (", row_lock="", chosen_close=")", relax="")
    for old, new, count in _SQLITE_KEY_PROBES:
        if claim.count(old) != count:
            raise RuntimeError(f"the claim's text changed: look at SQLite's key probes again ({old!r})")
        claim = claim.replace(old, new)
    return claim


CLAIM_SQL = {
    # SQLite has one writer at a time (BEGIN IMMEDIATE), so it needs no row locks.
    "sqlite": sa.text(_sqlite_claim()).columns(*_CLAIM_COLUMNS),
}
# PostgreSQL's completion: one fixed statement (prepared once per connection) taking the fence's pairs as
# two arrays, instead of an `IN` list whose every length is a statement of its own to compile and plan.
# It also sends the round's NOTIFY (delivered at COMMIT, as the statement's was) when a job it finished had
# a lock key, the next job of that key being claimable now: a round trip fewer. The payload is the
# round's worker id, so that its own listener can skip it: the round's claim already saw the finish.
_PG_COMPLETE = f"""
UPDATE jobs SET status = 'done', finished_at = $1, lease_expires_at = NULL
FROM unnest($2::bigint[], $3::integer[]) AS fence(id, attempts)
WHERE jobs.id = fence.id AND jobs.attempts = fence.attempts AND jobs.status = 'running' AND {RELAX_COMMIT}
RETURNING jobs.id, CASE WHEN jobs.lock_key IS NOT NULL THEN pg_notify('{NOTIFY_CHANNEL}', $4) IS NOT NULL END
"""  # noqa: S608 - fixed text


def _positional(text: str, names: Sequence[str]) -> str:
    """asyncpg's text of a statement written with `:name` parameters: `$n` for the n-th of `names`."""
    return re.sub(r"(?<![:\w]):(\w+)", lambda m: f"${names.index(m.group(1)) + 1}", text)


_CLAIM_PARAMS = ("worker_id", "now", "lease_until", "lease_lost", "limit", "keyed_limit")
# PostgreSQL's claim, for asyncpg (the worker's round runs on the driver, see `turn`).
_PG_CLAIM = _positional(
    _CLAIM.format(chosen_open="= ANY(ARRAY(", row_lock="FOR UPDATE SKIP LOCKED", chosen_close="))",
                  relax=f" AND {RELAX_COMMIT}"),
    _CLAIM_PARAMS,
)  # fmt: skip


InTransaction = Callable[[AsyncConnection, list["Job"]], Awaitable[None]]
"""Work a caller folds into a queue statement's transaction: it commits or rolls back with it."""


def describe_error(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return text[:MAX_ERROR_CHARS]


def job_values(
    kind: str,
    payload: Mapping[str, Any],
    *,
    now: float,
    lock_key: str | None = None,
    queueing_lock: str | None = None,
    run_at: float | None = None,
) -> dict[str, Any]:
    """One row for `INSERT INTO jobs`, for callers that insert jobs in their own transaction.

    With tracing on, the payload carries the enqueuing span's trace context (`tracing.TRACE_KEY`), so the
    job's run joins the trace that asked for it."""
    payload = dict(payload)
    if (parent := tracing.traceparent()) is not None:
        payload.setdefault(tracing.TRACE_KEY, parent)
    return {
        "kind": kind,
        "payload": payload,
        "lock_key": lock_key,
        "queueing_lock": queueing_lock,
        "status": _WAITING,
        "attempts": 0,
        "run_at": now if run_at is None else run_at,
        "created_at": now,
    }


def alert_job(alert_id: str, company_id: str | None, *, now: float, traceparent: str | None = None) -> dict[str, Any]:
    """The job row that processes one stored alert: every alert job, however it is inserted, is built here.

    `traceparent`: the receiving request's trace context (the batch writer runs outside that request)."""
    payload = {"alert_id": alert_id} if traceparent is None else {"alert_id": alert_id, tracing.TRACE_KEY: traceparent}
    return job_values(ALERT_JOB_KIND, payload, now=now, lock_key=keys.alert_lock(company_id))


# The webhook receiver's batch writers (service/batch_writers.py) insert alert jobs through raw drivers,
# one statement per batch, for speed; the statements they run are these, so `jobs` keeps one writer.
# `_PG_JSON_TYPES`: each column's type as PostgreSQL reads it out of a JSON row (`pg_insert_jobs`).
RAW_JOB_COLUMNS = ("kind", "payload", "lock_key", "queueing_lock", "status", "attempts", "run_at", "created_at")
_PG_JSON_TYPES = ("text", "json", "text", "text", "text", "int", "float8", "float8")


def sqlite_insert_jobs(count: int) -> str:
    """sqlite3 text inserting `count` `raw_job` rows in one statement (their values flattened, in order)."""
    return sqlite_insert_rows("jobs", RAW_JOB_COLUMNS, count)


def raw_job(values: Mapping[str, Any]) -> tuple[Any, ...]:
    """A `job_values` row as a raw driver takes it: RAW_JOB_COLUMNS in order, the payload as JSON text."""
    # Spelled out rather than looped over RAW_JOB_COLUMNS: this runs once per delivery on the hot path.
    return (
        values["kind"], orjson.dumps(values["payload"]).decode(), values["lock_key"], values["queueing_lock"],
        values["status"], values["attempts"], values["run_at"], values["created_at"],
    )  # fmt: skip


def pg_insert_jobs(source: str, *, where: str) -> str:
    """asyncpg text (for a data-modifying CTE) inserting `job_values` rows, each with a `tag` added, from the
    JSON array `source` (an SQL expression). Only the rows for which `where` holds (it may name
    `new_jobs.tag`) are inserted, in the array's order, so ids follow it. JSON rather than one array
    parameter per column: asyncpg encodes an array element by element in Python, orjson a batch at once."""
    names = ", ".join((*RAW_JOB_COLUMNS, "tag"))
    typed = ", ".join(f"{c} {t}" for c, t in zip((*RAW_JOB_COLUMNS, "tag"), (*_PG_JSON_TYPES, "text"), strict=True))
    selected = ", ".join(f"new_jobs.{c}" for c in RAW_JOB_COLUMNS)
    return (
        f"INSERT INTO jobs ({', '.join(RAW_JOB_COLUMNS)}) SELECT {selected} "  # noqa: S608 - fixed text
        f"FROM ROWS FROM (json_to_recordset({source}) AS ({typed})) WITH ORDINALITY AS new_jobs({names}, pos) "
        f"WHERE {where} ORDER BY new_jobs.pos"
    )


async def notify(conn: AsyncConnection) -> None:
    """Wake listening workers when `conn`'s transaction commits (PostgreSQL; a no-op on SQLite)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(sa.text(f"NOTIFY {NOTIFY_CHANNEL}"))


async def enqueue(
    target: AsyncConnection | AsyncEngine,
    kind: str,
    payload: Mapping[str, Any],
    *,
    now: float,
    lock_key: str | None = None,
    queueing_lock: str | None = None,
    run_at: float | None = None,
) -> int | None:
    """Add a job and return its id; None when a waiting job already holds `queueing_lock`."""
    values = job_values(kind, payload, now=now, lock_key=lock_key, queueing_lock=queueing_lock, run_at=run_at)
    if isinstance(target, AsyncEngine):
        async with writer(target).begin() as conn:
            return await enqueue_row(conn, values)
    return await enqueue_row(target, values)


async def enqueue_row(conn: AsyncConnection, values: Mapping[str, Any]) -> int | None:
    """`enqueue` for a row already built (`job_values`, `alert_job`), in the caller's transaction."""
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    # No conflict target: the only unique constraint a new row can meet is the waiting queueing lock.
    statement = insert(jobs).values(dict(values)).on_conflict_do_nothing().returning(jobs.c.id)
    job_id: int | None = (await conn.execute(statement)).scalar_one_or_none()
    if job_id is not None:
        await notify(conn)
    return job_id


async def insert_many(conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Bulk-load built rows (`job_values`) in the caller's transaction (benchmarks, tests); their ids, in order.

    Unlike `enqueue` it sends no NOTIFY (call `notify` to wake workers) and skips no duplicate: a row
    whose queueing lock a waiting job holds fails the whole statement.
    """
    if not rows:
        return []
    statement = jobs.insert().returning(jobs.c.id, sort_by_parameter_order=True)
    return list((await conn.execute(statement, [dict(row) for row in rows])).scalars())


async def bring_forward(conn: AsyncConnection, queueing_lock: str, run_at: float) -> bool:
    """The waiting job holding `queueing_lock` runs no later than `run_at`; False when none waits later."""
    result = await conn.execute(
        jobs.update()
        .where(jobs.c.queueing_lock == queueing_lock, jobs.c.status == JobStatus.WAITING.value,
               jobs.c.run_at > run_at)
        .values(run_at=run_at)
    )  # fmt: skip
    return bool(result.rowcount)


async def cancel_waiting(conn: AsyncConnection, kind: str, lock_keys: Sequence[str]) -> int:
    """Delete the waiting jobs of `kind` holding one of `lock_keys` (exact keys); returns how many.

    Running jobs are left to finish: their workers hold them, and a deleted running row would let the
    next job of its key start beside it.
    """
    result = await conn.execute(
        jobs.delete().where(jobs.c.kind == kind, jobs.c.status == JobStatus.WAITING.value,
                            jobs.c.lock_key.in_(list(lock_keys)))
    )  # fmt: skip
    return int(result.rowcount)


async def supersede_dead_alert(conn: AsyncConnection, alert_id: str, *, by_job: int | None, reason: str,
                               now: float) -> int:  # fmt: skip
    """The dead jobs of one alert end `done`, their errors kept and noting the job that does their work now."""
    result = await conn.execute(
        jobs.update()
        .where(jobs.c.kind == ALERT_JOB_KIND, jobs.c.status == JobStatus.DEAD.value,
               jobs.c.payload["alert_id"].as_string() == alert_id)
        .values(status=JobStatus.DONE.value, finished_at=now,
                last_error=sa.func.coalesce(jobs.c.last_error, "") + f" (superseded by job {by_job}: {reason})")
    )  # fmt: skip
    return int(result.rowcount)


async def retry_dead(conn: AsyncConnection, job_id: int, now: float) -> bool:
    """A dead job waits again, to run now as itself (same id, payload and lock key), attempts from zero;
    its last error is kept until the next run. False when it is not dead.

    Raises IntegrityError when a waiting job holds its queueing lock: that job does the same work, and
    the caller ends this one with `close_dead` (in a new transaction, as the failed statement ends this one).
    """
    result = await conn.execute(
        jobs.update()
        .where(jobs.c.id == job_id, jobs.c.status == JobStatus.DEAD.value)
        .values(status=JobStatus.WAITING.value, attempts=0, run_at=now, finished_at=None, started_at=None,
                worker_id=None, lease_expires_at=None)
    )  # fmt: skip
    await notify(conn)
    return bool(result.rowcount)


async def close_dead(conn: AsyncConnection, job_id: int, now: float) -> bool:
    """A dead job ends `done` (a waiting job does its work, see `retry_dead`); False when it is not dead."""
    result = await conn.execute(
        jobs.update().where(jobs.c.id == job_id, jobs.c.status == JobStatus.DEAD.value)
        .values(status=JobStatus.DONE.value, finished_at=now)
    )  # fmt: skip
    return bool(result.rowcount)


async def ensure_scheduled(
    engine: AsyncEngine, kind: str, payload: Mapping[str, Any], *, queueing_lock: str, now: float
) -> int | None:
    """Enqueue unless a job holding `queueing_lock` is already waiting or running (periodic jobs)."""
    async with writer(engine).begin() as conn:
        active = await conn.execute(
            sa.select(jobs.c.id)
            .where(jobs.c.queueing_lock == queueing_lock, jobs.c.status.in_(["waiting", "running"]))
            .limit(1)
        )
        if active.first() is not None:
            return None
        return await enqueue(
            conn, kind, payload, now=now, lock_key=queueing_lock, queueing_lock=queueing_lock
        )


async def claim(
    engine: AsyncEngine, worker_id: str, limit: int, now: float, lease_s: float, *, then: InTransaction | None = None
) -> list[Job]:
    """Take up to `limit` runnable jobs for `worker_id`, oldest first, respecting per-key order.

    `then(conn, claimed)` runs in the claim's own transaction, so what it writes (an alert marked
    processing, a periodic job's successor) exists exactly when the claim does.
    """
    _, claimed = await turn(engine, worker_id, done=(), now=now, claim_limit=limit, lease_s=lease_s, on_claimed=then)
    return claimed


async def complete(
    engine: AsyncEngine, done: Sequence[Job], now: float, *, then: InTransaction | None = None
) -> int:
    """Mark a batch done in one statement; returns how many were still ours to finish.

    `then(conn, finished)` runs in the same transaction with the jobs that were still ours (a job whose
    lease was lost and taken over is not among them), so a job's results commit with its `done`.
    """
    finished, _ = await turn(engine, "", done=done, now=now, claim_limit=0, lease_s=0.0, on_done=then)
    return finished


async def turn(
    engine: AsyncEngine, worker_id: str, *, done: Sequence[Job], now: float, claim_limit: int, lease_s: float,
    on_done: InTransaction | None = None, on_claimed: InTransaction | None = None, keyless_limit: int = 0,
) -> tuple[int, list[Job]]:  # fmt: skip
    """A worker's round in ONE transaction: mark `done` finished (as `complete`), then claim up to
    `claim_limit` jobs (as `claim`), or up to `keyless_limit` if the jobs past `claim_limit` are keyless
    ones. Returns (how many were still ours to finish, the jobs claimed).

    One transaction instead of two saves its BEGIN, settings and COMMIT round trips on every round;
    the claim sees the completions, so the next job of a key just finished is claimable at once.
    """
    limit = max(claim_limit, keyless_limit)
    if not done and limit <= 0:
        return 0, []
    if engine.dialect.name == "postgresql":
        return await _pg_turn(engine, worker_id, done, now, limit, claim_limit, lease_s, on_done, on_claimed)
    # On SQLite, after this process's other writers rather than in SQLite's sleeping busy handler (db.py), and
    # on the event loop's own thread (`loop_engine`) unless another connection holds SQLite's write lock: then
    # in the pool's thread, which waits for it.
    async with sqlite_write_turn(engine.url):
        inline = loop_engine(engine)
        if inline is not None:
            try:
                return await _sqlite_turn(
                    inline, worker_id, done, now, limit, claim_limit, lease_s, on_done, on_claimed, busy_first=True
                )
            except _LockHeld:
                pass  # another connection (another process's, or a handler's) writes: wait for it in the pool's thread
        return await _sqlite_turn(engine, worker_id, done, now, limit, claim_limit, lease_s, on_done, on_claimed)


class _LockHeld(Exception):
    """The round's first statement found SQLite's write lock held (its BEGIN IMMEDIATE answered busy): nothing
    was done, and the round may run again elsewhere."""


async def _sqlite_turn(
    engine: AsyncEngine, worker_id: str, done: Sequence[Job], now: float, limit: int, claim_limit: int,
    lease_s: float, on_done: InTransaction | None, on_claimed: InTransaction | None, *, busy_first: bool = False,
) -> tuple[int, list[Job]]:  # fmt: skip
    """`turn` on SQLite, in the caller's write turn. SQLAlchemy begins the transaction (BEGIN IMMEDIATE, db.py)
    and commits it; the statements between run straight on the driver, as on PostgreSQL. `busy_first`: raise
    `_LockHeld` if the first statement (which sends the BEGIN) answers busy."""
    began = False
    async with round_keeper(engine).begin() as conn:
        try:
            finished = 0
            if done:
                fence = orjson.dumps([(job.id, job.attempts) for job in done]).decode()
                finished_ids = {row[0] for row in await sqlite_fetch(conn, _SQLITE_COMPLETE, (now, fence))}
                began = True
                finished = len(finished_ids)
                if finished_ids and on_done is not None:
                    await on_done(conn, [job for job in done if job.id in finished_ids])
            claimed: list[Job] = []
            if limit > 0:
                params = {"worker_id": worker_id, "now": now, "lease_until": now + lease_s, "lease_lost": LEASE_LOST,
                          "limit": limit, "keyed_limit": claim_limit}  # fmt: skip
                rows = await sqlite_fetch(conn, _SQLITE_CLAIM, params)
                began = True
                claimed = sorted((_sqlite_job(row) for row in rows), key=lambda job: job.id)
                if claimed and on_claimed is not None:
                    await on_claimed(conn, claimed)
        except sqlite3.OperationalError as exc:
            if busy_first and not began and exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
                raise _LockHeld() from exc
            raise as_dbapi_error(exc) from exc
        except sqlite3.Error as exc:
            raise as_dbapi_error(exc) from exc
    return finished, claimed


# SQLite's statements of the round, for the driver: the claim is CLAIM_SQL's (named parameters, as sqlite3
# takes them); the completion takes the fence's pairs as one JSON array, one fixed text whatever its size.
_SQLITE_CLAIM = cast(sa.TextClause, CLAIM_SQL["sqlite"].element).text
_SQLITE_COMPLETE = """
UPDATE jobs SET status = 'done', finished_at = ?1, lease_expires_at = NULL
FROM json_each(?2) AS fence
WHERE jobs.id = json_extract(fence.value, '$[0]') AND jobs.attempts = json_extract(fence.value, '$[1]')
  AND jobs.status = 'running'
RETURNING jobs.id
"""


def _sqlite_job(row: Sequence[Any]) -> Job:
    return Job(row[0], row[1], orjson.loads(row[2]), *row[3:])


async def sqlite_fetch(conn: AsyncConnection, operation: str, parameters: Any) -> list[Any]:
    """A statement straight on the aiosqlite driver under an SQLite `conn`, inside its transaction: the rows."""
    adapted = (await conn.get_raw_connection()).dbapi_connection
    return await sqlite_driver.fetch_all(cast(AsyncAdapt_aiosqlite_connection, adapted), operation, parameters)


async def _pg_turn(
    engine: AsyncEngine, worker_id: str, done: Sequence[Job], now: float, limit: int, keyed_limit: int,
    lease_s: float, on_done: InTransaction | None, on_claimed: InTransaction | None,
) -> tuple[int, list[Job]]:  # fmt: skip
    """`turn` on PostgreSQL: its statements straight on asyncpg, in a transaction of the driver's own.

    SQLAlchemy's machinery per statement (compile cache, parameters, result, greenlet) was a quarter of the
    relay's CPU at 500 deliveries/s. The connection is checked out in autocommit (as a `reader`'s), so
    SQLAlchemy sends no BEGIN of its own and a hook's SQLAlchemy statements run in the driver's transaction
    too. asyncpg caches prepared statements per connection as the engine set it up (not at all behind
    PgBouncer, see db.pgbouncer_driver_args), so the round follows the engine's PgBouncer setting.
    """
    async with reader(engine).connect() as conn:
        driver = await pg_driver(conn)
        try:
            async with driver.transaction(isolation="read_committed"):
                finished = 0
                if done:
                    rows = await driver.fetch(
                        _PG_COMPLETE, now, [job.id for job in done], [job.attempts for job in done], worker_id
                    )
                    finished_ids = {row[0] for row in rows}
                    finished = len(finished_ids)
                    if finished_ids and on_done is not None:
                        await on_done(conn, [job for job in done if job.id in finished_ids])
                claimed: list[Job] = []
                if limit > 0:
                    rows = await driver.fetch(
                        _PG_CLAIM, worker_id, now, now + lease_s, LEASE_LOST, limit, keyed_limit
                    )
                    claimed = sorted((Job(*row) for row in rows), key=lambda job: job.id)
                    if claimed and on_claimed is not None:
                        await on_claimed(conn, claimed)
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise as_dbapi_error(exc) from exc
        finally:
            if driver.is_closed():
                # A disconnect (the server restarted or went away): as SQLAlchemy does on one it sees itself,
                # every pooled connection made before now is replaced at its next checkout — else the next
                # rounds, and the worker's LISTEN, take the pool's other dead connections one by one.
                engine.sync_engine.pool._invalidate(await conn.get_raw_connection(), _checkin=False)
            # Never back to the pool inside a transaction (a cancelled round whose ROLLBACK could not be sent).
            if driver.is_closed() or driver.is_in_transaction():
                await conn.invalidate()
    return finished, claimed


async def pg_driver(conn: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under a PostgreSQL `conn`, for statements run straight on the driver."""
    driver: asyncpg.Connection = (await conn.get_raw_connection()).driver_connection
    return driver


def as_dbapi_error(error: Exception) -> DBAPIError:
    """A driver's error (asyncpg, sqlite3) as SQLAlchemy would have raised it (callers catch SQLAlchemy's)."""
    integrity = isinstance(error, asyncpg.IntegrityConstraintViolationError | sqlite3.IntegrityError)
    return (IntegrityError if integrity else OperationalError)(None, None, error)


def _fenced(claimed: Sequence[Job]) -> sa.ColumnElement[bool]:
    # The round's completion (`_PG_COMPLETE`, `_SQLITE_COMPLETE`) spells the same fence with arrays.
    pairs = [(job.id, job.attempts) for job in claimed]
    return sa.and_(jobs.c.status == "running", sa.tuple_(jobs.c.id, jobs.c.attempts).in_(pairs))


async def fail(engine: AsyncEngine, job: Job, error: str, now: float) -> bool:
    """The job is dead: it keeps `error` as its last error and never runs again by itself."""
    async with bookkeeper(engine).begin() as conn:
        result = await conn.execute(
            jobs.update()
            .where(_fenced([job]))
            .values(status="dead", last_error=error, finished_at=now, lease_expires_at=None)
        )
        if job.lock_key:
            await notify(conn)
    return bool(result.rowcount)


async def retry(engine: AsyncEngine, job: Job, run_at: float, error: str, now: float) -> bool:
    """Put a failed job back to waiting until `run_at`; its key stays blocked behind it meanwhile.

    Returns False when a newer waiting job holds the same queueing lock: that job does the same work,
    so this one ends `done` (keeping its error) rather than running twice.
    """
    values = {"status": "waiting", "run_at": run_at, "last_error": error, "lease_expires_at": None}
    try:
        async with bookkeeper(engine).begin() as conn:
            await conn.execute(jobs.update().where(_fenced([job])).values(worker_id=None, **values))
        return True
    except IntegrityError:
        async with bookkeeper(engine).begin() as conn:
            await conn.execute(
                jobs.update()
                .where(_fenced([job]))
                .values(status="done", last_error=error, finished_at=now, lease_expires_at=None)
            )
        return False


async def defer(engine: AsyncEngine, job: Job, run_at: float, reason: str, now: float) -> bool:
    """The job did not fail, it was told to wait (`service.errors.Deferred`): waiting again until `run_at`,
    the attempt given back (as `release` does), marked as waiting on the budget. False as `retry`."""
    values = {"status": "waiting", "run_at": run_at, "attempts": jobs.c.attempts - 1, "worker_id": None,
              "lease_expires_at": None, "started_at": None,
              "last_error": (DEFERRED_PREFIX + reason)[:MAX_ERROR_CHARS]}  # fmt: skip
    try:
        async with bookkeeper(engine).begin() as conn:
            await conn.execute(jobs.update().where(_fenced([job])).values(values))
        return True
    except IntegrityError:
        async with bookkeeper(engine).begin() as conn:
            await conn.execute(
                jobs.update().where(_fenced([job])).values(status="done", finished_at=now, lease_expires_at=None)
            )
        return False


async def resume_deferred(conn: AsyncConnection, now: float) -> int:
    """Every job waiting on the rate-limit budget may run now (the quota was reset); returns how many."""
    result = await conn.execute(
        jobs.update()
        .where(jobs.c.status == JobStatus.WAITING.value, jobs.c.run_at > now,
               jobs.c.last_error.startswith(DEFERRED_PREFIX, autoescape=True))
        .values(run_at=now)
    )  # fmt: skip
    if result.rowcount:
        await notify(conn)
    return int(result.rowcount)


async def count_deferred(conn: AsyncConnection) -> int:
    """Jobs waiting on the rate-limit budget."""
    found = await conn.scalar(
        sa.select(sa.func.count()).select_from(jobs)
        .where(jobs.c.status == JobStatus.WAITING.value, jobs.c.last_error.startswith(DEFERRED_PREFIX, autoescape=True))
    )  # fmt: skip
    return int(found or 0)


async def heartbeat(engine: AsyncEngine, running: Sequence[Job], now: float, lease_s: float) -> int:
    """Extend the leases of the jobs this worker is running (fenced, so never a job it lost); returns how many."""
    return len(await renew(engine, running, now, lease_s))


async def renew(engine: AsyncEngine, held: Sequence[Job], now: float, lease_s: float) -> set[int]:
    """`heartbeat`, returning the ids of the jobs whose lease it extended (those still this worker's)."""
    if not held:
        return set()
    async with bookkeeper(engine).begin() as conn:
        result = await conn.execute(
            jobs.update().where(_fenced(held)).values(lease_expires_at=now + lease_s).returning(jobs.c.id)
        )
        return set(result.scalars())


async def release(engine: AsyncEngine, claimed: Sequence[Job], now: float) -> int:
    """Hand unfinished jobs back (shutdown): waiting again, lease cleared, the attempt not counted.

    The attempt is given back because the job did not fail; we stopped it. A job whose queueing lock a
    newer waiting job now holds ends `done` instead: that job does the same work (see `retry`).
    """
    if not claimed:
        return 0
    back = {"status": "waiting", "attempts": jobs.c.attempts - 1, "worker_id": None, "lease_expires_at": None,
            "started_at": None}  # fmt: skip
    unlocked = [job for job in claimed if job.queueing_lock is None]
    locked = [job for job in claimed if job.queueing_lock is not None]
    released = 0
    async with bookkeeper(engine).begin() as conn:
        if unlocked:
            released += int((await conn.execute(jobs.update().where(_fenced(unlocked)).values(back))).rowcount)
        await notify(conn)
    for job in locked:  # rare (push and periodic jobs): one at a time, as a conflict fails the statement
        try:
            async with bookkeeper(engine).begin() as conn:
                released += int((await conn.execute(jobs.update().where(_fenced([job])).values(back))).rowcount)
                await notify(conn)
        except IntegrityError:
            async with bookkeeper(engine).begin() as conn:
                await conn.execute(
                    jobs.update().where(_fenced([job])).values(status="done", finished_at=now, lease_expires_at=None)
                )
    return released


async def prune_batch(engine: AsyncEngine, finished_before: float, limit: int) -> int:
    """One short transaction deleting at most `limit` done jobs finished before the given time (the
    retention prune's step, service/retention.py); returns how many. Waiting, running and dead jobs stay."""
    # `run_at` is never later than `finished_at`: the extra bound lets the (status, run_at) index find them.
    old = sa.select(jobs.c.id).where(
        jobs.c.status == JobStatus.DONE.value, jobs.c.run_at < finished_before, jobs.c.finished_at < finished_before
    ).limit(limit)  # fmt: skip
    async with bookkeeper(engine).begin() as conn:
        result = await conn.execute(jobs.delete().where(jobs.c.id.in_(old)))
    return int(result.rowcount)


def _of_company(company_id: str, notification_ids: Sequence[str]) -> sa.ColumnElement[bool]:
    """A company's jobs: its alerts' (lock key), those naming it in their payload (pushes, polls, sync
    checks), and the deliveries of its notifications."""
    terms = [jobs.c.lock_key == keys.alert_lock(company_id), jobs.c.payload["company_id"].as_string() == company_id]
    if notification_ids:
        terms.append(jobs.c.payload["notification_id"].as_string().in_(list(notification_ids)))
    return sa.or_(*terms)


async def count_company_jobs(conn: AsyncConnection, company_id: str, notification_ids: Sequence[str]) -> dict[str, int]:
    """A company's jobs by status (what `cancel_company_jobs` would delete, and those running)."""
    query = sa.select(jobs.c.status, sa.func.count()).where(_of_company(company_id, notification_ids))
    return {status: int(n) for status, n in await conn.execute(query.group_by(jobs.c.status))}


async def cancel_company_jobs(
    conn: AsyncConnection, company_id: str, notification_ids: Sequence[str], limit: int
) -> int:
    """Delete at most `limit` of a purged company's jobs that are not running (waiting ones are cancelled,
    done and dead ones forgotten); returns how many. Running jobs are left to their workers (a deleted
    running row would let the next job of its key start beside it)."""
    mine = sa.select(jobs.c.id).where(
        jobs.c.status != JobStatus.RUNNING.value, _of_company(company_id, notification_ids)
    ).limit(limit)  # fmt: skip
    return int((await conn.execute(jobs.delete().where(jobs.c.id.in_(mine)))).rowcount)


async def forget_running(conn: AsyncConnection, job: Job) -> bool:
    """Delete this attempt's own row as its last act (a company purge leaves no job naming the company).

    Only the job itself may: its worker then finds nothing to complete (as for a job taken over), and no
    later job of its key exists to start beside it, the purge having deleted them all.
    """
    return bool((await conn.execute(jobs.delete().where(_fenced([job])))).rowcount)


async def holds_lease(conn: AsyncConnection, job: Job, now: float) -> bool:
    """Whether this attempt of `job` still runs under a live lease: a job calls it before each outside call
    it must not make beside a successor (the same `(id, attempts)` fence as completion)."""
    found = await conn.scalar(
        sa.select(jobs.c.id).where(_fenced([job]), jobs.c.lease_expires_at >= now)
    )
    return found is not None
