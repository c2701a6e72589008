"""Purging a company, on SQLite and PostgreSQL, against a real sandbox process over HTTP.

Two companies are given real data the real way (intake, pushes Codat took, datasets, a signed webhook
delivery, a notification); one is purged. Then every row of every table is read back: nothing naming the
purged company is left but its audit line, and the other company's rows are all still there.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import alerts, metadata, notification_dedupe, notifications, purges
from service.db import records as records_table
from service.notifications import Kind, Notification
from service.testing import SANDBOX_API_KEY, running_app, sandbox_company, signed_headers
from service.web.app import AppOptions
from tests.conftest import ADMIN_TOKEN, API_TOKEN, TEST_SECRET, make_settings
from tests.integration.harness import sandbox_process
from tests.queue_helpers import eventually

API = {"authorization": f"Bearer {API_TOKEN}"}
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
DEADLINE_S = 30.0
PURGED_TABLES = ("jobs", "push_records", "pushes", "records", "datasets", "alerts", "notifications",
                 "notification_dedupe", "problems", "codat_slots", "codat_company_waits", "companies")  # fmt: skip


@pytest.fixture(scope="module")
def sandbox_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `codat-relay sandbox` process: datasets end Complete at once, pushes take 20 ms."""
    with sandbox_process(tmp_path_factory.mktemp("sandbox") / "sandbox.log", "--pace-seconds", "0",
                         "--push-processing-seconds", "0.02") as base:  # fmt: skip
        yield base


class Relay:
    def __init__(self, client: httpx.AsyncClient, runtime: Any) -> None:
        self.client, self.runtime, self.engine = client, runtime, runtime.engine

    async def put(self, company: str, ids: list[str], amount: float = 10.0) -> None:
        items = [{"id": i, "orderNumber": i, "currency": "GBP", "totalAmount": amount,
                  "createdDate": "2025-06-01T09:00:00Z"} for i in ids]  # fmt: skip
        answer = await self.client.put(f"/v1/companies/{company}/records/orders", json={"records": items}, headers=API)
        assert answer.status_code == 202, answer.text

    async def accepted(self, company: str, count: int) -> None:
        query = sa.select(records_table.c.state).where(records_table.c.company_id == company)

        async def done() -> bool:
            async with self.engine.connect() as conn:
                states = list((await conn.execute(query)).scalars())
            return len(states) == count and set(states) == {"accepted"}

        await eventually(done, DEADLINE_S)

    async def deliver(self, event: str, company: str, payload: dict[str, Any] | None = None) -> str:
        delivery = f"msg_{uuid.uuid4().hex}"
        company_body = {"id": company, "name": f"{company} stores", "products": []}  # CompanyWebhook's payload
        body = orjson.dumps({"id": delivery, "eventType": event, "generatedDate": "2026-06-01T10:00:00Z",
                             "payload": payload or company_body})  # fmt: skip
        headers = signed_headers(body, TEST_SECRET, msg_id=delivery) | {"content-type": "application/json"}
        answer = await self.client.post("/webhooks/codat", content=body, headers=headers)
        assert answer.status_code in (200, 202), answer.text
        return delivery

    async def alert_status(self, delivery: str) -> str | None:
        async with self.engine.connect() as conn:
            return await conn.scalar(sa.select(alerts.c.status).where(alerts.c.id == delivery))

    async def give_data(self, company: str) -> None:
        """Records in two versions (two pushes, two datasets), a processed delivery, a notification."""
        await self.put(company, [f"{company}-o-1", f"{company}-o-2"])
        await self.accepted(company, 2)
        await self.put(company, [f"{company}-o-1"], amount=11.0)
        await self.accepted(company, 2)
        delivery = await self.deliver("read.completed", company, {
            "referenceCompany": {"id": company, "name": company}, "modifiedFromDate": None,
            "dataTypes": [{"connectionId": "c-1", "dataType": "commerce-orders", "status": "Complete"}]})

        async def processed() -> bool:
            return await self.alert_status(delivery) in ("done", "ignored")

        await eventually(processed, DEADLINE_S)
        await self.runtime.notifier.notify(Notification(Kind.DATASET_FAILED, f"dataset of {company} failed",
                                                        company_id=company, subject=f"{company}-subject"))  # fmt: skip


