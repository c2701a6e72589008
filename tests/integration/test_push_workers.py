"""Two real `codat-relay worker` processes push one company's records: never two pushes at once per data type.

Real processes throughout: the sandbox (each push is "being handled" for 100 ms, so an overlap would be
seen and recorded as a `concurrent_push` breach), a `codat-relay web` taking intake, two workers on one
queue — a PostgreSQL database, or one SQLite file shared by the three processes.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from service.db import jobs, records
from service.testing import SANDBOX_API_KEY, sandbox_company
from tests.conftest import API_TOKEN
from tests.integration.harness import free_port, relay, relay_env, start, stop, wait_http

pytestmark = pytest.mark.integration

COMPANY = "co-two-workers"
PER_TYPE, PER_REQUEST = 6_000, 500
DEADLINE_S = 90.0


def record(data_type: str, n: int) -> dict[str, Any]:
    if data_type == "orders":
        return {"id": f"o-{n:05d}", "currency": "GBP", "totalAmount": n / 100, "createdDate": "2025-06-01T09:00:00Z"}
    return {"id": f"p-{n:05d}", "amount": n / 100, "type": "Card", "status": "Paid",
            "createdDate": "2025-06-01T09:00:00Z"}  # fmt: skip


async def _states(url: str) -> tuple[dict[str, int], set[str]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            counts = dict((await conn.execute(
                sa.select(records.c.state, sa.func.count()).group_by(records.c.state))).all())  # fmt: skip
            workers = set((await conn.execute(
                sa.select(jobs.c.worker_id).where(jobs.c.kind == "push", jobs.c.status == "done").distinct()
            )).scalars())  # fmt: skip
    finally:
        await engine.dispose()
    return {str(k): int(v) for k, v in counts.items()}, {w for w in workers if w}


@pytest.fixture(params=["sqlite", "postgres"])
def shared_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One database all the processes share: a SQLite file (WAL, BEGIN IMMEDIATE) or a PostgreSQL database."""
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    db = tmp_path / "shared.db"
    shutil.copyfile(request.getfixturevalue("sqlite_template"), db)
    return f"sqlite+aiosqlite:///{db}"


def test_two_workers_never_push_one_company_and_data_type_at_once(tmp_path: Path, shared_database: str) -> None:
    """Every record arrives exactly once, in pushes of ≤ RELAY_MAX_PUSH_RECORDS, with no concurrent push."""
    sandbox_port, web_port = free_port(), free_port()
    sandbox = start(["sandbox", "--port", str(sandbox_port), "--pace-seconds", "0",
                     "--push-processing-seconds", "0.1"], {}, tmp_path / "sandbox.log")  # fmt: skip
    base = f"http://127.0.0.1:{sandbox_port}"
    # One job at a time per worker: a worker busy pushing one data type leaves the other data type's push
    # to the other worker. With more, the first to wake claims both (on SQLite, with no NOTIFY to wake the
    # other, it would run nearly every push alone and the test would prove little).
    env = relay_env(shared_database, web_port, RELAY_CODAT_BASE_URL=base, RELAY_CODAT_API_KEY=SANDBOX_API_KEY,
                    RELAY_PUSH_DEBOUNCE_SECONDS="0",
                    RELAY_MAX_PUSH_RECORDS="250", RELAY_LOG_LEVEL="info", RELAY_WORKER_CONCURRENCY="1")  # fmt: skip
    # Each process its own port: a worker may serve /healthz and /metrics too.
    workers = [start(["worker"], {**env, "RELAY_PORT": str(free_port())}, tmp_path / f"worker-{i}.log")
               for i in range(2)]  # fmt: skip
    try:
        wait_http(f"{base}/_sandbox/config", sandbox)
        sandbox_company(base, COMPANY)
        with relay(["web"], env, tmp_path / "web.log"), httpx.Client(timeout=30) as client:
            for start_at in range(0, PER_TYPE, PER_REQUEST):
                for data_type in ("orders", "payments"):
                    batch = [record(data_type, n) for n in range(start_at, start_at + PER_REQUEST)]
                    answer = client.put(f"http://127.0.0.1:{web_port}/v1/companies/{COMPANY}/records/{data_type}",
                                        json={"records": batch}, headers={"authorization": f"Bearer {API_TOKEN}"})
                    assert answer.status_code == 202, answer.text
            deadline = time.monotonic() + DEADLINE_S
            while True:
                counts, pushers = asyncio.run(_states(shared_database))
                if counts == {"accepted": 2 * PER_TYPE} or time.monotonic() > deadline:
                    break
                time.sleep(0.25)
            assert counts == {"accepted": 2 * PER_TYPE}
            pushes = client.get(f"{base}/_sandbox/pushes", params={"companyId": COMPANY}).json()["results"]
            breaches = client.get(f"{base}/_sandbox/breaches", params={"companyId": COMPANY}).json()["results"]
    finally:
        for proc in workers:
            stop(proc)
        stop(sandbox)
    assert breaches == []
    assert all(p["count"] <= 250 for p in pushes)
    for data_type in ("commerce-orders", "commerce-payments"):
        ids = [i for p in pushes if p["dataType"] == data_type for i in p["recordIds"]]
        assert len(ids) == len(set(ids)) == PER_TYPE
    assert len(pushers) == 2, f"only {pushers} ran push jobs"
