"""The crash test again, through a private PgBouncer in transaction pooling mode.

tests/reliability/test_crash.py collected a second time with `database_url` pointing through PgBouncer
(tests/pgbouncer.py): `codat-relay serve` SIGKILLed under load, every acknowledged delivery processed
exactly once in effect. The fast plan runs in `make test`, the full one in `make reliability`.
"""

from __future__ import annotations

import pytest

from tests.pgbouncer import pgbouncer_database_url, pgbouncer_port  # noqa: F401
from tests.reliability.test_crash import *  # noqa: F403 - the whole module again, through PgBouncer


@pytest.fixture
def database_url(pgbouncer_database_url: str) -> str:  # noqa: F811
    return pgbouncer_database_url