async def rows_naming(engine: AsyncEngine, text: str) -> dict[str, int]:
    """Per table, the rows in which `text` appears in any column (JSON and bytes included)."""
    found: dict[str, int] = {}
    async with engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in await conn.execute(sa.select(table)):
                if any(text in (v.decode(errors="replace") if isinstance(v, bytes) else str(v)) for v in row):
                    found[table.name] = found.get(table.name, 0) + 1
    return found


async def notification_ids(engine: AsyncEngine, company: str) -> list[str]:
    async with engine.connect() as conn:
        query = sa.select(notifications.c.id).where(notifications.c.company_id == company)
        return list((await conn.execute(query)).scalars())


@pytest.fixture
async def relay(database_url: str, sandbox_url: str) -> AsyncIterator[Relay]:
    settings = make_settings(database_url, codat_base_url=sandbox_url, codat_api_key=SANDBOX_API_KEY,
                             push_debounce_seconds=0)  # fmt: skip
    async with running_app(settings, options=AppOptions(run_workers=True)) as (app, client):
        yield Relay(client, app.state.runtime)


def company_ids(sandbox_url: str, *, create: bool = True) -> str:
    company = f"co-{uuid.uuid4().hex[:10]}"
    if create:
        sandbox_company(sandbox_url, company, sync_start="2025-01-01T00:00:00Z")
    return company


async def test_purge_leaves_only_the_audit_line_and_the_dry_run_counts_what_goes(
    relay: Relay, sandbox_url: str
) -> None:
    """`POST /v1/companies/{id}/purge` with `{"dryRun": true}` counts per table and deletes nothing; the real purge
    deletes exactly those rows, after which no row of any table names the company but its `purges` line; the
    other company keeps every row."""
    gone, kept = await asyncio.to_thread(company_ids, sandbox_url), await asyncio.to_thread(company_ids, sandbox_url)
    await relay.give_data(gone)
    await relay.give_data(kept)
    before_gone, before_kept = await rows_naming(relay.engine, gone), await rows_naming(relay.engine, kept)
    assert set(before_gone) >= {"records", "push_records", "pushes", "datasets", "alerts", "jobs", "notifications",
                                "notification_dedupe", "problems", "companies"}  # fmt: skip

    dry = await relay.client.post(f"/v1/companies/{gone}/purge", json={"dryRun": True}, headers=ADMIN)
    assert dry.status_code == 200, dry.text
    assert dry.json()["dryRun"] is True
    counts = dry.json()["counts"]
    notes = await notification_ids(relay.engine, gone)
    # The delivery job of its notification names the notification, not the company: counted beside the rest.
    expected = {table: before_gone.get(table, 0) for table in PURGED_TABLES}
    assert counts == expected | {"jobs": expected["jobs"] + len(notes)}
    assert await rows_naming(relay.engine, gone) == before_gone  # a dry run deletes nothing

    real = await relay.client.post(f"/v1/companies/{gone}/purge", headers=ADMIN)
    assert real.status_code == 200, real.text
    assert real.json()["counts"] == counts and real.json()["dryRun"] is False

    assert await rows_naming(relay.engine, gone) == {"purges": 1}
    for note in notes:
        assert await rows_naming(relay.engine, note) == {}
    assert await rows_naming(relay.engine, kept) == before_kept
    async with relay.engine.connect() as conn:
        line = (await conn.execute(sa.select(purges).where(purges.c.company_id == gone))).mappings().one()
    assert line["requested_by"] == "api admin token" and line["counts"] == counts
    assert line["requested_at"] <= line["finished_at"]


