"""The webhook receiver's batch writers: alerts and their jobs in one round trip, jobs built by the queue."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service import keys, queue
from service.batch_writers import BatchWriter, batch_writer_for
from service.db import alerts, jobs
from service.ingest import alert_row
from service.types import Alert, AlertKind, DataTypeStatus, Issue, Shape

T0 = 1_750_000_000.0


@pytest.fixture
async def batch_writer(database_url: str) -> AsyncIterator[BatchWriter]:
    writer = batch_writer_for(database_url)
    yield writer
    await writer.close()


def row(delivery_id: str, company_id: str | None, kind: AlertKind = AlertKind.DATASET_STATUS) -> dict[str, Any]:
    alert = Alert(delivery_id=delivery_id, kind=kind, type="read.completed", shape=Shape.ENVELOPE,
                  company_id=company_id, body=b"{}")  # fmt: skip
    return alert_row(alert, T0)


async def stored_jobs(engine: AsyncEngine) -> list[dict[str, Any]]:
    columns = [jobs.c[name] for name in ("kind", "payload", "lock_key", "queueing_lock", "status", "attempts",
                                         "run_at", "created_at")]  # fmt: skip
    async with engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(sa.select(*columns).order_by(jobs.c.id))).mappings()]


def alert_job(alert_id: str, lock_key: str | None, at: float) -> dict[str, Any]:
    return {"kind": "alert", "payload": {"alert_id": alert_id}, "lock_key": lock_key, "queueing_lock": None,
            "status": "waiting", "attempts": 0, "run_at": at, "created_at": at}  # fmt: skip


async def test_a_batch_queues_a_job_for_each_new_pending_alert_in_arrival_order(
    engine: AsyncEngine, batch_writer: BatchWriter
) -> None:
    """Each new actionable alert gets its job, keyed by company, in the order received (so one company's
    alerts run in that order); an ignored alert and an id already stored get none."""
    assert await batch_writer.write([row("a0", "C1")], T0) == {"a0"}
    batch = [row("a2", "C1"), row("a1", None), row("x", "C1", AlertKind.OTHER), row("a0", "C1"), row("a3", "C1")]
    assert await batch_writer.write(batch, T0 + 1) == {"a2", "a1", "x", "a3"}
    assert await stored_jobs(engine) == [
        alert_job("a0", "company:C1", T0), alert_job("a2", "company:C1", T0 + 1), alert_job("a1", None, T0 + 1),
        alert_job("a3", "company:C1", T0 + 1),
    ]  # fmt: skip


async def test_the_batch_job_is_the_queue_s_alert_job(engine: AsyncEngine, batch_writer: BatchWriter) -> None:
    """The hot path's raw insert stores the very row `queue.alert_job` builds: one builder, whatever the path."""
    await batch_writer.write([row("a1", "C1"), row("a2", None)], T0)
    assert await stored_jobs(engine) == [queue.alert_job("a1", "C1", now=T0), queue.alert_job("a2", None, now=T0)]


async def test_a_batch_of_known_or_ignored_alerts_queues_nothing(
    engine: AsyncEngine, batch_writer: BatchWriter
) -> None:
    """No new actionable alert, no job (and the statement still stores the new ignored one)."""
    await batch_writer.write([row("a0", "C1")], T0)
    assert await batch_writer.write([row("a0", "C1"), row("x", "C1", AlertKind.OTHER)], T0 + 1) == {"x"}
    assert len(await stored_jobs(engine)) == 1
    async with engine.connect() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(alerts)) == 2


async def test_on_sqlite_the_receiver_and_the_queue_take_turns_to_write(
    engine: AsyncEngine, batch_writer: BatchWriter, database_url: str
) -> None:
    """Within one process an SQLite file's writers queue for their turn (service.db.sqlite_write_turn) instead of
    meeting in SQLite's sleeping busy handler: while a turn is held, neither a batch nor a queue round starts;
    once it is released both complete. On PostgreSQL the turn holds nothing back."""
    import asyncio

    from service.db import sqlite_path, sqlite_write_turn

    on_sqlite = sqlite_path(database_url) is not None
    async with sqlite_write_turn(database_url):
        batch = asyncio.create_task(batch_writer.write([row("t1", "C1")], T0))
        round_ = asyncio.create_task(queue.turn(engine, "w", done=(), now=T0, claim_limit=5, lease_s=30.0))
        if on_sqlite:
            # Nothing can finish while the turn is held: a bounded look, then the turn is let go.
            done, _ = await asyncio.wait({batch, round_}, timeout=0.3)
            assert done == set()
        else:
            assert await batch == {"t1"}
    assert await batch == {"t1"}
    await round_
    assert [job["lock_key"] for job in await stored_jobs(engine)] == [keys.alert_lock("C1")]


def test_the_sqlite_turn_is_per_file() -> None:
    """Two spellings of one file share a turn; PostgreSQL and in-memory databases have none."""
    import os

    from service.db import sqlite_path

    assert sqlite_path("sqlite+aiosqlite:///relay.db") == sqlite_path(f"sqlite:///{os.getcwd()}/relay.db")
    assert sqlite_path("sqlite+aiosqlite:///:memory:") is None
    assert sqlite_path("postgresql+asyncpg://u@h/db") is None


async def test_every_column_is_stored_as_the_row_has_it(engine: AsyncEngine, batch_writer: BatchWriter) -> None:
    """The batch's encoding (JSON rows and a bytes array on PostgreSQL) loses nothing: text beyond ASCII,
    nulls, fractional times, the data types' JSON and the raw body all come back as the row had them."""
    entry = DataTypeStatus(data_type="invoices", status="Complete", dataset_id="d-1", connection_id="c-1",
                           issues=(Issue(type="x", message='Zoë "quoted" \\ 🙂'),))  # fmt: skip
    alert = Alert(delivery_id="é-1", kind=AlertKind.DATASET_STATUS, type="read.completed", shape=Shape.ENVELOPE,
                  company_id="C1", connection_id="c-1", data_types=(entry,), generated_at=T0 - 0.123456789,
                  body=b'{"raw": "\\u00e9"}\x00\xff')  # fmt: skip
    bare = Alert(delivery_id="n-1", kind=AlertKind.OTHER, type="unknown", shape=Shape.UNKNOWN, body=b"")
    rows = [alert_row(alert, T0 + 0.5), alert_row(bare, T0 + 0.25)]
    assert await batch_writer.write(rows, T0) == {"é-1", "n-1"}
    async with engine.connect() as conn:
        stored = {r["id"]: dict(r) for r in (await conn.execute(sa.select(*alerts.c))).mappings()}
    for expected in rows:
        got = stored[expected["id"]]
        as_json = orjson.loads(orjson.dumps(expected["data_types"]))  # the row holds tuples, JSON gives lists
        assert {c: got[c] for c in expected} == {**expected, "data_types": as_json}
        assert got["last_error"] is None
