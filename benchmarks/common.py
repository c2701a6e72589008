"""Shared by benchmarks: throw-away PostgreSQL databases, server processes, tables, machine info."""

from __future__ import annotations

import asyncio
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import asyncpg

REPO = Path(__file__).resolve().parent.parent
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
READY_DEADLINE_S = 30.0
STOP_DEADLINE_S = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def python() -> str:
    """The project's interpreter, as a user runs the service; both servers use it, so they compare fairly."""
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


# --- PostgreSQL -------------------------------------------------------------------------------------


def postgres_admin_url() -> str:
    """A plain libpq URL for asyncpg (RELAY_TEST_POSTGRES_URL may carry SQLAlchemy's `+asyncpg`)."""
    url = os.environ.get("RELAY_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _with_database(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


async def _admin(sql: str) -> str | None:
    conn = await asyncpg.connect(postgres_admin_url())
    try:
        result: str | None = await conn.fetchval(sql) if sql.startswith("SHOW") else await conn.execute(sql)
        return result
    finally:
        await conn.close()


def create_postgres_database() -> tuple[str, str]:
    """(name, SQLAlchemy URL) of a fresh empty database; drop it with `drop_postgres_database`."""
    name = f"relay_bench_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    return name, _with_database(postgres_admin_url(), name).replace("postgresql://", "postgresql+asyncpg://", 1)


def drop_postgres_database(name: str) -> None:
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def postgres_version() -> str:
    try:
        return str(asyncio.run(_admin("SHOW server_version")))
    except (OSError, asyncpg.PostgresError) as exc:
        return f"unavailable ({type(exc).__name__})"


async def _count_postgres(url: str, table: str) -> int:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))  # noqa: S608 -- table is our constant
    finally:
        await conn.close()


def count_rows(database_url: str, table: str) -> int:
    """Rows in `table` of a relay database given by its SQLAlchemy URL (SQLite or PostgreSQL)."""
    if database_url.startswith("sqlite"):
        with sqlite3.connect(database_url.split(":///", 1)[1]) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608 -- table is our constant
    return asyncio.run(_count_postgres(database_url, table))


# --- server processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The caller's environment minus every RELAY_* (the service refuses names it does not know)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(extra)
    return env


class Server:
    """A server process started as a user would start it; stopped with SIGTERM."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], port: int, log_path: Path) -> None:
        self.name = name
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self._log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_DEADLINE_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                # S310: the URL is always http://127.0.0.1:<port>, built above
                with urllib.request.urlopen(self.base_url + "/healthz", timeout=1) as answer:  # noqa: S310
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready within {READY_DEADLINE_S:.0f} s:\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process so far (all its threads)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def log_tail(self, lines: int = 30) -> str:
        if not self._log.closed:
            self._log.flush()
        return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])


def run_checked(cmd: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")


# --- reporting --------------------------------------------------------------------------------------


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain, aligned text table: first column left-aligned, the numbers right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        parts = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def machine_info() -> dict[str, str | int]:
    """What a reader needs to compare runs: cores, interpreter, database versions."""
    version = subprocess.run(
        [
            python(),
            "-c",
            "import platform, sqlite3; print(platform.python_version(), sqlite3.sqlite_version)",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return {
        "cpus": os.cpu_count() or 0,
        "machine": platform.machine(),
        "kernel": platform.release(),
        "python": version[0],
        "sqlite": version[1],
        "postgresql": postgres_version(),
    }
