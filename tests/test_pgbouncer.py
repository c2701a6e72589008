"""The relay through PgBouncer in transaction pooling mode: the queue's tests again.

Every test below is another module's, collected here a second time with `database_url`/`postgres_url`
pointing through a private PgBouncer (tests/pgbouncer.py): no prepared statement outlives its
transaction, and workers poll (no LISTEN through PgBouncer) unless RELAY_DATABASE_LISTEN_URL is set.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import POSTGRES_URL, _admin, fresh_postgres
from tests.pgbouncer import pgbouncer_port, through  # noqa: F401
from tests.test_queue import *  # noqa: F403 - the whole module again, through PgBouncer

# LISTEN cannot pass PgBouncer's transaction pooling: workers poll there unless RELAY_DATABASE_LISTEN_URL
# gives them a direct connection. (Still to write: that test, and the crash and worker-kill tests through
# PgBouncer, which fail at the time of this commit.)
del test_notify_wakes_worker_on_postgres  # noqa: F821


@pytest.fixture
def database_url(postgres_template: str, pgbouncer_port: int) -> Iterator[str]:  # noqa: F811
    """A fresh PostgreSQL database, reached through PgBouncer."""
    name, url = fresh_postgres(postgres_template)
    yield through(pgbouncer_port, url)
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(database_url: str) -> str:
    return database_url


async def test_the_url_through_pgbouncer_is_marked(database_url: str) -> None:
    """The fixture's URL goes to PgBouncer's port and carries the mark the relay reads."""
    from service.db import behind_pgbouncer

    assert behind_pgbouncer(database_url) and ":5432/" not in database_url and POSTGRES_URL
