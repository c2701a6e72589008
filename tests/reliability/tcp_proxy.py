"""A TCP forwarder the test controls: PostgreSQL made unreachable for one relay, not for everyone.

Stopping the shared PostgreSQL server would fail every other test running on this machine, so the
outage test puts this proxy between the relay and PostgreSQL. `cut()` aborts every open connection
(in-flight queries die with a connection reset) and stops listening, so new connections are refused —
from the relay's side this is exactly "the database host went away". `restore()` listens again on the
same port, as a restarted server would.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any

from tests.integration.harness import free_port

CHUNK = 65536


class CuttableProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._generation = 0  # bumped by every cut: a connection accepted before a cut must not outlive it

    async def __aenter__(self) -> CuttableProxy:
        await self.restore()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.cut()

    @property
    def is_up(self) -> bool:
        return self._server is not None

    async def restore(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    async def cut(self) -> None:
        server, self._server = self._server, None
        self._generation += 1
        if server is not None:
            server.close()
        for client, upstream in list(self._links):
            for writer in (client, upstream):
                writer.transport.abort()  # RST, not FIN: in-flight statements fail at once
        self._links.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None:  # accepted by the kernel just before a cut, handled just after it
            writer.transport.abort()
            return
        generation = self._generation
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        if generation != self._generation or self._server is None:  # cut while connecting upstream
            writer.transport.abort()
            up_writer.transport.abort()
            return
        link = (writer, up_writer)
        self._links.add(link)
        pumps = [asyncio.create_task(_pump(reader, up_writer)), asyncio.create_task(_pump(up_reader, writer))]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
                self._tasks.discard(task)
            self._links.discard(link)
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError, asyncio.IncompleteReadError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()


class ProxyThread:
    """The proxy on its own event loop and thread, so the test's load generator cannot slow its pumping.

    `cut()` / `restore()` are awaitable from the test's loop; they return once done on the proxy's loop.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self.proxy = CuttableProxy(upstream_host, upstream_port)

    @property
    def port(self) -> int:
        return self.proxy.port

    async def __aenter__(self) -> ProxyThread:
        self._thread.start()
        await self._call(self.proxy.restore())
        return self

    async def __aexit__(self, *_: object) -> None:
        try:
            await self._call(self.proxy.cut())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            await asyncio.to_thread(self._thread.join, 5)
            self._loop.close()

    async def cut(self) -> None:
        await self._call(self.proxy.cut())

    async def restore(self) -> None:
        await self._call(self.proxy.restore())

    async def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))
