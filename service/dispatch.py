"""The alert job: load a stored alert, hand it to its handler, and keep the alert's status in step.

Alert status follows the job: `processing` while a handler runs, `done`/`ignored` from its outcome,
back to `pending` (with the error) while the job waits to retry, `dead` when the job dies.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import problems, queue, tracing
from service.alerts import parsed_fields, rate_limit_of, reparse
from service.db import alerts, bookkeeper, writer
from service.notifications import Kind
from service.queue import Job, describe_error
from service.types import Alert, AlertKind, AlertStatus, Context, DataTypeStatus, Deps, Handler, Shape


class _Keep(enum.Enum):
    KEEP = "keep"


KEEP = _Keep.KEEP


AlertDeps = Deps  # the alert job needs what every job needs
AlertRow = Mapping[Any, Any]  # a stored alert's row: SQLAlchemy's, or asyncpg's (the worker's round on PostgreSQL)


def alert_from_row(row: AlertRow) -> Alert:
    kind = AlertKind(row["kind"])
    return Alert(
        delivery_id=row["id"],
        kind=kind,
        type=row["type"],
        shape=Shape(row["shape"]),
        company_id=row["company_id"],
        connection_id=row["connection_id"],
        data_types=tuple(DataTypeStatus.model_validate(entry) for entry in row["data_types"] or ()),
        generated_at=row["generated_at"],
        rate_limit=rate_limit_of(bytes(row["body"])) if kind is AlertKind.RATE_LIMIT else None,
        body=bytes(row["body"]),
        received_at=row["received_at"],
    )


# The worker's round runs on the driver (queue.turn), and so do its hooks' statements, each one fixed text
# whatever the round's size: one statement for all the round's outcomes (asyncpg's executemany was one
# execute per alert on the server).
_PG_FINISH = """
UPDATE alerts SET status = outcome.status, last_error = NULL, updated_at = $3
FROM unnest($1::text[], $2::text[]) AS outcome(id, status) WHERE alerts.id = outcome.id
"""
# `_mark_started` for asyncpg: one fixed text whatever the round's size.
_PG_START = f"""
UPDATE alerts SET status = CASE WHEN kind = ANY($3::text[]) THEN '{AlertStatus.PROCESSING.value}'
                                ELSE '{AlertStatus.IGNORED.value}' END,
    attempts = attempts + 1, updated_at = $2
WHERE id = ANY($1::text[])
RETURNING {", ".join(alerts.c.keys())}
"""  # noqa: S608 - fixed text
# SQLite's: the lists as JSON arrays (json_extract rather than `->>`, which needs SQLite 3.38).
_SQLITE_FINISH = """
UPDATE alerts SET status = json_extract(outcome.value, '$[1]'), last_error = NULL, updated_at = ?2
FROM json_each(?1) AS outcome WHERE alerts.id = json_extract(outcome.value, '$[0]')
"""
_SQLITE_START = f"""
UPDATE alerts SET status = CASE WHEN kind IN (SELECT value FROM json_each(?3)) THEN '{AlertStatus.PROCESSING.value}'
                                ELSE '{AlertStatus.IGNORED.value}' END,
    attempts = attempts + 1, updated_at = ?2
