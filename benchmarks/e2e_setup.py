"""What bench_e2e runs against: signed deliveries, the processes (relay, bare endpoint, sandbox), the rows.

Deliveries are signed and serialised to raw HTTP bytes before the clock starts. Two kinds of work:
- `ignored`: `read.completed` for a company with no local datasets. The handler looks its datasets up,
  finds none and ends `ignored` without calling Codat: the relay's own pipeline (verify, group commit,
  queue, claim, dispatch, status update) and nothing else.
- `reconcile`: legacy *Data Sync Status Changed To Error* naming a dataset the relay pushed. The handler
  loads the dataset, asks Codat (the sandbox, over HTTP) for its status and applies it: a real handler.
  The sandbox's daily quota is set far above what a run spends (SANDBOX_DAILY_QUOTA): at its default,
  1,000 x (1 + linked companies) as Codat's (docs/using-the-api/rate-limits.md), a run's calls took it
  below the relay's reserve, and the relay's budget rightly held routine calls back for the reset — up to a
  thousand alerts left waiting at the drain's end, which measured the quota policy (tested in
  tests/test_budget.py, measured by the storm benchmark), not the handler.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from benchmarks import common, loadgen
from service.signatures import decode_secret, sign
from service.testing import SANDBOX_API_KEY, legacy_body, sandbox_company

SECRET = "whsec_" + "YmVuY2htYXJrLW9ubHktc2VjcmV0LWtleS0zMmI="  # base64 of a benchmark-only key
API_TOKEN = "bench-api-token"  # noqa: S105 -- a throw-away token of a throw-away process
SEED_COMPANIES = 50  # datasets the reconcile variant reports on: one per company, like the ingest companies
DATASET_PACE_S = 86_400  # sandbox datasets stay "Processing": every alert makes the handler ask Codat
SANDBOX_DAILY_QUOTA = 100_000_000  # see the docstring: the reconcile variant measures the handler, not the quota
READY_DEADLINE_S = 60.0
NO_CODAT = "http://127.0.0.1:9"  # the discard port: an unexpected Codat call would fail, visibly


# --- deliveries -------------------------------------------------------------------------------------


def raw_request(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    head = (
        f"POST {loadgen.WEBHOOK_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nwebhook-id: {msg_id}\r\nwebhook-timestamp: {timestamp}\r\n"
        f"webhook-signature: {sign(key, msg_id, timestamp, body)}\r\n\r\n"
    )
    return head.encode() + body


def deliveries(count: int, datasets: list[tuple[str, str]] | None) -> tuple[list[str], list[bytes]]:
    """(ids, raw requests): `ignored` work when `datasets` is None, else alerts naming those datasets."""
    key, timestamp = decode_secret(SECRET), int(time.time())  # one stamp: runs stay inside the ±300 s
    companies = loadgen.company_ids()
    ids, raws = [], []
    for i in range(count):
        msg_id = f"msg_e2e_{uuid.uuid4().hex}"
        if datasets is None:
            body = loadgen.delivery_body(msg_id, companies[i % len(companies)], str(uuid.uuid4()))
        else:
            company, dataset = datasets[i % len(datasets)]
            data = {"dataType": "commerce-orders", "datasetStatus": "ProcessingError", "datasetId": dataset}
            body = json.dumps(legacy_body(CompanyId=company, Data=data), separators=(",", ":")).encode()
        ids.append(msg_id)
        raws.append(raw_request(key, msg_id, timestamp, body))
    return ids, raws


# --- processes --------------------------------------------------------------------------------------


def start_bare(tmp: Path) -> common.Server:
    port = common.free_port()
    cmd = [common.python(), "-m", "uvicorn", "benchmarks.bare_app:app", "--loop", "uvloop", "--http", "httptools",
           "--no-access-log", "--port", str(port)]  # fmt: skip
    return common.Server("bare", cmd, common.clean_env({}), port, tmp / "bare.log")


def start_relay(
    tmp: Path, name: str, database_url: str, codat_url: str, extra: dict[str, str] | None = None
) -> common.Server:
    """`codat-relay serve`: web and in-process workers, one process, as the README's deployment runs it."""
    port = common.free_port()
    env = common.clean_env({**(extra or {}),
        "RELAY_DATABASE_URL": database_url, "RELAY_PORT": str(port), "RELAY_WEBHOOK_SECRETS": SECRET,
        "RELAY_API_TOKEN": API_TOKEN, "RELAY_ADMIN_TOKEN": "bench-admin-token", "RELAY_CODAT_BASE_URL": codat_url,
        "RELAY_CODAT_API_KEY": SANDBOX_API_KEY,
        "RELAY_PUSH_DEBOUNCE_SECONDS": "0", "RELAY_LOG_LEVEL": "warning", "RELAY_LOG_FORMAT": "json",
        # The sandbox has no rate limit: unpaced, the reconcile variant measures the relay, not 1,000/min.
        "RELAY_CODAT_REQUESTS_PER_MINUTE": "0",
    })  # fmt: skip
    return common.Server(name, [common.python(), "-m", "service.cli", "serve"], env, port, tmp / f"{name}.log")


