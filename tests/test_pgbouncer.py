"""The relay through PgBouncer in transaction pooling mode: the queue's and the receiver's tests again.

Every test below is another module's (tests/test_queue.py, tests/test_claim_ahead.py,
tests/test_batch_writers.py, tests/test_hot_reads.py), collected here a second time with
`database_url`/`postgres_url` pointing through a private PgBouncer (tests/pgbouncer.py): no prepared
statement outlives its transaction, and workers poll (no LISTEN through PgBouncer) unless
RELAY_DATABASE_LISTEN_URL is set. The multi-process queue tests and the crash test are collected again
beside their modules: tests/integration/test_workers_pgbouncer.py, tests/reliability/test_crash_pgbouncer.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import POSTGRES_URL, _admin, fresh_postgres
from tests.pgbouncer import engine_for, pgbouncer_port, through  # noqa: F401
from tests.test_batch_writers import *  # noqa: F403 - the receiver's one-statement batch, through PgBouncer
from tests.test_claim_ahead import *  # noqa: F403 - the whole module again, through PgBouncer
from tests.test_hot_reads import *  # noqa: F403 - hot-path reads on their own asyncpg pool, through PgBouncer
from tests.test_queue import *  # noqa: F403 - the whole module again, through PgBouncer

# LISTEN cannot pass PgBouncer's transaction pooling: workers poll there unless RELAY_DATABASE_LISTEN_URL
# gives them a direct connection (test_notify_through_pgbouncer_wakes_a_worker_listening_directly).
del test_notify_wakes_worker_on_postgres, test_a_round_finishing_a_keyed_job_notifies_named_for_its_worker  # noqa: F821
# The server's sessions are PgBouncer's, not the read pool's: ending them tells nothing of the pool's reads.
del test_reads_after_the_server_ended_their_connections_succeed_on_fresh_ones  # noqa: F821


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



# Another client of PgBouncer, as asyncpg is by default: it leaves its named statements
# (__asyncpg_stmt_1__, …) on the server connection PgBouncer hands the next client.
POLLUTER = """
import asyncio, asyncpg, sys
async def main():
    conn = await asyncpg.connect(sys.argv[1])
    for n in range(200):
        await conn.fetch(f"SELECT {n}")
    await conn.close()
asyncio.run(main())
"""
MIGRATE = "import sys; from service import migrate; migrate.upgrade(sys.argv[1])"


def test_migrations_run_through_pgbouncer(postgres_template: str, pgbouncer_port: int) -> None:  # noqa: F811
    """`codat-relay migrate` (and `serve`'s start) in a new process through PgBouncer, after another client
    left its prepared statements on the server connections: an empty database reaches head. (The migrations
    connect with the engine's PgBouncer arguments; this run passes without them too, so it shows that
    migrating through PgBouncer works, not that those arguments are needed there.)"""
    import subprocess
    import sys
    import uuid

    from service import migrate

    name = f"relay_t_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        url = through(pgbouncer_port, POSTGRES_URL.rsplit("/", 1)[0] + "/" + name)
        plain = sa.make_url(url).set(drivername="postgresql").difference_update_query(["prepared_statement_cache_size"])
        subprocess.run([sys.executable, "-c", POLLUTER, plain.render_as_string(hide_password=False)], check=True,
                       timeout=60)  # fmt: skip
        done = subprocess.run([sys.executable, "-c", MIGRATE, url], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert _revision(url) == migrate.head_revision()
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _revision(url: str) -> str | None:
    async def read() -> str | None:
        engine = engine_for(url)
        try:
            async with engine.connect() as conn:
                return (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).scalar()
        finally:
            await engine.dispose()

    return asyncio.run(read())


async def test_notify_through_pgbouncer_wakes_a_worker_listening_directly(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind PgBouncer, a worker given a direct LISTEN connection (RELAY_DATABASE_LISTEN_URL) is woken by an
    enqueue's NOTIFY sent through PgBouncer: idle, no poll for an hour, no wake(), it starts the job."""
    from service.db import create_engine
    from tests.conftest import make_settings
    from tests.queue_helpers import running
    from tests.test_queue import IDLE_POLL_S, WAKE_DEADLINE_S, ClaimSpy, make_worker
    from tests.test_queue import add as enqueue_one

    server = sa.make_url(POSTGRES_URL)
    direct = sa.make_url(database_url).set(drivername="postgresql", host=server.host, port=server.port)
    direct = direct.difference_update_query(["prepared_statement_cache_size"])
    engine = create_engine(make_settings(database_url))
    claims, done = ClaimSpy(monkeypatch), asyncio.Event()

    async def finish(job: Any, attempt: int) -> None:
        done.set()

    worker = make_worker(engine, {"test": finish}, poll_interval_s=IDLE_POLL_S,
                         listen_dsn=direct.render_as_string(hide_password=False))  # fmt: skip
    try:
        async with running(worker):
            await claims.until_idle()
            job_id = await enqueue_one(engine)  # commits with a NOTIFY, through PgBouncer
            await asyncio.wait_for(done.wait(), WAKE_DEADLINE_S)
    finally:
        await engine.dispose()
    assert claims.claimed[:2] == [[], [job_id]]
