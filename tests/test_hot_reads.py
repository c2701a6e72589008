"""Hot-path reads (service/hot_reads.py): what was just committed, without a pooled connection, on both backends."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import companies, create_engine, metadata, writer
from service.hot_reads import read_column
from service.sqlite_driver import LoopReader
from tests.conftest import make_settings

T0 = 1_750_000_000.0
COMPANIES_FROM = sa.select(companies.c.id).where(companies.c.id >= sa.bindparam("first")).order_by(companies.c.id)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(make_settings(database_url))
    yield engine
    await engine.dispose()


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
