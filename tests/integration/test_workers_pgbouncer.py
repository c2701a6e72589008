"""The multi-process queue tests again, through a private PgBouncer in transaction pooling mode.

tests/integration/test_workers.py collected a second time with `postgres_url`/`database_url` pointing
through PgBouncer (tests/pgbouncer.py): three worker processes keeping per-key order, a worker SIGKILLed
mid-job, and one SIGKILLed holding jobs claimed ahead — each completed exactly once by the others.
Workers there poll (no LISTEN through PgBouncer).
"""

from __future__ import annotations

import pytest

from tests.integration.test_workers import *  # noqa: F403 - the whole module again, through PgBouncer
from tests.pgbouncer import pgbouncer_database_url, pgbouncer_port  # noqa: F401

pytestmark = pytest.mark.integration


@pytest.fixture
def database_url(pgbouncer_database_url: str) -> str:  # noqa: F811
    return pgbouncer_database_url


@pytest.fixture
def postgres_url(pgbouncer_database_url: str) -> str:  # noqa: F811
    return pgbouncer_database_url
