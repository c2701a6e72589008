"""An open-loop paced generator: pre-built raw HTTP requests sent at fixed intervals, whatever the answers do.

A closed-loop client (wrk, or N workers each waiting for its answer) slows down when the server does and so
hides queueing ("coordinated omission"). Here request i is due at start + i / rate; it goes out on an idle
keep-alive connection, or a new one when every open connection is still waiting for an answer. Requests are
signed and serialised before the clock starts, so the generator's own CPU cost is one socket write per
request. Timestamps are wall-clock UNIX seconds (`time.time()`), the clock the relay stores in its rows.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

CONNECTION_LIMIT = 2048  # beyond this many open connections a request waits, and that shows as send lag
ANSWER_TIMEOUT_S = 15.0  # Codat's own delivery timeout: a slower answer counts as an error
START_DELAY_S = 0.05  # the first request is due a little after the schedule is fixed
# uvicorn closes a keep-alive connection idle for 5 s; reusing one it may be closing loses the request,
# so older idle connections are dropped and a fresh one opened instead.
IDLE_MAX_S = 3.0


@dataclass
class Sent:
    """One request's fate."""

    scheduled: float  # when the schedule said it was due
    sent: float = 0.0  # when its bytes were written (later than `scheduled` if the generator lagged)
    answered: float | None = None
    status: int | None = None
    error: str | None = None

    @property
    def lag(self) -> float:
        return self.sent - self.scheduled


class _Pool:
    """Idle keep-alive connections; opens another when none is idle, up to `CONNECTION_LIMIT`."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._idle: list[tuple[float, tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = []
        self._slots = asyncio.Semaphore(CONNECTION_LIMIT)
        self.opened = 0

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.opened += 1
        return await asyncio.open_connection(self._host, self._port)

    async def warm(self, count: int) -> None:
        """Open `count` connections before the timed phase, so connection set-up is not in the figures."""
        now = time.monotonic()
        self._idle.extend((now, conn) for conn in await asyncio.gather(*(self._open() for _ in range(count))))

    async def acquire(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        await self._slots.acquire()
        while self._idle:
            released, conn = self._idle.pop()  # the most recently used first
            if time.monotonic() - released < IDLE_MAX_S:
                return conn
            conn[1].close()
        try:
            return await self._open()
        except OSError:
            self._slots.release()
            raise

    def release(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], reusable: bool) -> None:
        if reusable:
            self._idle.append((time.monotonic(), conn))
        else:
            conn[1].close()
        self._slots.release()

    async def close(self) -> None:
        for _, (_, writer) in self._idle:
            writer.close()
        self._idle.clear()


async def _read_answer(reader: asyncio.StreamReader) -> int:
    """The status of one HTTP/1.1 answer, its body read (Content-Length framing: all our servers use it)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def _send_one(pool: _Pool, raw: bytes, record: Sent) -> None:
    try:
        conn = await pool.acquire()
    except OSError as exc:
        record.sent, record.error = time.time(), f"connect: {type(exc).__name__}"
        return
    reader, writer = conn
    reusable = False
    record.sent = time.time()
    try:
        writer.write(raw)
        record.status = await asyncio.wait_for(_read_answer(reader), ANSWER_TIMEOUT_S)
        record.answered = time.time()
        reusable = True
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError) as exc:
        record.error = type(exc).__name__
    finally:
        pool.release(conn, reusable)


async def run(host: str, port: int, requests: list[bytes], rate: float, connections: int) -> tuple[list[Sent], int]:
    """Send every request on schedule; returns each one's record and how many connections were opened."""
    pool = _Pool(host, port)
    await pool.warm(connections)
    interval = 1.0 / rate
    start = time.time() + START_DELAY_S
    records = [Sent(scheduled=start + i * interval) for i in range(len(requests))]
    tasks = []
    try:
        for raw, record in zip(requests, records, strict=True):
            # Absolute due times: an oversleep is caught up at once, so the average rate stays exact.
            delay = record.scheduled - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_send_one(pool, raw, record)))
        await asyncio.gather(*tasks)
    finally:
        await pool.close()
    return records, pool.opened
