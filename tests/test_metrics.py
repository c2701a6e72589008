"""Every /metrics family of issue 7 moves when its event happens, as scraped through the endpoint itself.

The app runs in-process with its workers and the Codat sandbox in-process behind `transport=`. Counters
live in one process-wide registry, so each test compares a scrape taken after the event with one taken
before it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from service import metrics, queue
from service.alert_index import SETTLE_S, AlertIndexer
from service.clock import FixedClock
from service.db import jobs, records
from service.notifications import Kind, Notification
from service.retention import Pace, Pruner, Retention
from service.runtime import Runtime
from service.testing import SANDBOX_AUTH, legacy_body, running_app, running_sandbox
from service.web.app import AppOptions
from tests.conftest import ADMIN_TOKEN, API_TOKEN, TEST_AUTH_HEADER, make_settings
from tests.queue_helpers import eventually

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
API = {"authorization": f"Bearer {API_TOKEN}"}
DEADLINE_S = 20.0


class Scrape:
    """One `GET /metrics` answer, parsed: sample name + labels → value."""

    def __init__(self, text: str) -> None:
        self.samples = [
            (sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def total(self, name: str, **labels: str) -> float:
        """The sum over every sample of `name` whose labels include `labels` (0 when none)."""
        return sum(v for n, ls, v in self.samples if n == name and labels.items() <= ls.items())

    def value(self, name: str, **labels: str) -> float | None:
        found = [v for n, ls, v in self.samples if n == name and ls == labels]
        return found[0] if found else None


@dataclass
class Relay:
    client: httpx.AsyncClient
    sandbox: httpx.AsyncClient
    runtime: Runtime
    company: str

    async def scrape(self) -> Scrape:
        answer = await self.client.get("/metrics", headers=ADMIN)
        assert answer.status_code == 200
        return Scrape(answer.text)

    async def put(self, *order_ids: str) -> None:
        orders = [{"id": i, "orderNumber": i, "currency": "GBP", "totalAmount": 10.0,
                   "createdDate": "2025-06-01T09:00:00Z", "sourceModifiedDate": "2025-06-01T10:00:00Z"}
                  for i in order_ids]  # fmt: skip
        answer = await self.client.put(f"/v1/companies/{self.company}/records/orders", json={"records": orders},
                                       headers=API)  # fmt: skip
        assert answer.status_code == 202, answer.text

    async def until_record(self, record_id: str, state: str) -> None:
        query = sa.select(records.c.state).where(records.c.company_id == self.company, records.c.record_id == record_id)

        async def reached() -> bool:
            async with self.runtime.engine.connect() as conn:
                return bool(await conn.scalar(query) == state)

        await eventually(reached, DEADLINE_S)


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    db = tmp_path / "relay.db"
    db.write_bytes(sqlite_template.read_bytes())
    return f"sqlite+aiosqlite:///{db}"


@pytest.fixture
async def relay(sqlite_url: str) -> AsyncIterator[Relay]:
    settings = make_settings(
        sqlite_url, codat_base_url="http://codat.test", codat_api_key="metrics-test-key",
        push_debounce_seconds=0, repush_backoff_seconds=0,
    )  # fmt: skip
    company = f"co-metrics-{uuid.uuid4().hex[:8]}"
    async with running_sandbox(companies=[company]) as (_sandbox_app, transport):
        options = AppOptions(run_workers=True, transport=transport)
        async with (
            running_app(settings, options=options) as (app, client),
            httpx.AsyncClient(transport=transport, base_url="http://codat.test") as sandbox,
        ):
            yield Relay(client, sandbox, app.state.runtime, company)


async def test_deliveries_by_outcome_and_handler_latency(relay: Relay) -> None:
    """Each answer counts under its outcome; the alert's handler run is timed and counted under kind `alert`."""
    before = await relay.scrape()
    body = json.dumps(legacy_body(AlertId=f"metrics-{uuid.uuid4().hex}", CompanyId=relay.company)).encode()
    headers = {"authorization": TEST_AUTH_HEADER}
    assert (await relay.client.post("/webhooks/codat", content=body, headers=headers)).status_code == 202
    assert (await relay.client.post("/webhooks/codat", content=body, headers=headers)).status_code == 200
    assert (await relay.client.post("/webhooks/codat", content=body)).status_code == 401
    alert_id = json.loads(body)["AlertId"]

    async def finished() -> bool:
        alert = (await relay.client.get(f"/v1/alerts/{alert_id}", headers=ADMIN)).json()
        return alert["status"] in ("done", "ignored", "dead")

    await eventually(finished, DEADLINE_S)
    runs = (await relay.client.get(f"/v1/alerts/{alert_id}", headers=ADMIN)).json()["attempts"]
    after = await relay.scrape()

    def moved(name: str, **labels: str) -> float:
        return after.total(name, **labels) - before.total(name, **labels)

    deliveries = "relay_webhook_deliveries_total"
    assert [moved(deliveries, outcome=o) for o in ("accepted", "duplicate", "missing_authentication")] == [1, 1, 1]
    assert runs >= 1
    assert moved("relay_job_duration_seconds_count", kind="alert") == runs
    assert moved("relay_job_duration_seconds_sum", kind="alert") > 0
    assert moved("relay_jobs_finished_total", kind="alert") == runs


