"""Small reads on hot paths (a handler's lookup per alert) without a pooled SQLAlchemy connection.

Through the engine's pool such a read cost the relay ~250-300 µs of CPU (checkout, SQLAlchemy's execute,
its result, checkin; on SQLite a hop to aiosqlite's thread and back) around a few µs of the database's own
work. Here, on an SQLite file, the read runs on the event loop's own thread (`LoopReader`); on PostgreSQL,
on a few asyncpg connections of its own, with nothing to reset between reads. The semantics are
`service.db.reader`'s: no transaction, each statement sees what was committed when it started, nothing is
cached between reads. On PostgreSQL a read that finds its connection dead (the server restarted) is tried once
more, on a fresh one; a read whose statement fails never is.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import sqlalchemy as sa
from asyncpg.exceptions import AdminShutdownError, CrashShutdownError
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import PGBOUNCER_QUERY, PerThread, behind_pgbouncer, reader, sqlite_path
from service.sqlite_driver import LoopReader

PG_CONNECTIONS = 4  # reads of a few ms at most, hundreds a second: a few connections keep them from queueing
PG_CONNECT_TIMEOUT_S = 5.0
PG_COMMAND_TIMEOUT_S = 30.0


async def read_column(engine: AsyncEngine, statement: sa.Select[Any], params: Mapping[str, Any]) -> list[Any]:
    """The first column of a small read on a hot path, with `reader`'s semantics.

    The statement's columns and parameters must be ones the driver reads and returns as they are (text,
    numbers, booleans on PostgreSQL): no SQLAlchemy type processing is done (checked when first compiled).
    """
    if engine.dialect.name == "postgresql":
        sql, names = _compiled(engine, statement)
        return [row[0] for row in await _pg_fetch(engine, sql, [params[name] for name in names])]
    loop_reader = _loop_reader(engine)
    if loop_reader is not None:
        sql, names = _compiled(engine, statement)
        try:
            return loop_reader.column(sql, [params[name] for name in names])
        except sqlite3.OperationalError:
            pass  # busy: the pool's connection waits in its own thread (and a real fault raises there too)
    async with reader(engine).connect() as conn:
        return list((await conn.execute(statement, params)).scalars())


_PLAIN_TYPES = (sa.String, sa.Integer, sa.Float, sa.Boolean, sa.types.NullType)

# Each statement's text for each dialect and the order of its parameters, compiled once.
_COMPILED: weakref.WeakKeyDictionary[sa.Select[Any], dict[str, tuple[str, tuple[str, ...]]]] = (
    weakref.WeakKeyDictionary()
)


def _compiled(engine: AsyncEngine, statement: sa.Select[Any]) -> tuple[str, tuple[str, ...]]:
    by_dialect = _COMPILED.setdefault(statement, {})
    dialect = engine.dialect
    found = by_dialect.get(dialect.name)
    if found is None:
        compiled = statement.compile(dialect=dialect)
        types = [b.type for b in compiled.binds.values()] + [c.type for c in statement.selected_columns]
        processed = [t.bind_processor(dialect) for t in types[: len(compiled.binds)]] + [
            t.result_processor(dialect, None) for t in types[len(compiled.binds) :]
        ]
        # Plain types only: asyncpg decodes some others (JSON) by codecs SQLAlchemy sets on its own connections.
        plain = all(isinstance(t, _PLAIN_TYPES) for t in types)
        if not plain or any(processed) or compiled.literal_execute_params or compiled.post_compile_params:
            raise ValueError(f"not a plain read: {statement}")
        found = by_dialect[dialect.name] = (str(compiled), tuple(compiled.positiontup or ()))
    return found


# -- SQLite: one LoopReader per engine and thread, closed when the engine is disposed ------------------

_LOOP_READERS: PerThread[LoopReader] = PerThread(LoopReader.close)


def _loop_reader(engine: AsyncEngine) -> LoopReader | None:
    """This thread's `LoopReader` of an SQLite file engine; None in memory, or before the file exists."""
    path = sqlite_path(engine.url)
    if path is None:
        return None
    try:
        return _LOOP_READERS.get(engine, lambda: LoopReader(path))
    except sqlite3.OperationalError:  # no file yet: the pool's first connection makes it
        return None