def start_sandbox(tmp: Path) -> common.Server:
    port = common.free_port()
    cmd = [common.python(), "-m", "service.cli", "sandbox", "--port", str(port), "--pace-seconds", str(DATASET_PACE_S),
           "--push-processing-seconds", "0", "--daily-quota", str(SANDBOX_DAILY_QUOTA)]  # fmt: skip
    sandbox = common.Server("sandbox", cmd, common.clean_env({}), port, tmp / "sandbox.log")
    deadline = time.monotonic() + READY_DEADLINE_S
    while time.monotonic() < deadline:  # the sandbox has no /healthz; its control API answers when ready
        if sandbox.proc.poll() is not None:
            raise RuntimeError(f"sandbox exited: {sandbox.log_tail()}")
        try:
            if httpx.get(sandbox.base_url + "/_sandbox/config", timeout=1).status_code == 200:
                return sandbox
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    sandbox.stop()
    raise RuntimeError("sandbox not ready")


def seed_datasets(relay: common.Server, database_url: str, sandbox_url: str) -> list[tuple[str, str]]:
    """One pushed order per company through the intake API; returns (company, dataset) once Codat has them."""
    headers = {"authorization": f"Bearer {API_TOKEN}"}
    companies = loadgen.company_ids()[:SEED_COMPANIES]
    for n, company in enumerate(companies):
        sandbox_company(sandbox_url, company)  # Codat has no company until it is created
        order = {"id": f"o-{n}", "orderNumber": str(n), "currency": "GBP", "totalAmount": 10.0,
                 "createdDate": "2026-01-01T09:00:00Z", "sourceModifiedDate": "2026-01-01T10:00:00Z"}  # fmt: skip
        answer = httpx.put(f"{relay.base_url}/v1/companies/{company}/records/orders", json={"records": [order]},
                           headers=headers, timeout=10)  # fmt: skip
        if answer.status_code != 202:
            raise RuntimeError(f"intake answered {answer.status_code}: {answer.text[:300]}")
    deadline = time.monotonic() + READY_DEADLINE_S
    while time.monotonic() < deadline:
        found = rows(database_url, "SELECT company_id, id FROM datasets")
        if len(found) >= len(companies):
            return [(str(c), str(d)) for c, d in found]
        time.sleep(0.2)
    raise RuntimeError(f"only {len(found)} of {len(companies)} datasets pushed within {READY_DEADLINE_S:.0f} s")


# --- the relay's rows -------------------------------------------------------------------------------


async def _pg_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


def rows(database_url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of a query against a relay database (SQLite file or PostgreSQL), read beside the running relay."""
    if database_url.startswith("sqlite"):
        conn = sqlite3.connect(database_url.split(":///", 1)[1], timeout=30)
        try:
            return [tuple(r) for r in conn.execute(sql).fetchall()]
        finally:
            conn.close()
    return asyncio.run(_pg_rows(database_url, sql))


def unfinished(database_url: str) -> int:
    return int(rows(database_url, "SELECT count(*) FROM alerts WHERE status IN ('pending', 'processing')")[0][0])


def alert_times(database_url: str) -> dict[str, tuple[str, float, float]]:
    """id → (status, received_at, updated_at) of every alert."""
    found = rows(database_url, "SELECT id, status, received_at, updated_at FROM alerts")
    return {str(i): (str(s), float(r), float(u)) for i, s, r, u in found}


def job_times(database_url: str) -> dict[str, tuple[float, float | None, float | None]]:
    """alert id → (created_at, started_at, finished_at) of its job (the last one, if retried)."""
    found = rows(database_url, "SELECT payload, created_at, started_at, finished_at FROM jobs "
                               "WHERE kind = 'alert' ORDER BY id")  # fmt: skip
    times = {}
    for payload, created, started, finished in found:
        alert_id = (json.loads(payload) if isinstance(payload, str) else payload)["alert_id"]
        times[alert_id] = (float(created), started, finished)
    return times


def stop_all(*servers: common.Server | None) -> None:
    for server in servers:
        if server is not None:
            try:
                server.stop()
            except (OSError, subprocess.SubprocessError):
                pass
