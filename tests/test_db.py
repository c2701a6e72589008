"""The engine variants of service/db.py: reads without a transaction, writers after them, on both backends."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db import POOL_HEADROOM, bookkeeper, companies, create_engine, metadata, reader, writer
from tests.conftest import engine_for, make_settings

T0 = 1_750_000_000.0


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    async with engine_for(database_url, db_pool_size=1) as created:
        yield created


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


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(make_settings(f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}", sqlite_synchronous="full"))
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield engine
    await engine.dispose()


def statements(engine: AsyncEngine) -> list[str]:
    """Every statement the engine sends from now on, as sent."""
    sent: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda *args: sent.append(args[2]))
    return sent


async def test_sqlite_synchronous_is_set_only_when_it_changes(sqlite_engine: AsyncEngine) -> None:
    """Bookkeeping transactions run at NORMAL and durable writes at the configured FULL, but the pragma
    is sent only when the connection's setting changes (each statement is a hop to aiosqlite's thread)."""
    sent = statements(sqlite_engine)
    seen = []
    for variant in (bookkeeper, bookkeeper, writer, writer, bookkeeper):
        async with variant(sqlite_engine).begin() as conn:
            seen.append(await conn.scalar(sa.text("PRAGMA synchronous")))
    assert seen == [1, 1, 2, 2, 1]  # NORMAL, FULL
    assert [s for s in sent if s.startswith("PRAGMA synchronous=")] == [
        "PRAGMA synchronous=NORMAL", "PRAGMA synchronous=FULL", "PRAGMA synchronous=NORMAL",
    ]  # fmt: skip


async def test_sqlite_rolls_back_only_an_open_transaction(
    sqlite_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection back from a read (or a commit) skips the ROLLBACK round trip; a failed write is still
    rolled back, and leaves nothing behind."""
    rollbacks: list[bool] = []
    original = aiosqlite.Connection.rollback

    async def counted(self: aiosqlite.Connection) -> None:
        rollbacks.append(self.in_transaction)
        await original(self)

    monkeypatch.setattr(aiosqlite.Connection, "rollback", counted)
    async with reader(sqlite_engine).connect() as conn:
        await conn.execute(sa.select(companies.c.id))
    await add_company(sqlite_engine, "C1")
    assert rollbacks == []
    with pytest.raises(RuntimeError):
        async with writer(sqlite_engine).begin() as conn:
            await conn.execute(sa.insert(companies), {"id": "X", "created_at": T0, "updated_at": T0})
            raise RuntimeError("abort")
    assert rollbacks == [True]
    async with reader(sqlite_engine).connect() as conn:
        assert list((await conn.execute(sa.select(companies.c.id))).scalars()) == ["C1"]


async def test_sqlite_statement_is_one_hop(sqlite_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each statement crosses to aiosqlite's thread once, and SQLAlchemy still gets its rows, row counts
    and inserted keys."""
    hops: list[object] = []
    original = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(fn)
        return await original(self, fn, *args, **kwargs)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    async with writer(sqlite_engine).begin() as conn:
        hops.clear()
        inserted = await conn.execute(sa.insert(problems_table()), problem_row("P1"))
        updated = await conn.execute(sa.update(problems_table()).values(count=2))
        rows = list(await conn.execute(sa.select(problems_table().c.id, problems_table().c.count)))
        assert len(hops) == 3
    assert inserted.inserted_primary_key == ("P1",)
    assert updated.rowcount == 1
    assert [tuple(row) for row in rows] == [("P1", 2)]


def problems_table() -> sa.Table:
    return metadata.tables["problems"]


def problem_row(problem_id: str) -> dict[str, Any]:
    return {"id": problem_id, "kind": "k", "subject": "s", "key": f"k:{problem_id}", "summary": "-",
            "opened_at": T0, "last_seen_at": T0}  # fmt: skip


async def test_sqlite_begin_rides_with_the_first_statement(
    sqlite_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A write transaction's BEGIN IMMEDIATE is sent in its first statement's hop, not one of its own, and
    still takes the write lock before that statement runs: another writer finds the file locked."""
    hops: list[object] = []
    original = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(fn)
        return await original(self, fn, *args, **kwargs)  # type: ignore[no-untyped-call]

    await add_company(sqlite_engine, "C0")  # the pool's connection is made (and its synchronous set)
    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    other = sqlite3.connect(tmp_path / "relay.db", timeout=0, isolation_level=None)
    async with writer(sqlite_engine).begin() as conn:
        await conn.execute(sa.select(companies.c.id))
        assert len(hops) == 1
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        await conn.execute(sa.insert(companies), {"id": "C1", "created_at": T0, "updated_at": T0})
    other.close()
    assert len(hops) == 3  # the select (with BEGIN), the insert, the COMMIT


async def test_sqlite_a_transaction_without_statements_leaves_nothing_begun(sqlite_engine: AsyncEngine) -> None:
    """A transaction that ran no statement (committed or rolled back) sends no BEGIN later: the next
    block on that connection, a read outside any transaction, holds none open (writers are not blocked)."""
    async with writer(sqlite_engine).begin():
        pass
    with pytest.raises(RuntimeError):
        async with writer(sqlite_engine).begin():
            raise RuntimeError("before any statement")
    async with reader(sqlite_engine).connect() as conn:
        await conn.execute(sa.select(companies.c.id))
        assert not await in_database_transaction(sqlite_engine, conn)
    await add_company(sqlite_engine, "C1")
    async with reader(sqlite_engine).connect() as conn:
        assert list((await conn.execute(sa.select(companies.c.id))).scalars()) == ["C1"]
