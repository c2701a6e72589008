"""Codat's rate limits, kept by two real worker processes sharing one PostgreSQL budget (issue 14, "Show").

Real processes throughout: the sandbox (enforcing 10 concurrent requests per company and the daily quota,
sending `client.rateLimit.reached/reset` to the relay, docs/using-the-api/rate-limits.md), `codat-relay web`
taking intake and the webhooks, two `codat-relay worker`s, a staff-notification target in this process.

40 companies push 9 datasets each (6 records of each of 3 data types, in pushes of 2), each dataset polled
while Codat takes 0.5 s to answer a dataset read: more than 10 requests per company could be in flight at
once, and the work needs more requests than the quota has left. The
quota is 2,000; the test spends most of it first, as another service of the same Codat client would (the
quota is the client's, rate-limits.md), so that it runs out mid-way within the test's time.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from service.testing import SANDBOX_API_KEY, SANDBOX_AUTH, sandbox_company
from tests.conftest import API_TOKEN, TEST_SECRET
from tests.integration.e2e import notification_target, until
from tests.integration.harness import free_port, relay, relay_env, start, stop, wait_http

pytestmark = pytest.mark.integration

COMPANIES = 40
QUOTA = 2_000
LEFT_FOR_THE_RELAY = 250  # what the test leaves of the quota: fewer than the pushes alone need
PER_TYPE, CHUNK = 6, 2  # records per company and data type, records per push: 3 pushes a type
DATA_TYPES = ("orders", "payments", "transactions")
# The relay's per-company cap, below Codat's 10 so that this test sees it bind: unbounded, the relay's
# demand here reaches 4 to 6 requests per company at once (measured), never 11.
COMPANY_CAP = 3
DATASET_READ_S = 0.5  # how long Codat takes to answer a dataset read: a company's polls overlap
DEADLINE_S = 90.0
API = {"authorization": f"Bearer {API_TOKEN}"}


def record(data_type: str, company: int, n: int) -> dict[str, Any]:
    rid = f"{data_type[0]}-{company:02d}-{n:02d}"
    if data_type == "orders":
        return {"id": rid, "currency": "GBP", "totalAmount": 1.5, "createdDate": "2025-06-01T09:00:00Z"}
    if data_type == "payments":
        return {"id": rid, "amount": 1.5, "currency": "GBP", "type": "Card", "status": "Paid",
                "createdDate": "2025-06-01T09:00:00Z"}  # fmt: skip
    return {"id": rid, "totalAmount": 1.5, "currency": "GBP", "type": "Payment",
            "transactionSourceRef": {"id": f"p-{company:02d}-{n:02d}", "type": "Payment"},
            "createdDate": "2025-06-01T09:00:00Z"}  # fmt: skip


async def _scalar(url: str, query: str) -> Any:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(sa.text(query))).scalar()
    finally:
        await engine.dispose()


async def _rows(url: str, query: str) -> Any:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(sa.text(query))).all()
    finally:
        await engine.dispose()


DIAGNOSIS = (
    "SELECT kind, status, last_error FROM alerts WHERE kind = 'rate_limit'",
    "SELECT kind, status, count(*), min(run_at), max(run_at) FROM jobs GROUP BY kind, status",
    "SELECT * FROM codat_quota",
    "SELECT state, count(*) FROM records GROUP BY state",
    "SELECT kind, status, last_error, run_at FROM jobs WHERE status <> 'done' LIMIT 5",
)


def diagnosis(url: str) -> list[Any]:
    """What the relay's database says, printed when the test fails (the database is dropped after)."""
    return [asyncio.run(_rows(url, query)) for query in DIAGNOSIS]


def scalar(url: str, query: str) -> Any:
    return asyncio.run(_scalar(url, query))


