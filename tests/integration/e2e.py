"""A whole stack for end-to-end tests: the relay process, the sandbox process, a notification target.

The relay (`codat-relay serve`) pushes to the sandbox (`codat-relay sandbox`) over HTTP; the sandbox
sends its signed webhooks to the relay; staff notifications go to a real HTTP target in the test
process that can be made to refuse for a while.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from service.testing import sandbox_company, signed_headers
from tests.conftest import ADMIN_TOKEN, API_TOKEN, TEST_SECRET
from tests.integration.harness import START_ATTEMPTS, free_port, relay_env, start, stop, wait_http

T = TypeVar("T")
DEADLINE_S = 40.0
API = {"authorization": f"Bearer {API_TOKEN}"}
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
# Long and distinctive, so that a scan of the logs can tell a leak from an ordinary word.
CODAT_API_KEY = "codat-e2e-key-5d1f0c7a9b"


def until(fetch: Callable[[], T], done: Callable[[T], bool], what: str, deadline_s: float = DEADLINE_S) -> T:
    """Poll `fetch` until `done` holds; fail naming `what` (and the last value) at the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {value!r}"[:2000])
        time.sleep(0.1)


@dataclass
class Target:
    """Records staff notifications; `down` makes it answer 503."""

    received: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    down: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def of(self, company: str, kind: str | None = None, state: str = "opened") -> list[dict[str, Any]]:
        """Messages about `company` (of `kind`) that opened a problem, or, with state="resolved", that ended one."""
        with self.lock:
            return [n for n in self.received if n["companyId"] == company and (kind is None or n["kind"] == kind)
                    and n.get("state") == state]  # fmt: skip


@contextmanager
def notification_target() -> Iterator[tuple[str, Target]]:
    target = Target()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            with target.lock:
                if target.down:
                    target.refused += 1
                    self.send_response(503)
                else:
                    target.received.append(json.loads(body))
                    self.send_response(200)
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", target
    finally:
        server.shutdown()
        server.server_close()  # the listening socket; left to the collector it warns (an error here)


@dataclass
class Stack:
    relay_url: str
    sandbox_url: str
    target: Target
    relay_proc: subprocess.Popen[bytes]
    database_url: str
    company: str = ""

    def new_company(self) -> str:
        self.company = sandbox_company(self.sandbox_url, f"co-{uuid.uuid4().hex[:10]}")
        return self.company

    def put(self, data_type: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        answer = httpx.put(f"{self.relay_url}/v1/companies/{self.company}/records/{data_type}",
                           json={"records": items}, headers=API, timeout=10)
        assert answer.status_code == 202, answer.text
        return dict(answer.json())

    def sandbox(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = httpx.request(method, f"{self.sandbox_url}{path}", timeout=10, **kwargs)
        answer.raise_for_status()
        return answer.json()

    def pushes(self, data_type: str | None = None) -> list[dict[str, Any]]:
        params = {"companyId": self.company, **({"dataType": data_type} if data_type else {})}
        return list(self.sandbox("GET", "/_sandbox/pushes", params=params)["results"])

    def company_view(self) -> dict[str, Any]:
        answer = httpx.get(f"{self.relay_url}/v1/companies/{self.company}", headers=ADMIN, timeout=10)
        return dict(answer.json()) if answer.status_code == 200 else {}

    def alerts(self) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.relay_url}/v1/alerts", params={"companyId": self.company}, headers=ADMIN)
        return list(answer.json()["results"])

    def deliver(self, body: dict[str, Any], msg_id: str | None = None) -> httpx.Response:
        """A signed delivery straight to the relay, as Codat's newer service would send it (a new id by default)."""
        raw = json.dumps(body).encode()
        headers = signed_headers(raw, TEST_SECRET, msg_id=msg_id)
        return httpx.post(f"{self.relay_url}/webhooks/codat", content=raw, headers=headers, timeout=10)

    def record_states(self, data_type: str) -> dict[str, int]:
        counts = self.company_view().get("records", {}).get(data_type, {})
        return {k: v for k, v in counts.items() if v}

    def codat_requests(self, endpoint: str, status: int = 200) -> int:
        """How many requests about this company the sandbox answered on `endpoint` with `status`."""
        rows = self.sandbox("GET", "/_sandbox/requests", params={"companyId": self.company})["results"]
        return sum(r["count"] for r in rows if r["endpoint"] == endpoint and r["status"] == status)

    def codat_datasets(self, data_type: str) -> list[dict[str, Any]]:
        """The company's datasets as the sandbox has them (terminal ones carry `completed`)."""
        params = {"companyId": self.company, "dataType": data_type}
        return list(self.sandbox("GET", "/_sandbox/datasets", params=params)["results"])

    def ended_at_codat(self, data_type: str, count: int) -> list[dict[str, Any]]:
        """Wait until the sandbox has finished `count` datasets of `data_type`; returns them."""
        return until(lambda: [d for d in self.codat_datasets(data_type) if "completed" in d],
                     lambda done: len(done) >= count, f"{count} {data_type} datasets ended at Codat")  # fmt: skip

    def rows(self, query: str) -> list[Any]:
        """Rows of a SELECT on the relay's own database (its bookkeeping, e.g. `pushes` and `jobs`)."""
        return asyncio.run(_rows(self.database_url, query, {"company": self.company}))


async def _rows(url: str, query: str, params: dict[str, Any]) -> list[Any]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(sa.text(query), params)).all())
    finally:
        await engine.dispose()


@contextmanager
def stack(database_url: str, tmp_path: Path, **relay_settings: str) -> Iterator[Stack]:
    with notification_target() as (hook, target):
        for attempt in range(1, START_ATTEMPTS + 1):
            relay_port, sandbox_port = free_port(), free_port()
            relay_url, sandbox_url = f"http://127.0.0.1:{relay_port}", f"http://127.0.0.1:{sandbox_port}"
            env = relay_env(database_url, relay_port, RELAY_CODAT_BASE_URL=sandbox_url,
                            RELAY_CODAT_API_KEY=CODAT_API_KEY, RELAY_NOTIFY_WEBHOOK_URL=hook,
                            RELAY_PUSH_DEBOUNCE_SECONDS="0", RELAY_REPUSH_BACKOFF_SECONDS="0", **relay_settings)
            sandbox_env = {k: v for k, v in env.items() if not k.startswith("RELAY_")}
            sandbox = start(["sandbox", "--port", str(sandbox_port), "--pace-seconds", "0.3",
                             "--webhook-url", f"{relay_url}/webhooks/codat", "--webhook-secret", TEST_SECRET,
                             "--webhook-shape", "envelope"], sandbox_env, tmp_path / "sandbox.log")
            relay = start(["serve"], env, tmp_path / "relay.log")
            try:
                wait_http(f"{sandbox_url}/_sandbox/config", sandbox)
                wait_http(f"{relay_url}/readyz", relay)
            except RuntimeError:  # a process exited before answering (its port taken?): both on new ports
                stop(relay)
                stop(sandbox)
                if attempt == START_ATTEMPTS:
                    raise
                continue
            try:
                yield Stack(relay_url, sandbox_url, target, relay, database_url)
            finally:
                stop(relay)
                stop(sandbox)
            return