async def test_pushes_codat_calls_and_rate_limit_remaining(relay: Relay) -> None:
    """A push counts as `pushed`, Codat's answers count by endpoint and status, its rate-limit header shows."""
    metrics.CODAT_RATE_LIMIT_REMAINING.set(-1)  # another test may have set it: it must be this push's answer
    before = await relay.scrape()
    await relay.put("m-1", "m-2")
    await relay.until_record("m-1", "accepted")  # pushed, and the dataset polled to Complete
    after = await relay.scrape()

    def moved(name: str, **labels: str) -> float:
        return after.total(name, **labels) - before.total(name, **labels)

    assert moved("relay_pushes_total", outcome="pushed") == 1
    assert moved("relay_pushes_total", data_type="commerce-orders", outcome="pushed") == 1
    assert moved("relay_codat_calls_total", endpoint="push_records") == 1  # one call in all, answered 200
    assert moved("relay_codat_calls_total", endpoint="push_records", status="200") == 1
    assert moved("relay_codat_calls_total", endpoint="get_dataset", status="200") >= 1
    # The sandbox's daily quota counts down with every call; a probe right after reads one less than the relay.
    probe = await relay.sandbox.get(f"/companies/{relay.company}", headers=SANDBOX_AUTH)
    assert after.value("relay_codat_rate_limit_remaining") == int(probe.headers["X-Rate-Limit-Remaining"]) + 1
    # The shared budget's count (from the database) agrees with the last answer; nothing waited on it.
    assert after.value("relay_codat_quota_remaining") == after.value("relay_codat_rate_limit_remaining")
    assert after.value("relay_codat_calls_waiting", where="deferred") == 0


async def test_repushes_and_notifications_by_kind(relay: Relay) -> None:
    """A FetchError dataset is re-pushed; a ValidationError one is told to staff; a repeat is suppressed."""
    before = await relay.scrape()
    script = {"companyId": relay.company, "dataType": "commerce-orders", "times": 1}
    await relay.sandbox.post("/_sandbox/script/dataset", json={**script, "status": "FetchError"})
    await relay.put("r-1")
    await relay.until_record("r-1", "accepted")  # failed once, re-pushed, then Complete
    await relay.sandbox.post("/_sandbox/script/dataset", json={**script, "status": "ValidationError"})
    await relay.put("r-2")
    await relay.until_record("r-2", "failed")
    after = await relay.scrape()

    def moved(name: str, **labels: str) -> float:
        return after.total(name, **labels) - before.total(name, **labels)

    assert moved("relay_repushes_total", status="FetchError", decision="repushed") == 1
    assert moved("relay_repushes_total", status="ValidationError", decision="dataset_failed") == 1
    assert moved("relay_notifications_total", kind="dataset_failed", outcome="stored") == 1
    assert moved("relay_notifications_total", kind="dataset_failed", outcome="suppressed") == 0

    # The same problem again within the dedupe window: stored once, then suppressed.
    note = Notification(Kind.SYNC_FAILED, "Sync failed", company_id=relay.company, subject="sync-1")
    await relay.runtime.notifier.notify(note)
    await relay.runtime.notifier.notify(note)
    last = await relay.scrape()
    assert last.total("relay_notifications_total", kind="sync_failed", outcome="stored") - after.total(
        "relay_notifications_total", kind="sync_failed", outcome="stored") == 1  # fmt: skip
    assert last.total("relay_notifications_total", kind="sync_failed", outcome="suppressed") - after.total(
        "relay_notifications_total", kind="sync_failed", outcome="suppressed") == 1  # fmt: skip


