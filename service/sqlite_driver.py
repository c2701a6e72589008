"""SQLAlchemy's aiosqlite driver, with each statement ONE hop to the connection's thread.

aiosqlite runs every call on its connection's own thread, and SQLAlchemy's adapter makes four calls of a
statement that returns rows (open a cursor, execute, fetch, close) and three of one that does not: each a
queue hand-off, a thread wake-up and a future resolved back on the event loop (~30 µs of CPU alone, more
with the GIL contended). Under bench_e2e that was a quarter of the relay's SQLite statements' cost. Here the
cursor's whole life runs in one call on that thread, and the adapter keeps what SQLAlchemy reads afterwards
(description, rowcount, lastrowid, the rows). Everything else is SQLAlchemy's adapter as it is.
"""

from __future__ import annotations

import collections
import sqlite3
import urllib.parse
from collections.abc import Sequence
from typing import Any, cast

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

_Ran = tuple[Any, int, Any, list[Any]]  # description, rowcount, lastrowid, rows


def _run(conn: sqlite3.Connection, operation: str, parameters: Any, many: bool, begin: str | None) -> _Ran:
    """On the connection's thread: the transaction's deferred BEGIN if any, then the statement from cursor
    to close."""
    if begin is not None:
        conn.execute(begin)
    cursor = conn.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


class OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    """A buffered cursor whose statement runs in one call on aiosqlite's thread (no server-side cursors
    here: SQLAlchemy asks the connection for `OneHopConnection._ss_cursor_cls`, left as it was)."""

    __slots__ = ("_arraysize", "_ran")

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._ran: _Ran = (None, -1, None, [])
        self._arraysize = 1

    @property
    def description(self) -> Any:
        return self._ran[0]

    @property
    def rowcount(self) -> int:
        return self._ran[1]

    @property
    def lastrowid(self) -> Any:
        return self._ran[2]

    @property
    def arraysize(self) -> int:
        return self._arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._arraysize = value

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        try:
            return await_(self._execute_one_hop(operation, parameters, many=False))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    def executemany(self, operation: Any, seq_of_parameters: Sequence[Any]) -> Any:
        try:
            return await_(self._execute_one_hop(operation, seq_of_parameters, many=True))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    async def _execute_one_hop(self, operation: Any, parameters: Any, *, many: bool) -> None:
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        adapt: OneHopConnection = self._adapt_connection  # type: ignore[assignment]
        async with adapt._execute_mutex:
            begin, adapt.deferred_begin = adapt.deferred_begin, None
            self._ran = await connection._execute(_run, connection._conn, operation, parameters, many, begin)  # type: ignore[no-untyped-call]
            self._rows = collections.deque(self._ran[3])

    async def _async_soft_close(self) -> None:
        return  # nothing is open on the thread: the cursor was closed there

    def close(self) -> None:
        self._rows.clear()


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    """Also: a transaction's BEGIN is sent with its first statement, in the same hop (`defer_begin`)."""

    __slots__ = ("deferred_begin",)
    _cursor_cls = OneHopCursor  # type: ignore[assignment]  # a subclass; mypy weighs the constructors

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        self.deferred_begin: str | None = None

    def defer_begin(self, statement: str) -> None:
        """Send `statement` (BEGIN or BEGIN IMMEDIATE) just before the next statement, in its hop: every
        write transaction saved a hop to aiosqlite's thread and back (a worker's round is one, hundreds a
        second at 500 deliveries/s). Where SQLite would wait for the write lock, it waits there instead."""
        self.deferred_begin = statement

    def commit(self) -> None:
        if self._forget_begin():
            return
        super().commit()

    def rollback(self) -> None:
        if self._forget_begin():
            return
        super().rollback()

    def _forget_begin(self) -> bool:
        """A transaction that ran no statement: its BEGIN was never sent, so SQLite has nothing to end."""
        begun, self.deferred_begin = self.deferred_begin, None
        return begun is not None


