"""The demo's processes: the sandbox and codat-relay as child processes, and a staff-notification receiver.

Kept apart from service/demo.py, which is the script a new user reads.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from service.dev.local_run import generated_values


class StepFailed(Exception):
    """An expected outcome was not observed in time: the demo exits 1 naming it."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Inbox:
    """The staff-notification target (RELAY_NOTIFY_WEBHOOK_URL): prints each notification on arrival."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        inbox = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                note = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                with inbox.lock:
                    inbox.received.append(note)
                print(f"   >> STAFF NOTIFIED [{note['severity']}] {note['kind']}: {note['summary']}", flush=True)
                if message := (note.get("details") or {}).get("message"):
                    print(f"      Codat said: {message}", flush=True)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass  # the narration is the output; request logs would drown it

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/staff"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def kinds(self) -> list[str]:
        with self.lock:
            return [n["kind"] for n in self.received]


@contextmanager
def process(args: list[str], env: dict[str, str], log: Path, ready_url: str) -> Iterator[None]:
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", *args], env=env, stdout=out,  # noqa: S603
                                stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not _answers(ready_url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise StepFailed(f"`codat-relay {args[0]}` did not start; its log:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def environment(tmp: Path, relay_port: int, sandbox_port: int, notify_url: str, pace: float) -> dict[str, str]:
    """Only the demo's own settings: a developer's RELAY_* (a PostgreSQL URL, say) must not leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "CODAT_SANDBOX_"))}
    return env | generated_values() | {
        "RELAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp / 'relay.db'}", "RELAY_HOST": "127.0.0.1",
        "RELAY_PORT": str(relay_port), "RELAY_CODAT_BASE_URL": f"http://127.0.0.1:{sandbox_port}",
        "RELAY_CODAT_API_KEY": "demo-key", "RELAY_NOTIFY_WEBHOOK_URL": notify_url,
        "RELAY_PUSH_DEBOUNCE_SECONDS": "0", "RELAY_REPUSH_BACKOFF_SECONDS": str(max(0.5, pace)),
        "RELAY_LOG_FORMAT": "json", "RELAY_LOG_LEVEL": "warning",
    }  # fmt: skip
