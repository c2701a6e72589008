"""The multi-process queue tests again, through a private PgBouncer in transaction pooling mode.

tests/integration/test_workers.py collected a second time with `postgres_url`/`database_url` pointing
through PgBouncer (tests/pgbouncer.py): three worker processes keeping per-key order, a worker SIGKILLed
mid-job, and one SIGKILLed holding jobs claimed ahead — each completed exactly once by the others.
Workers there poll (no LISTEN through PgBouncer). The two crash tests run in `make test`; the three-worker
run (the slowest) only in `make reliability`, to keep `make test`'s added time small.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration import test_workers
from tests.integration.test_workers import *  # noqa: F403 - the whole module again, through PgBouncer
from tests.pgbouncer import pgbouncer_database_url, pgbouncer_port  # noqa: F401
from tests.reliability.common import slow

pytestmark = pytest.mark.integration



async def _three_workers(postgres_url: str, spawn: Any, tmp_path: Path) -> None:
    """2,000 jobs over 50 keys and 3 processes through PgBouncer: each runs once, keys never overlap, order kept."""
    await test_workers.test_three_workers_keep_per_key_order(postgres_url, spawn, tmp_path)


for _mark in slow:  # a wrapper, so that the original in test_workers.py stays unmarked
    _three_workers = _mark(_three_workers)
test_three_workers_keep_per_key_order = _three_workers


@pytest.fixture
def database_url(pgbouncer_database_url: str) -> str:  # noqa: F811
    return pgbouncer_database_url


@pytest.fixture
def postgres_url(pgbouncer_database_url: str) -> str:  # noqa: F811
    return pgbouncer_database_url