# -- PostgreSQL: an asyncpg pool per engine (and event loop), terminated when the engine is disposed -------


@dataclass
class _PgPools:
    loop: asyncio.AbstractEventLoop | None = None
    opening: asyncio.Task[asyncpg.Pool] | None = None


_PG_POOLS: weakref.WeakKeyDictionary[AsyncEngine, _PgPools] = weakref.WeakKeyDictionary()


async def _pg_pool(engine: AsyncEngine) -> asyncpg.Pool:
    pools = _PG_POOLS.get(engine)
    if pools is None:
        pools = _PG_POOLS[engine] = _PgPools()
        event.listen(engine.sync_engine, "engine_disposed", lambda _: _terminate(pools))
    loop = asyncio.get_running_loop()
    if pools.opening is None or pools.loop is not loop:  # a pool belongs to one loop (tests run many)
        _terminate(pools)
        pools.loop, pools.opening = loop, loop.create_task(_open_pool(engine))
    opening = pools.opening
    if opening.done() and not opening.cancelled() and opening.exception() is None:
        return opening.result()
    try:
        return await asyncio.shield(opening)  # shielded: a cancelled read does not cancel the others' pool
    except Exception:
        if pools.opening is opening:
            pools.opening = None  # the next read tries again
        raise


async def _open_pool(engine: AsyncEngine) -> asyncpg.Pool:
    url = engine.url
    dsn = url.difference_update_query([PGBOUNCER_QUERY]).set(drivername="postgresql")
    return await asyncpg.create_pool(
        dsn.render_as_string(hide_password=False), min_size=0, max_size=PG_CONNECTIONS, reset=_keep,
        timeout=PG_CONNECT_TIMEOUT_S, command_timeout=PG_COMMAND_TIMEOUT_S,
        # Behind PgBouncer no statement is kept prepared (asyncpg's unnamed ones live one round trip), as the
        # receiver's batch writer does.
        statement_cache_size=0 if behind_pgbouncer(url) else 100,
    )  # fmt: skip


async def _pg_fetch(engine: AsyncEngine, sql: str, args: list[Any]) -> list[asyncpg.Record]:
    pool = await _pg_pool(engine)
    try:
        rows: list[asyncpg.Record] = await pool.fetch(sql, *args)
        return rows
    except Exception as exc:
        if not _connection_died(exc):
            raise
    # After a restart every idle connection of the pool is as dead as this one, and asyncpg notices only when
    # its event loop gets to read their sockets: all are replaced (as SQLAlchemy invalidates its pool on a
    # disconnect) and the read is tried once more, on a fresh one. A read has no effects to repeat.
    await pool.expire_connections()
    rows = await pool.fetch(sql, *args)
    return rows


def _connection_died(exc: Exception) -> bool:
    """Whether a read failed because its connection was dead (the server ended the session: a restart,
    `pg_terminate_backend`), not because of its statement or its arguments."""
    if isinstance(exc, TimeoutError):  # an OSError, but a read slower than PG_COMMAND_TIMEOUT_S: not run twice
        return False
    if isinstance(exc, (asyncpg.PostgresConnectionError, AdminShutdownError, CrashShutdownError, OSError)):
        return True
    # Exactly these classes, not their subclasses (a bad argument, a stale schema cache): a closed connection
    # raises a plain InterfaceError; one the server ended while idle, whose error message asyncpg read but
    # whose close it has not yet, refuses the next query with a plain InternalClientError ("cannot switch to
    # state ...; another operation is in progress").
    return type(exc) in (asyncpg.InterfaceError, asyncpg.InternalClientError)


async def _keep(conn: asyncpg.Connection) -> None:
    """Nothing to reset: these reads leave no session state (asyncpg's own reset is a round trip)."""


def _terminate(pools: _PgPools) -> None:
    opening, pools.opening, pools.loop = pools.opening, None, None
    if opening is None:
        return
    with contextlib.suppress(RuntimeError):  # its loop may be closed already (the engine outlived it)
        if opening.done() and not opening.cancelled() and opening.exception() is None:
            opening.result().terminate()
        else:
            opening.cancel()
