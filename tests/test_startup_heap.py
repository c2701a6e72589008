"""The CLI's processes freeze what start-up made (service.web.app.freeze_startup_heap), so that a full garbage
collection scans only what was made since instead of stalling the event loop over every module and class."""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette

from service.web.app import AppOptions, create_app, create_worker_app
from tests.conftest import make_settings
from tests.integration.harness import free_port, relay_env, start, stop, wait_http

# A process that imported the relay holds some 100,000 objects the collector tracks; an empty freeze is 0.
MANY = 10_000


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """Whatever a test freezes goes back to the collector: this pytest process runs many apps."""
    assert gc.get_freeze_count() == 0
    yield
    gc.unfreeze()


def _scanned(obj: object) -> bool:
    """Whether a full collection looks at `obj` (frozen objects are in no generation)."""
    return any(o is obj for o in gc.get_objects())


@pytest.mark.parametrize("make", [create_app, create_worker_app])
async def test_an_app_asked_to_freezes_its_startup_objects(
    unfrozen: None, make: Callable[..., Starlette], tmp_path: Path
) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}")
    app = make(settings, options=AppOptions(freeze_heap=True))
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() >= MANY
        assert not _scanned(app)


async def test_an_app_by_default_freezes_nothing(unfrozen: None, tmp_path: Path) -> None:
    """Tests build apps without the option: their process keeps collecting everything."""
    app = create_app(make_settings(f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}"))
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() == 0
        assert _scanned(app)


@pytest.mark.parametrize("role", ["web", "worker"])
def test_the_cli_processes_freeze_their_startup_heap(role: str, database_url: str, tmp_path: Path) -> None:
    """`codat-relay web` and `codat-relay worker`, started as a user starts them, log how much they froze."""
    port, log_path = free_port(), tmp_path / f"{role}.log"
    migrated = start(["migrate"], relay_env(database_url, free_port()), tmp_path / "migrate.log")
    assert migrated.wait(timeout=120) == 0, (tmp_path / "migrate.log").read_text()
    proc = start([role], relay_env(database_url, port, RELAY_LOG_LEVEL="info"), log_path)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        deadline = time.monotonic() + 30
        while not (frozen := _frozen_lines(log_path)):
            assert time.monotonic() < deadline, log_path.read_text()[-2000:]
            time.sleep(0.05)
    finally:
        stop(proc)
    assert len(frozen) == 1
    assert frozen[0]["objects"] >= MANY


def _frozen_lines(path: Path) -> list[dict[str, int]]:
    return [json.loads(text) for text in path.read_text().splitlines() if '"startup_heap_frozen"' in text]