WHERE id IN (SELECT value FROM json_each(?1))
RETURNING {", ".join(alerts.c.keys())}
"""  # noqa: S608 - fixed text


_ALERT_COLUMNS = tuple(alerts.c.keys())


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


def _sqlite_alert(row: Sequence[Any]) -> dict[str, Any]:
    """An alert's row from sqlite3 (a tuple of `alerts`' columns, JSON as text) as SQLAlchemy would read it."""
    alert = dict(zip(_ALERT_COLUMNS, row, strict=True))
    alert["data_types"] = orjson.loads(alert["data_types"])
    return alert


class AlertJob:
    """The job function for kind `alert`; also told when one of its jobs dies.

    Under a worker (service/worker.py `Batched`) the alert's bookkeeping rides on the queue's own
    transactions: the claim marks the alerts of every claimed job processing and loads them in one
    statement, and the completion writes their outcomes with their jobs' `done`. Called alone (tests,
    tools) it does the same writes itself.
    """

    def __init__(self, registry: Mapping[AlertKind, Handler], deps: AlertDeps) -> None:
        self._registry = dict(registry)
        self._deps = deps
        self._log: structlog.stdlib.BoundLogger = structlog.get_logger("service.dispatch")
        self._handled = [kind.value for kind in self._registry]
        self._handled_json = _json(self._handled)
        # Built once (it runs every round): building it and its cache key per round cost more than a job.
        self._started_statement = self._mark_started(self._handled)
        self._loaded: dict[int, AlertRow | None] = {}  # job id → its alert, loaded by `claimed`

    async def claimed(self, conn: AsyncConnection, jobs: Sequence[Job], now: float) -> None:
        by_alert = {str(job.payload["alert_id"]): job.id for job in jobs}
        found: dict[str, AlertRow]
        if conn.dialect.name == "postgresql":
            rows = await (await queue.pg_driver(conn)).fetch(_PG_START, list(by_alert), now, self._handled)
            found = {row["id"]: row for row in rows}
        else:
            rows = await queue.sqlite_fetch(conn, _SQLITE_START, (_json(list(by_alert)), now, self._handled_json))
            found = {alert["id"]: alert for alert in map(_sqlite_alert, rows)}
        for alert_id, job_id in by_alert.items():
            self._loaded[job_id] = found.get(alert_id)

    async def finished(self, conn: AsyncConnection, results: Sequence[tuple[Job, object]], now: float) -> None:
        outcomes = [
            (str(job.payload["alert_id"]), result.value) for job, result in results if isinstance(result, AlertStatus)
        ]
        if not outcomes:
            return
        if conn.dialect.name == "postgresql":
            ids, statuses = [alert_id for alert_id, _ in outcomes], [status for _, status in outcomes]
            await (await queue.pg_driver(conn)).execute(_PG_FINISH, ids, statuses, now)
        else:
            await queue.sqlite_fetch(conn, _SQLITE_FINISH, (_json(outcomes), now))

    async def __call__(self, job: Job, attempt: int) -> AlertStatus | None:
        """Run the alert's handler; returns the outcome for `finished` to write (None once written)."""
        alert_id = str(job.payload["alert_id"])
        batched = job.id in self._loaded
        row = self._loaded.pop(job.id) if batched else await self._start(alert_id)
        if row is None:
            # Deleted since it was queued: nothing left to do.
            self._log.warning("alert_missing", alert_id=alert_id, job_id=job.id, attempt=attempt)
            return None
        alert = alert_from_row(row)
        handler = self._registry.get(alert.kind)
        if handler is None:
            return None  # marked ignored when it was claimed
        # Bound once, with everything: each bind of the module's lazy logger builds a logger anew.
        log = self._log.bind(alert_id=alert_id, job_id=job.id, attempt=attempt, company_id=alert.company_id,
                             kind=alert.kind.value)  # fmt: skip
        context = Context(
            store=self._deps.engine,
            codat=self._deps.codat,
            notifier=self._deps.notifier,
            tracker=self._deps.tracker,
            clock=self._deps.clock,
            log=log,
            attempt=attempt,
        )
        try:
            with tracing.span(f"handler {alert.kind.value}", attributes={"codat.delivery_id": alert_id}):
                outcome = await handler(alert, context)
                tracing.annotate(**{"relay.outcome": outcome.value})
        except asyncio.CancelledError:
            # Shutdown: the job goes back to waiting, so the alert does too (not left `processing`).
            await asyncio.shield(self._set(alert_id, AlertStatus.PENDING))
            raise
        except Exception as exc:
            await self._set(alert_id, AlertStatus.PENDING, error=describe_error(exc))
            raise
        if row["attempts"] > 1:  # it ran before: it may have died, and a replay that works ends that problem
            try:
                await self._resolve_dead(alert_id)
            except Exception:  # bookkeeping only: the handler's work is done; the next replay tries again
                log.warning("problem_resolve_failed", exc_info=True)
        if batched:
            return AlertStatus(outcome.value)
        await self._set(alert_id, AlertStatus(outcome.value), error=None)
        return None

    async def _resolve_dead(self, alert_id: str) -> None:
        async with self._deps.engine.connect() as conn:
            if not await problems.any_open(conn, Kind.ALERT_DEAD.value, [alert_id]):
                return
        async with writer(self._deps.engine).begin() as conn:
            await self._deps.notifier.resolve(conn, "the alert was processed", kinds=[Kind.ALERT_DEAD],
                                              subjects=[alert_id])  # fmt: skip

    @staticmethod
    def _mark_started(handled: list[str]) -> sa.Update:
        """Load alerts (`alert_ids`) and mark this processing run (at `now`) in one statement: `processing`
        when a handler will run, `ignored` when none exists; `attempts` counts every run (CONTRACT.md)."""
        status = sa.case((alerts.c.kind.in_(handled), AlertStatus.PROCESSING.value), else_=AlertStatus.IGNORED.value)
        return (
            alerts.update().where(alerts.c.id.in_(sa.bindparam("alert_ids", expanding=True)))
            .values(status=status, attempts=alerts.c.attempts + 1, updated_at=sa.bindparam("now"))
            .returning(*alerts.c)
        )  # fmt: skip

    async def _start(self, alert_id: str) -> AlertRow | None:
        async with bookkeeper(self._deps.engine).begin() as conn:
            params = {"alert_ids": [alert_id], "now": self._deps.clock.now()}
            started = await conn.execute(self._started_statement, params)
            return started.mappings().first()

    async def job_dead(self, job: Job, error: str) -> None:
        await self._set(str(job.payload["alert_id"]), AlertStatus.DEAD, error=error)

    async def _set(self, alert_id: str, status: AlertStatus, *, error: str | _Keep | None = KEEP) -> None:
        """`error` replaces last_error (None clears it); by default last_error is kept."""
        values: dict[str, Any] = {"status": status.value, "updated_at": self._deps.clock.now()}
        if error is not KEEP:
            values["last_error"] = error
        async with bookkeeper(self._deps.engine).begin() as conn:
            await conn.execute(alerts.update().where(alerts.c.id == alert_id).values(values))


