"""Alert search's text index, filled after the acknowledgement: the webhook's insert never waits for it.

Indexing every body's trigrams inside the receiver's group commit cost it three quarters of its rate on
PostgreSQL (benchmarks/notes.md, "Alert search"). Instead a periodic queue job (INDEX_KIND, every
INDEX_EVERY_S, whichever worker claims it) copies alerts into `alert_texts` (migration 0013) in batches, in
(received_at, id) order from the watermark (`alert_text_watermark`): PostgreSQL stores the body's text
under a pg_trgm GIN index, SQLite adds it to the FTS5 trigram table `alert_texts_fts`. Each batch and its
watermark commit together, so a run stopped anywhere resumes where it left off.

Search (service/alert_search.py) reads the index for the alerts at or before the watermark and scans the
bodies of the alerts after it: an alert is found from the moment its 202 is sent.

The watermark only passes alerts received SETTLE_S ago or earlier. `received_at` is taken when a delivery
arrives and committed a little later (a group commit, at most the receiver's 10 s write timeout), and
receivers in several processes commit out of step: an alert committed after the watermark passed its
`received_at` would be skipped by the index, and past the watermark for the scan. Waiting SETTLE_S (twice
the write timeout) before indexing an instant leaves those commits time to land.

This module is the only writer of `alert_texts` and `alert_text_watermark` (deletes aside: an alert's
row goes with it, by the cascade or migration 0013's trigger).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import metrics, queue
from service.clock import Clock
from service.db import alert_text_watermark, alert_texts, alerts, bookkeeper

log = structlog.get_logger("service.alert_index")

INDEX_KIND = "index_alert_texts"
INDEX_EVERY_S = 10.0  # how stale the index gets at most beyond SETTLE_S: the scanned tail is this much newer
SETTLE_S = 20.0  # twice the receiver's write timeout (service/ingest.py WRITE_TIMEOUT_S)
BATCH_ROWS = 500  # alerts per batch, one short write transaction each
PAUSE_S = 0.01  # after a full batch: a waiting writer (the receiver, on SQLite) takes the lock meanwhile
RUN_BUDGET_S = 60.0  # one run's work; a backlog (an upgraded database) goes over several runs
SQLITE_FTS = "alert_texts_fts"  # migration 0013
WATERMARK_ID = 1


def after(mark: tuple[Any, Any]) -> sa.ColumnElement[bool]:
    """Alerts strictly after `mark` (values, or scalar subqueries) in (received_at, id) order, as a range on
    `ix_alerts_received_at`."""
    received_at, alert_id = mark
    return sa.and_(alerts.c.received_at >= received_at,
                   sa.or_(alerts.c.received_at > received_at, alerts.c.id > alert_id))  # fmt: skip


def up_to(mark: tuple[float, str]) -> sa.ColumnElement[bool]:
    received_at, alert_id = mark
    return sa.and_(alerts.c.received_at <= received_at,
                   sa.or_(alerts.c.received_at < received_at, alerts.c.id <= alert_id))  # fmt: skip


async def watermark(conn: AsyncConnection, *, for_update: bool = False) -> tuple[float, str]:
    """(received_at, alert id) of the last alert indexed; every alert at or before it is in the index."""
    query = sa.select(alert_text_watermark.c.received_at, alert_text_watermark.c.alert_id).where(
        alert_text_watermark.c.id == WATERMARK_ID)
    if for_update and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    return (float(row.received_at), str(row.alert_id)) if row is not None else (float("-inf"), "")


async def index_batch(conn: AsyncConnection, now: float, limit: int) -> int:
    """Index up to `limit` alerts after the watermark and received by `now - SETTLE_S`; returns how many."""
    mark = await watermark(conn, for_update=True)
    settled = now - SETTLE_S
    picked = (await conn.execute(
        sa.select(alerts.c.received_at, alerts.c.id).where(after(mark), alerts.c.received_at <= settled)
        .order_by(alerts.c.received_at, alerts.c.id).limit(limit)
    )).all()  # fmt: skip
    if not picked:
        return 0
    last = (float(picked[-1].received_at), str(picked[-1].id))
    batch = sa.and_(after(mark), up_to(last))
    if conn.dialect.name == "postgresql":
        await conn.execute(_pg_insert(batch))
    else:
        await _sqlite_insert(conn, batch)
    await conn.execute(alert_text_watermark.update().where(alert_text_watermark.c.id == WATERMARK_ID)
                       .values(received_at=last[0], alert_id=last[1]))  # fmt: skip
    return len(picked)


def _pg_insert(batch: sa.ColumnElement[bool]) -> Any:
    rows = sa.select(alerts.c.id, alerts.c.received_at, sa.func.encode(alerts.c.body, "escape")).where(batch)
    return pg_insert(alert_texts).from_select(["alert_id", "received_at", "text"], rows).on_conflict_do_nothing()


async def _sqlite_insert(conn: AsyncConnection, batch: sa.ColumnElement[bool]) -> None:
    before = (await conn.execute(sa.select(sa.func.coalesce(sa.func.max(alert_texts.c.id), 0)))).scalar_one()
    rows = sa.select(alerts.c.id, alerts.c.received_at).where(batch).order_by(alerts.c.received_at, alerts.c.id)
    insert = sqlite_insert(alert_texts).from_select(["alert_id", "received_at"], rows).on_conflict_do_nothing()
    await conn.execute(insert)
    # The same value the delete trigger hands back (the body as stored): a contentless table must be told
    # exactly what it indexed to take it out again.
    await conn.exec_driver_sql(
        f"INSERT INTO {SQLITE_FTS}(rowid, text) SELECT alert_texts.id, alerts.body FROM alert_texts "  # noqa: S608
        "JOIN alerts ON alerts.id = alert_texts.alert_id WHERE alert_texts.id > ?", (int(before),))


class AlertIndexer:
    """One indexer run: batches until the settled alerts are all indexed or the budget is spent.

    Also the INDEX_KIND job function: `await indexer(job, attempt)`.
    """

    def __init__(
        self, engine: AsyncEngine, clock: Clock, *, batch_rows: int = BATCH_ROWS, pause_s: float = PAUSE_S,
        budget_s: float = RUN_BUDGET_S,
    ) -> None:  # fmt: skip
        self._engine, self._clock = engine, clock
        self._batch_rows, self._pause_s, self._budget_s = batch_rows, pause_s, budget_s

    async def __call__(self, _job: queue.Job, _attempt: int) -> None:
        await self.run()

    async def run(self) -> int:
        """Index what has settled; returns how many alerts were indexed."""
        deadline, total = time.monotonic() + self._budget_s, 0
        while True:
            async with bookkeeper(self._engine).begin() as conn:
                indexed = await index_batch(conn, self._clock.now(), self._batch_rows)
            total += indexed
            metrics.ALERTS_INDEXED.inc(indexed)
            if indexed < self._batch_rows or time.monotonic() >= deadline:
                break
            await asyncio.sleep(self._pause_s)  # a throttle between batches, not a wait for work
        async with self._engine.connect() as conn:
            received_at, _ = await watermark(conn)
        metrics.ALERT_INDEX_LAG.set(max(0.0, self._clock.now() - received_at) if received_at > 0 else 0.0)
        if total:
            log.info("alert_texts_indexed", alerts=total)
        return total
