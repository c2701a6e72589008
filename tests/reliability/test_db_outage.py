"""Database outage: PostgreSQL stopped for a while under load, then started again, without restarting the relay.

The relay runs against a private, throw-away PostgreSQL cluster (`initdb` into a temporary directory,
its own port on 127.0.0.1, its unix sockets in that directory), so the test can really stop the server
without touching the shared one every other test uses: `pg_ctl stop -m fast` (open connections are
terminated, in-flight transactions roll back, the postmaster exits), down for the outage's length, then
`pg_ctl start -w`. The cluster's postmaster PID before and after, and `pg_ctl status` plus a refused
connection during the outage, show it was a real stop, not a simulated one.

While it is down every delivery must be answered 503 with `Retry-After` (Codat retries 503, never
400/500), within Codat's 15 s; `/readyz` says 503. When it is back the same process accepts again,
its workers finish every alert, and nothing acknowledged is lost.

The server binaries are looked up under /usr/lib/postgresql/*/bin (the newest version); without them
the test skips, and fails under CI=true. `initdb` refuses to run as root, so as root the cluster is
created and run as the `postgres` OS user (runuser). The cluster is always stopped and its directory
deleted, whatever the outcome; its server log is copied into the test's directory first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn, TypeVar

import asyncpg
import httpx
import pytest

from service import migrate
from tests.integration.harness import free_port, relay_env, stop
from tests.reliability.common import (
    Delivery,
    Tally,
    delivery,
    post,
    redeliver_until_acked,
    report,
    slow,
    start_relay,
    until,
    until_processed,
    wait_healthy,
)
from tests.reliability.recording_handlers import create_tables

SENDERS = 8
CODAT_ANSWER_DEADLINE_S = 15.0
ACKS_BEFORE_STOP = 50
ACKS_AFTER_START = 50
PAUSE_AFTER_503_S = 0.25
RECOVERY_DEADLINE_S = 30.0
PG_CTL_TIMEOUT_S = 60
POSTGRES_INSTALLS = Path("/usr/lib/postgresql")
SERVER_TOOLS = ("initdb", "pg_ctl", "postgres")
RUN_AS = "postgres"  # the OS user that owns and runs the cluster when the test runs as root
PHASES = ("before", "stopping", "outage", "starting", "after")

T = TypeVar("T")


# -- the private cluster ----------------------------------------------------------------------------


def postgres_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's server binaries (/usr/lib/postgresql/<version>/bin), or None."""
    found = [d for d in POSTGRES_INSTALLS.glob("*/bin") if all((d / tool).is_file() for tool in SERVER_TOOLS)]
    return max(found, key=lambda d: tuple(int(n) for n in re.findall(r"\d+", d.parent.name)), default=None)