async def test_purge_answers_404_for_an_unknown_company_and_422_for_a_bad_body(relay: Relay) -> None:
    """Nothing known of the company: 404 and no audit line; a body that is not `{"dryRun": bool}`: 422 (as every
    admin body); no token: 401."""
    assert (await relay.client.post("/v1/companies/nobody/purge", headers=ADMIN)).status_code == 404
    for body in (b"[1]", b"{", b'{"dryRun": "yes"}', b'{"dry": true}'):
        answer = await relay.client.post("/v1/companies/nobody/purge", content=body, headers=ADMIN)
        assert answer.status_code == 422, (body, answer.text)
    assert (await relay.client.post("/v1/companies/nobody/purge")).status_code == 401
    assert await rows_naming(relay.engine, "nobody") == {}


async def test_company_deleted_purges_once_codat_confirms_it(relay: Relay, sandbox_url: str) -> None:
    """`company.deleted` (CompanyWebhook: the company is `payload.id`; docs/using-the-api/webhooks/event-types.md)
    for a company Codat answers 404 for (Platform `GET /companies/{companyId}`) purges it after the alert is
    processed, the alert and its job included: one audit line remains. For a company Codat still has, the same
    event purges nothing."""
    present = await asyncio.to_thread(company_ids, sandbox_url)
    await relay.give_data(present)
    absent = company_ids(sandbox_url, create=False)  # never created in Codat: the sandbox answers 404
    await relay.deliver("read.completed", absent, {"referenceCompany": {"id": absent}, "dataTypes": []})
    await relay.runtime.notifier.notify(Notification(Kind.DATASET_FAILED, "x", company_id=absent, subject="s"))
    assert await rows_naming(relay.engine, absent)

    kept_before = await rows_naming(relay.engine, present)
    ignored = await relay.deliver("company.deleted", present)

    async def handled() -> bool:
        return await relay.alert_status(ignored) == "ignored"

    await eventually(handled, DEADLINE_S)
    await relay.deliver("company.deleted", absent)

    async def purged() -> bool:
        return await rows_naming(relay.engine, absent) == {"purges": 1}

    await eventually(purged, DEADLINE_S)
    async with relay.engine.connect() as conn:
        line = (await conn.execute(sa.select(purges).where(purges.c.company_id == absent))).mappings().one()
    assert line["requested_by"].startswith("codat company.deleted msg_")
    assert line["counts"]["alerts"] == 2  # the read.completed, then the company.deleted itself
    after = await rows_naming(relay.engine, present)
    assert after.pop("alerts") == kept_before.pop("alerts") + 1  # its own company.deleted, kept as `ignored`
    after.pop("jobs"), kept_before.pop("jobs")  # its alert job
    assert after == kept_before


async def test_purge_finds_the_dedupe_windows_of_a_long_company_id(relay: Relay) -> None:
    """A 240-character company id makes dedupe keys too long to keep whole (cut, then a digest): the purge still
    finds and deletes its windows, and another company's stay."""
    long_id, other = "L" * 240, "co-short"
    for company in (long_id, other):
        await relay.runtime.notifier.notify(Notification(Kind.SYNC_FAILED, "x", company_id=company, subject="s" * 40))
    async with relay.engine.connect() as conn:
        keys = list((await conn.execute(sa.select(notification_dedupe.c.key))).scalars())
    assert any("#" in key and key.startswith(f"sync_failed|{long_id[:200]}") for key in keys)
    answer = await relay.client.post(f"/v1/companies/{long_id}/purge", headers=ADMIN)
    assert answer.status_code == 200 and answer.json()["counts"]["notification_dedupe"] == 1
    async with relay.engine.connect() as conn:
        left = list((await conn.execute(sa.select(notification_dedupe.c.key))).scalars())
    assert left == [key for key in keys if other in key]
