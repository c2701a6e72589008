"""Real processes for integration tests: start `codat-relay` commands, wait for them, kill them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import ADMIN_TOKEN, API_TOKEN, TEST_AUTH_HEADER, TEST_SECRET

ROOT = Path(__file__).resolve().parents[2]
START_DEADLINE_S = 120.0  # an upper bound, not a wait: a loaded 2-core machine starts a process slowly
# A process that exits before answering is started again on new ports this many times in all: most often its
# port, free when chosen, was taken (an outgoing connection's ephemeral port) before it bound.
START_ATTEMPTS = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def relay_env(database_url: str, port: int, **extra: str) -> dict[str, str]:
    """A clean environment: only what the test sets, never the developer's RELAY_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(
        RELAY_DATABASE_URL=database_url,
        RELAY_PORT=str(port),
        RELAY_WEBHOOK_SECRETS=TEST_SECRET,
        RELAY_WEBHOOK_AUTH_HEADER=TEST_AUTH_HEADER,
        RELAY_API_TOKEN=API_TOKEN,
        RELAY_ADMIN_TOKEN=ADMIN_TOKEN,
        RELAY_LOG_FORMAT="json",
        RELAY_LOG_LEVEL="warning",
    )
    env.update(extra)
    return env


def start(args: list[str], env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    # The child gets its own copy of the descriptor; ours is closed at once, not by the garbage collector
    # (whose ResourceWarning, an error under filterwarnings, lands on whichever test runs then).
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "service.cli", *args], env=dict(env), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )


def wait_http(url: str, proc: subprocess.Popen[bytes], deadline_s: float = START_DEADLINE_S) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before answering {url}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {deadline_s} s")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@contextmanager
def relay(args: list[str], env: Mapping[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = start(args, env, log_path)
    try:
        wait_http(f"http://127.0.0.1:{env['RELAY_PORT']}/healthz", proc)
        yield proc
    finally:
        stop(proc)


@contextmanager
def sandbox_process(log_path: Path, *args: str, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """A `codat-relay sandbox` process on a free port (started again on another if it exits before
    answering); yields its URL and stops it afterwards."""
    for attempt in range(1, START_ATTEMPTS + 1):
        port = free_port()
        proc = start(["sandbox", "--port", str(port), *args], env or {}, log_path)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{base}/_sandbox/config", proc)
        except RuntimeError:
            stop(proc)
            if attempt == START_ATTEMPTS:
                raise
            continue
        try:
            yield base
        finally:
            stop(proc)
        return