def make_alert_job(registry: Mapping[AlertKind, Handler], deps: AlertDeps) -> AlertJob:
    return AlertJob(registry, deps)


async def replay_alert(engine: AsyncEngine, alert_id: str, now: float) -> bool:
    """Process a stored alert again (the API's, the UI's and the CLI's replay); False when there is none.

    The stored body is parsed again by this codat-relay, so an alert an older version kept as `other`
    gets the kind, company and data types it has now (CONTRACT.md: Codat's events are never thrown
    away). Its dead jobs, if any, end superseded by the new one, so the dead-jobs list stays true.
    """
    async with writer(engine).begin() as conn:
        return await replay_alert_in(conn, alert_id, now)


async def replay_alert_in(conn: AsyncConnection, alert_id: str, now: float) -> bool:
    """`replay_alert` in the caller's transaction (a bulk replay moves its cursor in the same one)."""
    row = (
        await conn.execute(sa.select(alerts.c.shape, alerts.c.body, alerts.c.company_id, alerts.c.kind,
                                     alerts.c.generated_at, alerts.c.received_at)
                           .where(alerts.c.id == alert_id))
    ).first()  # fmt: skip
    if row is None:
        return False
    values: dict[str, Any] = {"status": AlertStatus.PENDING.value, "updated_at": now}
    company_id = row.company_id
    alert = reparse(alert_id, row.shape, bytes(row.body), row.received_at)
    if alert is not None and alert.kind is not AlertKind.OTHER:  # never trade what was understood for less
        values.update(parsed_fields(alert))
        if row.kind != AlertKind.OTHER.value:
            # Its ordering time was decided on arrival, knowing whether the body was signed.
            values["generated_at"] = row.generated_at
        company_id = alert.company_id
    await conn.execute(alerts.update().where(alerts.c.id == alert_id).values(values))
    job_id = await queue.enqueue_row(conn, queue.alert_job(alert_id, company_id, now=now))
    await queue.supersede_dead_alert(conn, alert_id, by_job=job_id, reason="replayed", now=now)
    return True
