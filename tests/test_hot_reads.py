"""Hot-path reads (service/hot_reads.py): what was just committed, without a pooled connection, on both backends."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import companies, create_engine, metadata, writer
from service.hot_reads import read_column
from service.sqlite_driver import LoopReader
from tests.conftest import _dsn, make_settings

T0 = 1_750_000_000.0
COMPANIES_FROM = sa.select(companies.c.id).where(companies.c.id >= sa.bindparam("first")).order_by(companies.c.id)


async def add_company(engine: AsyncEngine, company_id: str) -> None:
    async with writer(engine).begin() as conn:
        await conn.execute(sa.insert(companies), {"id": company_id, "created_at": T0, "updated_at": T0})


def checkouts(engine: AsyncEngine) -> list[object]:
    """Every connection taken from the engine's pool from now on."""
    taken: list[object] = []
    event.listen(engine.sync_engine, "checkout", lambda *args: taken.append(args[0]))
    return taken


async def test_read_column_sees_each_commit_without_a_pooled_connection(engine: AsyncEngine) -> None:
    """A hot-path read sees what was committed a moment before it, every time (nothing is cached), and
    takes no connection from the engine's pool (its checkout and SQLAlchemy's execute were most of its cost)."""
    await add_company(engine, "C1")
    taken = checkouts(engine)
    first = await read_column(engine, COMPANIES_FROM, {"first": "C"})
    await add_company(engine, "C2")
    pooled = len(taken)
    second = await read_column(engine, COMPANIES_FROM, {"first": "C"})
    assert (first, second) == (["C1"], ["C1", "C2"])
    assert await read_column(engine, COMPANIES_FROM, {"first": "D"}) == []
    assert len(taken) == pooled  # the write took one; the reads none


async def test_read_column_from_many_tasks_at_once(engine: AsyncEngine) -> None:
    """Reads at once from many tasks (a worker's slots) each get their own answer."""
    for company_id in ("A1", "B1", "C1"):
        await add_company(engine, company_id)
    firsts = ["A", "B", "C", "D"] * 10
    answers = await asyncio.gather(*(read_column(engine, COMPANIES_FROM, {"first": f}) for f in firsts))
    expected = {"A": ["A1", "B1", "C1"], "B": ["B1", "C1"], "C": ["C1"], "D": []}
    assert answers == [expected[f] for f in firsts]


async def test_read_column_takes_the_pool_when_sqlite_answers_busy(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where SQLite would make the loop's reader wait (busy), the read goes through the pool, whose thread
    waits instead: the same answer, and the loop never sits in a busy handler."""
    engine = create_engine(make_settings(f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}"))
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    await add_company(engine, "C1")

    def busy(self: LoopReader, sql: str, parameters: Any) -> list[Any]:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(LoopReader, "column", busy)
    taken = checkouts(engine)
    assert await read_column(engine, COMPANIES_FROM, {"first": "C"}) == ["C1"]
    assert len(taken) == 1
    await engine.dispose()


async def test_read_column_in_memory_goes_through_the_pool() -> None:
    """An in-memory database has no file for a second connection: its reads take the pool's one."""
    engine = create_engine(make_settings())
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    await add_company(engine, "C1")
    assert await read_column(engine, COMPANIES_FROM, {"first": "C"}) == ["C1"]
    await engine.dispose()


async def test_a_statement_needing_type_processing_is_refused(engine: AsyncEngine) -> None:
    """No SQLAlchemy type processing is done on these reads: a column that needs it is refused outright
    rather than read wrongly."""
    needs_processing = sa.select(metadata.tables["alerts"].c.data_types)  # JSON
    with pytest.raises(ValueError, match="not a plain read"):
        await read_column(engine, needs_processing, {})


TERMINATE_TIMEOUT_MS = 10_000
BACKEND_PID = sa.select(sa.func.pg_backend_pid())


def terminate_sessions_unnoticed(dsn: str, pids: list[int]) -> None:
    """`pg_terminate_backend` on `pids` from another connection, waiting until they have exited, while blocking
    the calling event loop: its asyncpg connections cannot read that their server ended them, as on a busy
    loop when the server restarts. The next query on each is the first to find out."""

    async def terminate() -> None:
        admin = await asyncpg.connect(dsn, timeout=5)
        try:
            # With a timeout, pg_terminate_backend waits for the session to exit (true) or says it did not.
            ended = "SELECT bool_and(pg_terminate_backend(p, $2)) FROM unnest($1::int[]) p"
            assert await admin.fetchval(ended, pids, TERMINATE_TIMEOUT_MS)
        finally:
            await admin.close()

    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, terminate()).result()  # not awaited, on purpose: the loop must not run meanwhile


async def test_reads_after_the_server_ended_their_connections_succeed_on_fresh_ones(postgres_url: str) -> None:
    """Every connection of the read pool ended by the server (a restart, `pg_terminate_backend`) before the
    client noticed: the next reads each fail on their dead connection once and succeed on a fresh one,
    instead of failing the handler's job into its retry backoff."""
    engine = create_engine(make_settings(postgres_url))
    try:
        # Reads at once open several of the pool's connections.
        before = await asyncio.gather(*(read_column(engine, BACKEND_PID, {}) for _ in range(8)))
        pids = sorted({pid for column in before for pid in column})
        assert len(pids) > 1
        terminate_sessions_unnoticed(_dsn(postgres_url), pids)
        after = [await read_column(engine, BACKEND_PID, {}) for _ in range(len(pids) + 1)]
        after += await asyncio.gather(*(read_column(engine, BACKEND_PID, {}) for _ in range(8)))
        assert all(len(column) == 1 and column[0] not in pids for column in after)
    finally:
        await engine.dispose()


async def test_a_read_whose_statement_fails_runs_once(postgres_url: str) -> None:
    """A read failing on its own statement (an SQL error) is never tried again: only a dead connection is."""
    engine = create_engine(make_settings(postgres_url))
    try:
        async with writer(engine).begin() as conn:
            await conn.execute(sa.text("CREATE SEQUENCE read_attempts"))
        failing = sa.select(sa.literal_column("1 / (nextval('read_attempts') * 0)"))
        with pytest.raises(asyncpg.DivisionByZeroError):
            await read_column(engine, failing, {})
        async with writer(engine).begin() as conn:
            assert await conn.scalar(sa.text("SELECT last_value FROM read_attempts")) == 1
    finally:
        await engine.dispose()
