"""A TCP proxy that can go silent: a database server (or the network to it) that stops answering without closing
its sockets, which is what a dead connection looks like to a client until its own timeouts run out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import sqlalchemy as sa

CHUNK = 65536


class SilentProxy:
    """Forwards 127.0.0.1:`port` to `host:port`; `silence()` holds every byte from then on, either way, and
    accepts new connections without answering them. Nothing is closed until `close()`."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accepted, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def silence(self) -> None:
        self._flowing.clear()

    def url(self, database_url: str) -> str:
        """`database_url` (host and port of the target) reached through this proxy instead."""
        return sa.make_url(database_url).set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    async def _accepted(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self._writers.append(client_w)
        server_r, server_w = await asyncio.open_connection(*self._target)
        self._writers.append(server_w)
        for reader, writer in ((client_r, server_w), (server_r, client_w)):
            task = asyncio.create_task(self._pipe(reader, writer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(CHUNK):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        writer.close()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@contextlib.asynccontextmanager
async def silent_proxy(database_url: str) -> AsyncIterator[SilentProxy]:
    """A proxy to `database_url`'s server, closed (every socket aborted) on leaving the block."""
    url = sa.make_url(database_url)
    proxy = SilentProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