async def fetch_all(connection: AsyncAdapt_aiosqlite_connection, operation: str, parameters: Any) -> list[Any]:
    """A statement run straight on the driver inside the connection's transaction, in one hop: its rows.

    Past SQLAlchemy's cursor, so the transaction's deferred BEGIN (`OneHopConnection.defer_begin`) is sent
    here, first in the same hop: without it the statement would run outside the transaction, committed on
    its own, and the transaction's COMMIT would find nothing begun."""
    driver: aiosqlite.Connection = connection._connection  # type: ignore[assignment]
    begin = None
    async with connection._execute_mutex:
        if isinstance(connection, OneHopConnection):
            begin, connection.deferred_begin = connection.deferred_begin, None
        ran: _Ran = await driver._execute(_run, driver._conn, operation, parameters, False, begin)  # type: ignore[no-untyped-call]
    return ran[3]


class OneHopDbapi(AsyncAdapt_aiosqlite_dbapi):
    """The `module=` of an aiosqlite engine (service.db.create_engine): its connections are `OneHopConnection`."""

    def connect(self, *arg: Any, **kw: Any) -> AsyncAdapt_aiosqlite_connection:
        adapted = super().connect(*arg, **kw)
        return OneHopConnection(self, adapted._connection)


def one_hop_dbapi() -> OneHopDbapi:
    return OneHopDbapi(aiosqlite, sqlite3)


class InlineAiosqlite(aiosqlite.Connection):
    """aiosqlite's connection with every call made on the caller's thread (the event loop's): no thread of its
    own, so no hand-off, wake-up and future per statement. For short transactions that never wait on SQLite's
    lock: its connection answers busy at once (service.db.loop_engine), and the caller takes the pooled path."""

    async def _execute(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)

    async def _connect(self) -> InlineAiosqlite:
        if self._connection is None:
            self._connection = self._connector()
        return self

    def __await__(self) -> Any:
        return self._connect().__await__()  # no thread to start

    def stop(self) -> None:
        self._running = False
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def close(self) -> None:
        self.stop()


class InlineConnection(OneHopConnection):
    """A `OneHopConnection` over `InlineAiosqlite`: SQLAlchemy's adapter sets the isolation level through
    aiosqlite's thread queue, which has no thread here."""

    __slots__ = ()

    @property
    def isolation_level(self) -> str | None:
        return cast(str | None, self._connection.isolation_level)

    @isolation_level.setter
    def isolation_level(self, value: str | None) -> None:
        self._connection._conn.isolation_level = value


class InlineDbapi(OneHopDbapi):
    """The `module=` of `service.db.loop_engine`: `InlineConnection`s over `InlineAiosqlite`."""

    def connect(self, *arg: Any, **kw: Any) -> AsyncAdapt_aiosqlite_connection:
        kw.pop("async_creator_fn", None)
        iter_chunk_size = kw.pop("iter_chunk_size", 64)
        # check_same_thread off only so that whoever disposes the engine may close it; statements stay on the
        # thread that made it (service.db keeps one per thread).
        kw["check_same_thread"] = False
        driver = InlineAiosqlite(lambda: sqlite3.connect(*arg, **kw), iter_chunk_size)
        return InlineConnection(self, await_(driver))


def inline_dbapi() -> InlineDbapi:
    return InlineDbapi(aiosqlite, sqlite3)


class LoopReader:
    """A read-only sqlite3 connection used on the event loop's own thread, for small indexed reads.

    A pooled connection's read costs ~250 µs of the relay's CPU (checkout, SQLAlchemy's execute, the hop
    to aiosqlite's thread and back, checkin) around ~3 µs of SQLite's work; on the loop's thread the read
    is just that work. A WAL reader never waits for a writer, so the loop is not held up; where SQLite
    would still make it wait (a connection holding the file exclusively, a WAL being recovered) it answers
    busy at once instead (no busy handler here) and the caller takes the pooled path, which waits in its
    thread. Autocommit: each statement reads what was committed when it started, as `service.db.reader`.
    """

    def __init__(self, path: str) -> None:
        # check_same_thread off only so that whoever disposes the engine may close it; reads stay on the
        # thread that made it (service.db keeps one per thread).
        # `mode=rw`: never create the file (the engine's own connections do, and make it WAL); `timeout=0`:
        # busy is answered at once, not waited out on the loop.
        uri = f"file:{urllib.parse.quote(path)}?mode=rw"
        self._conn = sqlite3.connect(uri, uri=True, timeout=0, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA query_only=ON")

    def column(self, sql: str, parameters: Sequence[Any]) -> list[Any]:
        """The first column of every row (fetched to the end: no read transaction is left open)."""
        return [row[0] for row in self._conn.execute(sql, parameters).fetchall()]

    def close(self) -> None:
        self._conn.close()