def test_forty_companies_two_workers_live_within_codats_limits(tmp_path: Path, postgres_url: str) -> None:
    """0 answers over 10 concurrent per company (and never more than the relay's own cap in flight), 0 requests
    after `reached` until `reset`, every record pushed once after the reset, staff told once."""
    started = time.monotonic()
    sandbox_port, web_port = free_port(), free_port()
    base, relay_url = f"http://127.0.0.1:{sandbox_port}", f"http://127.0.0.1:{web_port}"
    with notification_target() as (hook, target):
        env = relay_env(postgres_url, web_port, RELAY_CODAT_BASE_URL=base, RELAY_CODAT_API_KEY=SANDBOX_API_KEY,
                        RELAY_NOTIFY_WEBHOOK_URL=hook, RELAY_PUSH_DEBOUNCE_SECONDS="0",
                        RELAY_MAX_PUSH_RECORDS=str(CHUNK), RELAY_CODAT_REQUESTS_PER_MINUTE="0",
                        RELAY_WORKER_CONCURRENCY="24", RELAY_DB_POOL_SIZE="30", RELAY_LOG_LEVEL="info",
                        RELAY_CODAT_QUOTA_RECHECK_SECONDS="5",
                        RELAY_CODAT_COMPANY_CONCURRENCY=str(COMPANY_CAP))  # fmt: skip
        sandbox_env = {k: v for k, v in env.items() if not k.startswith("RELAY_")}
        sandbox = start(["sandbox", "--port", str(sandbox_port), "--pace-seconds", "0.2",
                         "--push-processing-seconds", "0.05", "--api-key", SANDBOX_API_KEY,
                         "--daily-quota", str(QUOTA), "--webhook-url", f"{relay_url}/webhooks/codat",
                         "--webhook-secret", TEST_SECRET, "--webhook-shape", "envelope"],
                        sandbox_env, tmp_path / "sandbox.log")  # fmt: skip
        workers: list[Any] = []
        try:
            wait_http(f"{base}/_sandbox/config", sandbox)
            companies = [sandbox_company(base, f"rl-{n:02d}") for n in range(COMPANIES)]
            spender = sandbox_company(base, "another-service")
            # Dataset reads take a moment at Codat: a company's polls overlap, as they would.
            httpx.put(f"{base}/_sandbox/faults/dataset", json={"latencyS": DATASET_READ_S}).raise_for_status()
            with httpx.Client(base_url=base, headers=SANDBOX_AUTH, timeout=10) as codat:
                remaining = QUOTA
                while remaining > LEFT_FOR_THE_RELAY:
                    remaining = int(codat.get(f"/companies/{spender}").headers["X-Rate-Limit-Remaining"])
            workers = [start(["worker"], {**env, "RELAY_PORT": str(free_port())}, tmp_path / f"worker-{i}.log")
                       for i in range(2)]  # fmt: skip
            with relay(["web"], env, tmp_path / "web.log"), httpx.Client(timeout=30) as client:
                for index, company in enumerate(companies):
                    for data_type in DATA_TYPES:
                        rows = [record(data_type, index, n) for n in range(PER_TYPE)]
                        answer = client.put(f"{relay_url}/v1/companies/{company}/records/{data_type}",
                                            json={"records": rows}, headers=API)  # fmt: skip
                        assert answer.status_code == 202, answer.text

                def limits() -> dict[str, Any]:
                    return dict(client.get(f"{base}/_sandbox/rate-limits").json())

                # The quota runs out; the relay hears `reached`, tells staff and stops calling Codat.
                until(lambda: list(target.received), lambda got: any(n["kind"] == "rate_limit_reached" for n in got),
                      "staff told the quota is spent", DEADLINE_S)  # fmt: skip
                until(lambda: scalar(postgres_url, "SELECT count(*) FROM jobs WHERE status = 'waiting' "
                                                   "AND last_error LIKE 'deferred:%'"),
                      lambda n: n > 0, "jobs waiting on the budget", DEADLINE_S)  # fmt: skip
                pending = scalar(postgres_url, "SELECT count(*) FROM records WHERE state = 'pending'")
                spent = limits()
                reset = client.post(f"{base}/_sandbox/rate-limits/reset").json()
                total = COMPANIES * len(DATA_TYPES) * PER_TYPE
                try:
                    until(lambda: scalar(postgres_url, "SELECT count(*) FROM records WHERE state = 'accepted'"),
                          lambda n: n == total, "every record accepted", DEADLINE_S)  # fmt: skip
                except AssertionError:
                    print("sandbox at the reset:", spent, "\nnow:", limits(), "\nrelay:", diagnosis(postgres_url))
                    raise
                final = limits()
                pushes = client.get(f"{base}/_sandbox/pushes").json()["results"]
        finally:
            for proc in workers:
                stop(proc)
            stop(sandbox)
        told = [n for n in target.received if n["kind"] == "rate_limit_reached"]
    elapsed = time.monotonic() - started
    assert spent["reachedAt"] is not None and spent["remaining"] == 0
    assert spent["refusedWhileSpent"] == 0, spent  # 0 requests after `reached`, up to the reset
    assert pending > 0 and reset["remaining"] == QUOTA  # work was waiting when the quota came back
    assert final["refusedWhileSpent"] == 0
    over = {c: seen for c, seen in final["companies"].items() if c in companies and
            (seen["maxInFlight"] > 10 or seen["refusedOverLimit"])}  # fmt: skip
    assert over == {}
    busiest = max(final["companies"][c]["maxInFlight"] for c in companies)
    assert busiest == COMPANY_CAP  # two processes together filled a company's slots, and never went past them
    for company in companies:
        for data_type in DATA_TYPES:
            ids = [i for p in pushes if p["companyId"] == company and p["dataType"] == f"commerce-{data_type}"
                   for i in p["recordIds"]]  # fmt: skip
            assert sorted(ids) == sorted(set(ids)) and len(ids) == PER_TYPE, (company, data_type, ids)
    assert len(told) == 1, told
    print(f"rate budget: {elapsed:.1f} s, busiest company {busiest} in flight, pending at reset {pending}")
