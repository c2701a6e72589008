"""The real app in-process, driven from synchronous code (hypothesis tests are synchronous).

`running_app` needs an event loop for its whole life; an anyio blocking portal keeps one on a thread, so
each hypothesis example is a plain `portal.call(...)`, and the app (engine, ingest writer) is built once
per test rather than once per example. The app logs as the service does (JSON, redacted, stdlib lines
too, at info) into the running test's directory, which the session's log scan reads (logscan.py).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import sqlalchemy as sa
import structlog
from anyio.from_thread import BlockingPortal, start_blocking_portal
from starlette.applications import Starlette

from service.clock import Clock
from service.logs import QUIET_LOGGERS, configure_logging
from service.settings import Settings
from service.testing import running_app
from tests.reliability import logscan

_numbers = itertools.count()


@dataclass
class App:
    portal: BlockingPortal
    app: Starlette
    client: httpx.AsyncClient

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self.portal.call(lambda: self.client.request(method, url, **kwargs))

    def scalar(self, query: sa.Executable) -> Any:
        async def run() -> Any:
            async with self.app.state.runtime.engine.connect() as conn:
                return await conn.scalar(query)

        return self.portal.call(run)

    def rows(self, query: sa.Executable) -> list[sa.Row[Any]]:
        async def run() -> list[sa.Row[Any]]:
            async with self.app.state.runtime.engine.connect() as conn:
                return list(await conn.execute(query))

        return self.portal.call(run)


@contextmanager
def logged_like_the_service(settings: Settings) -> Iterator[None]:
    """Log into the running test's directory as `codat-relay` would; put logging back afterwards."""
    if logscan.current_dir is None:
        yield
        return
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    path = logscan.current_dir / f"inprocess-{next(_numbers)}.log"
    with path.open("a") as stream:
        configure_logging(settings.model_copy(update={"log_level": "info", "log_format": "json"}), stream,
                          capture_stdlib=True)  # fmt: skip
        try:
            yield
        finally:
            structlog.reset_defaults()
            root.handlers[:] = handlers
            root.setLevel(level)
            for name, saved in quiet.items():
                logging.getLogger(name).setLevel(saved)


@contextmanager
def app_in_thread(settings: Settings, clock: Clock | None = None) -> Iterator[App]:
    app_cm = running_app(settings, clock=clock)
    with (
        logged_like_the_service(settings),
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(app_cm) as (app, client),
    ):
        yield App(portal, app, client)