def _missing(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: the database-outage test stops a private PostgreSQL server (CI never skips it)")
    pytest.skip(reason)


class Cluster:
    """A throw-away PostgreSQL cluster in `root` (data/, the unix sockets, the server log), on `port`."""

    def __init__(self, bin_dir: Path, root: Path, run_as: list[str]) -> None:
        self.bin_dir = bin_dir
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        self.port = free_port()
        self._run_as = run_as  # e.g. ["runuser", "-u", "postgres", "--"] when the test runs as root
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}  # no PGDATA/PGPORT leaks in
        self.version = ""

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _argv(self, tool: str, *args: str) -> list[str]:
        return [*self._run_as, str(self.bin_dir / tool), *args]

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            self._argv(tool, *args), cwd=self.root, env=self._env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=PG_CTL_TIMEOUT_S + 30,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{self._log_tail()}")

    async def _run_async(self, tool: str, *args: str, check: bool = True) -> int:
        """Without blocking the event loop: the load keeps flowing while pg_ctl works."""
        proc = await asyncio.create_subprocess_exec(
            *self._argv(tool, *args), cwd=self.root, env=self._env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            async with asyncio.timeout(PG_CTL_TIMEOUT_S + 30):
                out, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode is not None
        if check and proc.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} exited {proc.returncode}:\n{out.decode()}\n{self._log_tail()}")
        return proc.returncode

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return "server log:\n" + "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        return ""

    def init(self) -> None:
        out = subprocess.run([str(self.bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=True)
        self.version = re.sub(r"^postgres \(PostgreSQL\) (\S+).*", r"PostgreSQL \1", out.stdout.strip())
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")  # fmt: skip
        with (self.data / "postgresql.conf").open("a") as conf:  # read again by every start
            conf.write(
                "\n# throw-away cluster of tests/reliability/test_db_outage.py\n"
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.root}'\n"
                "fsync = off\nfull_page_writes = off\nsynchronous_commit = off\n"
            )

    def _pg_ctl_start(self) -> tuple[str, ...]:
        return ("start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(PG_CTL_TIMEOUT_S))

    def start_sync(self) -> None:
        self._run("pg_ctl", *self._pg_ctl_start())

    async def start(self) -> None:
        """`pg_ctl start -w`: returns once the server accepts connections."""
        await self._run_async("pg_ctl", *self._pg_ctl_start())

    async def stop(self) -> None:
        """`pg_ctl stop -m fast`: sessions terminated, transactions rolled back; returns once the server exited."""
        await self._run_async("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", str(PG_CTL_TIMEOUT_S))

    async def running(self) -> bool:
        """`pg_ctl status`: 0 when a server runs on the data directory, 3 when none does."""
        return await self._run_async("pg_ctl", "status", "-D", str(self.data), check=False) == 0

    async def refuses_connections(self) -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except ConnectionRefusedError:
            return True
        writer.close()
        return False

    def postmaster_pid(self) -> int | None:
        """The running postmaster's PID, from data/postmaster.pid (absent while the server is stopped)."""
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def destroy(self, keep_log: Path) -> None:
        """Stop the server (whatever state it is in) and delete the cluster; its log is kept in `keep_log`."""
        try:
            if self.postmaster_pid() is not None:
                with contextlib.suppress(subprocess.SubprocessError, RuntimeError):
                    self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30")
            pid = self.postmaster_pid()
            if pid is not None:  # pg_ctl could not stop the postmaster this test started: kill that one process
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        finally:
            with contextlib.suppress(OSError):
                shutil.copyfile(self.log, keep_log)
            shutil.rmtree(self.root)


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[Cluster]:
    """A running throw-away cluster, private to this test; stopped and deleted afterwards, always."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        _missing(f"no PostgreSQL server binaries ({', '.join(SERVER_TOOLS)}) under {POSTGRES_INSTALLS}/*/bin")
    run_as: list[str] = []
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        runuser = shutil.which("runuser")
        try:
            owner = pwd.getpwnam(RUN_AS)
        except KeyError:
            owner = None
        if runuser is None or owner is None:
            _missing(f"running as root needs `runuser` and a `{RUN_AS}` OS user to run a private PostgreSQL")
        run_as = [runuser, "-u", RUN_AS, "--"]
    # Not under tmp_path: pytest's base directory is private to the user running the tests.
    root = Path(tempfile.mkdtemp(prefix="relay-pg-outage-"))
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    cluster = Cluster(bin_dir, root, run_as)
    try:
        cluster.init()
        cluster.start_sync()
        yield cluster
    finally:
        cluster.destroy(keep_log=tmp_path / "postgres-server.log")


# -- the load ---------------------------------------------------------------------------------------


class Load:
    """New deliveries, continuously, tallied by the phase in which each was sent."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.phase = "before"
        self.items: list[Delivery] = []
        self.tally = Tally()
        self.codes: dict[str, Counter[int | None]] = {p: Counter() for p in PHASES}
        self.slowest_s: dict[str, float] = {p: 0.0 for p in self.codes}
        self.first_ack_after: float | None = None
        self._stop = asyncio.Event()

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=30.0) as client:
            await asyncio.gather(*(self._one(client) for _ in range(SENDERS)))

    def stop(self) -> None:
        self._stop.set()

    async def _one(self, client: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            item = delivery(len(self.items), "outage")
            self.items.append(item)
            phase, started = self.phase, time.monotonic()
            code = await post(client, self.url, item, self.tally)
            self.codes[phase][code] += 1
            self.slowest_s[phase] = max(self.slowest_s[phase], time.monotonic() - started)
            if code is not None and code < 300 and phase == "after" and self.first_ack_after is None:
                self.first_ack_after = time.monotonic()
            if code is None or code >= 500:
                # Codat waits for Retry-After (5 s); probing faster keeps the outage observed throughout.
                await asyncio.sleep(PAUSE_AFTER_503_S)


async def readiness(port: int) -> int:
    async with httpx.AsyncClient(timeout=10.0) as client:
        return (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code


@pytest.mark.parametrize("outage_s", [pytest.param(3.0, id="fast"), pytest.param(10.0, id="full", marks=slow)])
async def test_postgres_stopped_under_load_answers_503_and_recovers_without_restart(
    private_postgres: Cluster, tmp_path: Path, outage_s: float
) -> None:
    """PostgreSQL stopped for `outage_s` under load → 503 + Retry-After meanwhile, then full recovery, 0 lost."""
    cluster = private_postgres
    admin = await asyncpg.connect(cluster.dsn("postgres"), timeout=10)
    try:
        await admin.execute("CREATE DATABASE relay")
    finally:
        await admin.close()
    database_url = cluster.url("relay")
    await asyncio.to_thread(migrate.upgrade, database_url)
    await create_tables(database_url)

    port = free_port()
    env = relay_env(database_url, port, RELAY_JOB_LEASE_SECONDS="5", RELAY_WORKER_CONCURRENCY="8")
    proc = start_relay(["serve"], env, tmp_path / "relay.log")
    load = Load(f"http://127.0.0.1:{port}/webhooks/codat")
    t0 = time.monotonic()
    marks: dict[str, float] = {}
    sender: asyncio.Task[None] | None = None
    try:
        await wait_healthy(port, proc)
        marks["healthy"] = time.monotonic() - t0
        sender = asyncio.create_task(load.run())
        await until(lambda: _value(len(load.tally.acked)), lambda n: n >= ACKS_BEFORE_STOP, 30, "acks before stop")
        pid_before = cluster.postmaster_pid()
        load.phase = "stopping"  # answers while pg_ctl stops the server may go either way
        stop_issued = time.monotonic()
        await cluster.stop()
        load.phase = "outage"  # from here every request is sent with the server stopped
        stopped_at = time.monotonic()
        await asyncio.sleep(outage_s / 2)  # the outage's length is the point here, not a wait for work
        ready_during = await readiness(port)
        server_running_during = await cluster.running()
        refused_during = await cluster.refuses_connections()
        await asyncio.sleep(stopped_at + outage_s - time.monotonic())
        load.phase = "starting"  # the server may accept before pg_ctl notices: either answer is right here
        start_issued = time.monotonic()
        await cluster.start()
        load.phase = "after"
        started_at = time.monotonic()
        pid_after = cluster.postmaster_pid()
        await until(lambda: _value(load.first_ack_after), bool, RECOVERY_DEADLINE_S, "a 2xx after the restart")
        wanted = len(load.tally.acked) + ACKS_AFTER_START
        await until(lambda: _value(len(load.tally.acked)), lambda n: n >= wanted, 30, "load flowing again")
        load.stop()
        await sender
        marks["load_stopped"] = time.monotonic() - t0
        ready_after = await readiness(port)
        acked = set(load.tally.acked)
        redelivered = await redeliver_until_acked(load.url, load.items, load.tally, concurrency=SENDERS)
        marks["redelivered"] = time.monotonic() - t0
        outcome = await until_processed(database_url, {d.id for d in load.items}, deadline_s=90)
        marks["processed"] = time.monotonic() - t0
        restarted = proc.poll() is not None
    finally:
        load.stop()
        if sender is not None and not sender.done():  # the test failed mid-load
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        exit_code = await asyncio.to_thread(stop, proc)

    ids = {d.id for d in load.items}
    outage_codes = load.codes["outage"]
    restarted_server = None not in (pid_before, pid_after) and pid_before != pid_after
    really_stopped = not server_running_during and refused_during and restarted_server
    figures = {
        "backend": "postgres",
        "fault": f"private {cluster.version} server really stopped (pg_ctl stop -m fast), then pg_ctl start -w",
        "server_really_stopped": really_stopped,
        "server_running_during_outage": server_running_during,
        "connections_refused_during_outage": refused_during,
        "postmaster_pid_before_stop": pid_before,
        "postmaster_pid_after_start": pid_after,
        "outage_seconds": outage_s,
        "seconds_to_stop_server": round(stopped_at - stop_issued, 2),
        "seconds_to_start_server": round(started_at - start_issued, 2),
        "deliveries": len(load.items),
        "acknowledged": len(acked),
        "lost": len(acked - set(outcome.stored)),
        "answers_before": _codes(load.codes["before"]),
        "answers_while_stopping": _codes(load.codes["stopping"]),
        "answers_during_outage": _codes(outage_codes),
        "answers_while_starting": _codes(load.codes["starting"]),
        "answers_after": _codes(load.codes["after"]),
        "answers_5xx_other_than_503": load.tally.errors_other_than_503,
        "answers_503_without_retry_after": load.tally.missing_retry_after,
        "slowest_answer_during_outage_s": round(load.slowest_s["outage"], 2),
        "readyz_during_outage": ready_during,
        "readyz_after": ready_after,
        "seconds_to_first_2xx_after_restart": round((load.first_ack_after or 0) - started_at, 2),
        "redelivery_rounds": redelivered,
        "done": sum(1 for i in ids if outcome.stored.get(i) == "done"),
        "processed_twice": outcome.processed_twice(),
        "relay_restarted": restarted,
        "exit_code_on_sigterm": exit_code,
        "seconds": {k: round(v, 1) for k, v in marks.items()},
    }
    report(f"db-outage-{'full' if outage_s >= 10 else 'fast'}-postgres", figures)
    assert really_stopped, figures
    assert figures["lost"] == 0
    assert outage_codes[503] > 0 and set(outage_codes) == {503}, figures
    assert load.tally.errors_other_than_503 == 0 and load.tally.missing_retry_after == 0
    assert load.slowest_s["outage"] < CODAT_ANSWER_DEADLINE_S
    assert (ready_during, ready_after) == (503, 200)
    assert not restarted and exit_code in (0, -signal.SIGTERM)
    assert not outcome.not_done(ids) and {i: outcome.effects.get(i) for i in ids} == {
        d.id: d.status for d in load.items
    }


async def _value(value: T) -> T:
    return value


def _codes(counter: Counter[int | None]) -> dict[str, int]:
    return {("no_answer" if code is None else str(code)): n for code, n in sorted(counter.items(), key=str)}
