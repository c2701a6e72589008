"""The engine variants of service/db.py: reads without a transaction, writers after them, on both backends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db import POOL_HEADROOM, companies, create_engine, reader, writer
from tests.conftest import make_settings

T0 = 1_750_000_000.0


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(make_settings(database_url, db_pool_size=1))
    yield engine
    await engine.dispose()


async def add_company(engine: AsyncEngine, company_id: str) -> None:
    async with writer(engine).begin() as conn:
        await conn.execute(sa.insert(companies), {"id": company_id, "created_at": T0, "updated_at": T0})


async def in_database_transaction(engine: AsyncEngine, conn: AsyncConnection) -> bool:
    """Whether the database (not SQLAlchemy's bookkeeping) holds a transaction open on `conn`."""
    if conn.dialect.name == "sqlite":
        return bool((await conn.get_raw_connection()).driver_connection.in_transaction)
    pid = await conn.scalar(sa.text("SELECT pg_backend_pid()"))
    async with engine.connect() as other:
        state = await other.scalar(sa.text("SELECT state FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid})
    return str(state).startswith("idle in transaction")


async def test_reader_sees_commits_and_leaves_writers_working(engine: AsyncEngine) -> None:
    """A read outside any transaction sees what was committed, holds no transaction open (a writer can
    commit meanwhile), and the pooled connection it used still takes write transactions afterwards."""
    await add_company(engine, "C1")
    async with reader(engine).connect() as conn:
        first = list((await conn.execute(sa.select(companies.c.id))).scalars())
        await add_company(engine, "C2")  # would wait on SQLite's lock if the read held a write transaction
        second = list((await conn.execute(sa.select(companies.c.id).order_by(companies.c.id))).scalars())
        assert not await in_database_transaction(engine, conn)
    assert (first, second) == (["C1"], ["C1", "C2"])
    for n in range(3):  # the same pooled connection, written through again
        await add_company(engine, f"W{n}")
    async with engine.connect() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(companies)) == 5


async def test_a_failed_write_after_a_read_rolls_back(engine: AsyncEngine) -> None:
    """Transaction control survives the reader: a write transaction that fails leaves nothing behind."""
    async with reader(engine).connect() as conn:
        await conn.execute(sa.select(companies.c.id))
    with pytest.raises(RuntimeError):
        async with writer(engine).begin() as conn:
            await conn.execute(sa.insert(companies), {"id": "X", "created_at": T0, "updated_at": T0})
            raise RuntimeError("abort")
    async with engine.connect() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(companies)) == 0


def test_variants_are_made_once() -> None:
    """The engine variants are cached: making one per statement cost more than the statement itself."""
    engine = create_engine(make_settings())
    assert reader(engine) is reader(engine) and writer(engine) is writer(engine)
    assert reader(engine) is not writer(engine)
    asyncio.run(engine.dispose())


def test_pool_never_smaller_than_the_jobs_running(database_url: str) -> None:
    """Every running job may hold a connection: the pool keeps at least that many plus headroom."""
    engine = create_engine(make_settings(database_url, db_pool_size=2, worker_concurrency=32))
    assert engine.pool.size() == 32 + POOL_HEADROOM  # type: ignore[attr-defined]
    asyncio.run(engine.dispose())