async def test_queue_depth_and_oldest_waiting_age(sqlite_url: str) -> None:
    """Depth counts waiting jobs; the oldest age is how long the oldest runnable one has been due, not a later one."""
    clock = FixedClock(1_750_000_000.0)
    async with running_app(make_settings(sqlite_url), clock=clock) as (app, client):  # no workers: jobs wait
        engine = app.state.runtime.engine
        await queue.enqueue(engine, "k", {}, now=clock.now())
        await queue.enqueue(engine, "k", {}, now=clock.now(), run_at=clock.now() + 3600)  # not due: not late
        clock.advance(30)
        first = Scrape((await client.get("/metrics", headers=ADMIN)).text)
        clock.advance(15)
        second = Scrape((await client.get("/metrics", headers=ADMIN)).text)
    assert first.value("relay_jobs", status="waiting") == 2
    assert (first.value("relay_jobs_oldest_waiting_seconds"), second.value("relay_jobs_oldest_waiting_seconds")) == (
        30.0, 45.0)  # fmt: skip


async def test_pruned_rows_by_table(sqlite_url: str) -> None:
    """relay_pruned_rows_total{table} counts, per table, the rows the retention prune deleted."""
    clock = FixedClock(1_750_000_000.0)
    async with running_app(make_settings(sqlite_url), clock=clock) as (app, client):  # no workers: we prune
        engine = app.state.runtime.engine
        old = clock.now() - 8 * 86_400
        async with engine.begin() as conn:
            await conn.execute(jobs.insert(), [{"kind": "k", "payload": {}, "status": "done", "attempts": 1,
                                                "run_at": old, "created_at": old, "finished_at": old}] * 3)  # fmt: skip
        before = Scrape((await client.get("/metrics", headers=ADMIN)).text)
        await Pruner(engine, Retention(), clock, pace=Pace.fixed(engine.url)).run()
        after = Scrape((await client.get("/metrics", headers=ADMIN)).text)

    def moved(table: str) -> float:
        name = "relay_pruned_rows_total"
        return after.total(name, table=table) - before.total(name, table=table)

    assert (moved("jobs"), moved("alerts")) == (3, 0)


def test_every_family_is_asserted_here() -> None:
    """A metric added to service/metrics.py without a test here fails: each family above is named in this file."""
    source = Path(__file__).read_text()
    names = {family.name for family in metrics.REGISTRY.collect()}
    assert len(names) >= 10
    assert [name for name in sorted(names) if f'"{name}' not in source] == []


async def test_alerts_indexed_and_index_lag(sqlite_url: str) -> None:
    """relay_alerts_indexed_total counts what the indexer job added to alert search's text index;
    relay_alert_index_lag_seconds is how far behind now its newest alert was after the run."""
    clock = FixedClock(1_750_000_000.0)
    async with running_app(make_settings(sqlite_url), clock=clock) as (app, client):  # no workers: we index
        for n in range(3):
            response = await client.post("/webhooks/codat", content=json.dumps(legacy_body(
                "Rate Limit Reached", CompanyId=f"co-{n}", Message="m", Data={})).encode(),
                headers={"authorization": TEST_AUTH_HEADER})  # fmt: skip
            assert response.status_code in (200, 202), response.text
        before = Scrape((await client.get("/metrics", headers=ADMIN)).text)
        clock.advance(SETTLE_S + 5)
        assert await AlertIndexer(app.state.runtime.engine, clock).run() == 3
        after = Scrape((await client.get("/metrics", headers=ADMIN)).text)
    assert after.total("relay_alerts_indexed_total") - before.total("relay_alerts_indexed_total") == 3
    assert after.value("relay_alert_index_lag_seconds") == SETTLE_S + 5
