"""A private PgBouncer (Debian's `pgbouncer`) in transaction pooling mode, in front of the test PostgreSQL.

Started once per session on a free loopback port; a database URL through it carries
`?prepared_statement_cache_size=0`, which is how the relay knows PgBouncer is in between (service/db.py).
Without the binary the tests skip, saying why; under CI=true they fail instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.db import pgbouncer_connect_args
from tests.conftest import POSTGRES_URL, _admin, fresh_postgres, make_settings

BINARY = shutil.which("pgbouncer") or next((p for p in ("/usr/sbin/pgbouncer",) if Path(p).exists()), None)
READY_DEADLINE_S = 10.0
CONFIG = """\
[databases]
* = host={host} port={port}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
auth_type = trust
auth_file = {dir}/users.txt
pool_mode = transaction
unix_socket_dir =
logfile = {dir}/pgbouncer.log
pidfile = {dir}/pgbouncer.pid
max_client_conn = 1000
default_pool_size = 40
ignore_startup_parameters = extra_float_digits,options
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _up(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def engine_for(url: str, **kwargs: Any) -> AsyncEngine:
    """`create_async_engine` for a test's own reads and writes, safe through PgBouncer when `url` goes through
    it (no statement cache, unique statement names: what the relay's engine does, service/db.py)."""
    if connect_args := pgbouncer_connect_args(make_settings(url)):
        kwargs["connect_args"] = connect_args
    return create_async_engine(url, **kwargs)


def through(proxy_port: int, url: str) -> str:
    """The same database reached through PgBouncer, marked as such for the relay."""
    parsed = sa.make_url(url)
    return parsed.set(host="127.0.0.1", port=proxy_port).update_query_dict(
        {"prepared_statement_cache_size": "0"}
    ).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pgbouncer_port() -> Iterator[int]:
    if BINARY is None:
        message = "pgbouncer is not installed (apt-get install pgbouncer; `make .venv/.installed-dev` tries)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    # PgBouncer will not run as root: it drops to `nobody`, who must reach and write this directory (pytest's
    # own temporary directories are private to their owner).
    with tempfile.TemporaryDirectory(prefix="relay-pgbouncer-") as name:
        directory = Path(name)
        directory.chmod(0o777)
        yield from _run(directory)


def _run(directory: Path) -> Iterator[int]:
    target = sa.make_url(POSTGRES_URL)
    port = _free_port()
    (directory / "users.txt").write_text(f'"{target.username}" ""\n')
    (directory / "pgbouncer.ini").write_text(
        CONFIG.format(host=target.host, port=target.port or 5432, listen=port, dir=directory)
    )
    command = [BINARY, *(["-u", "nobody"] if os.geteuid() == 0 else []), str(directory / "pgbouncer.ini")]
    with (directory / "stdout.log").open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + READY_DEADLINE_S
        while not _up(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer did not start: {(directory / 'stdout.log').read_text()[-2000:]}")
            time.sleep(0.05)  # waiting for a child process to listen, with a deadline
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def pgbouncer_database_url(postgres_template: str, pgbouncer_port: int) -> Iterator[str]:
    """A fresh PostgreSQL database, reached through PgBouncer: modules that collect another module's tests
    again through PgBouncer define `database_url` (and `postgres_url`) as this."""
    name, url = fresh_postgres(postgres_template)
    yield through(pgbouncer_port, url)
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
