"""Asking Codat about a pushed dataset: a 429 waits as Codat says, a 404 ends the dataset instead of the job.

The pusher, the poll job and the dataset-status handler run in-process; Codat is `httpx.MockTransport`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import structlog

from handlers.dataset_status import on_dataset_status
from service.alerts import parse_alert
from service.clock import FixedClock
from service.codat.client import CodatClient
from service.db import create_engine, datasets, jobs, notifications, records
from service.errors import RetryLater
from service.outbox import store_records
from service.pusher import Pusher
from service.queue import Job
from service.records import validate_records
from service.runtime import Runtime, build_runtime
from service.testing import legacy_body
from service.tracking import NOT_FOUND_GRACE_S, POLL_KIND
from service.types import Context, Outcome
from tests.conftest import make_settings
from tests.queue_helpers import leased_job

COMPANY, DATASET = "co-1", "ds-1"


@dataclass
class Codat:
    """Answers pushes with DATASET, and dataset reads with whatever the test sets."""

    answer: httpx.Response = field(
        default_factory=lambda: httpx.Response(200, json={"id": DATASET, "status": "Queued"}))
    reads: int = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json={"data": {}, "datasetId": DATASET})
        self.reads += 1
        return self.answer


@dataclass
class Relay:
    runtime: Runtime
    clock: FixedClock
    codat: Codat
    pusher: Pusher

    async def poll(self) -> None:
        job = Job(id=0, kind=POLL_KIND, payload={"dataset_id": DATASET, "company_id": COMPANY}, lock_key=None,
                  queueing_lock=None, attempts=1, run_at=0.0, created_at=0.0)  # fmt: skip
        await self.pusher.tracker.poll_dataset(job, 1)

    async def one(self, query: Any) -> Any:
        async with self.runtime.engine.connect() as conn:
            return (await conn.execute(query)).one()


@asynccontextmanager
async def pushed(database_url: str) -> AsyncIterator[Relay]:
    """One order pushed as DATASET; Codat's answers to reads are the test's to choose."""
    settings = make_settings(database_url)
    engine = create_engine(settings)
    clock, codat = FixedClock(), Codat()
    runtime = await build_runtime(settings, engine, clock)
    assert runtime.codat is not None
    await runtime.codat.aclose()
    # Codat's own retries of a 429 without Retry-After back off for seconds: not in a unit test.
    runtime.codat = CodatClient("https://codat.test", None, transport=httpx.MockTransport(codat), sleep=_nothing)
    try:
        valid, _ = validate_records("commerce-orders", [{"id": "o-1", "totalAmount": 1.0}])
        await store_records(engine, COMPANY, "commerce-orders", valid, now=clock.now(), after=_nothing)
        pusher = Pusher(runtime)
        await pusher.run(await leased_job(engine, "push", {"company_id": COMPANY, "data_type": "commerce-orders"},
                                          clock.now()), 1)  # fmt: skip
        yield Relay(runtime, clock, codat, pusher)
    finally:
        await runtime.close()
        await engine.dispose()


async def _nothing(*_: Any) -> None:
    return None


@pytest.mark.parametrize(("headers", "wait_s"), [({"Retry-After": "120"}, 120), ({}, 30)])
async def test_a_rate_limited_poll_waits_as_long_as_codat_says(
    database_url: str, headers: dict[str, str], wait_s: int
) -> None:
    """429 on a dataset read: the poll job asks the worker to wait Retry-After (30 s without one), nothing changes."""
    async with pushed(database_url) as relay:
        relay.codat.answer = httpx.Response(429, json={"statusCode": 429, "error": "Too many"}, headers=headers)
        with pytest.raises(RetryLater) as caught:
            await relay.poll()
        row = await relay.one(sa.select(datasets.c.status, datasets.c.terminal))
    assert caught.value.after_s == wait_s
    assert tuple(row) == ("Initial", False)


async def test_a_404_soon_after_the_push_is_asked_again_later(database_url: str) -> None:
    """A 404 within the grace period ends neither the job nor the dataset: another poll is scheduled."""
    async with pushed(database_url) as relay:
        relay.codat.answer = httpx.Response(404, json={"statusCode": 404, "error": "Not found"})
        relay.clock.advance(NOT_FOUND_GRACE_S - 60)
        await relay.poll()
        row = await relay.one(sa.select(datasets.c.terminal, datasets.c.polls, datasets.c.next_poll_at))
        waiting = await relay.one(
            sa.select(sa.func.count()).where(jobs.c.kind == POLL_KIND, jobs.c.status == "waiting"))
    assert (row.terminal, row.polls) == (False, 1) and row.next_poll_at > relay.clock.now()
    assert waiting == (1,)


async def test_a_dataset_codat_no_longer_knows_ends_failed_and_staff_hear_once(database_url: str) -> None:
    """A 404 long after the push ends the dataset NotFound, its records failed, staff told once; no job fails."""
    async with pushed(database_url) as relay:
        relay.codat.answer = httpx.Response(404, json={"statusCode": 404, "error": "Company not found"})
        relay.clock.advance(NOT_FOUND_GRACE_S + 1)
        await relay.poll()
        await relay.poll()  # a second poll (a duplicate job) finds it terminal and does nothing
        body = legacy_body(CompanyId=COMPANY, Data={"dataType": "commerce-orders", "datasetStatus": "FetchError",
                                                    "datasetId": DATASET})  # fmt: skip
        alert = parse_alert(body, json.dumps(body).encode(), header_id=None, signed=False)
        runtime = relay.runtime
        ctx = Context(store=runtime.engine, codat=runtime.codat, notifier=runtime.notifier, clock=relay.clock,
                      log=structlog.get_logger(), attempt=1, tracker=runtime.tracker)  # fmt: skip
        outcome = await on_dataset_status(alert, ctx)
        dataset = await relay.one(sa.select(datasets.c.status, datasets.c.terminal, datasets.c.error_message))
        record = await relay.one(sa.select(records.c.state, records.c.inflight))
        told = await relay.one(sa.select(sa.func.count(), sa.func.max(notifications.c.kind)))
    assert outcome is Outcome.DONE
    assert (dataset.status, dataset.terminal) == ("NotFound", True) and "404" in dataset.error_message
    assert tuple(record) == ("failed", False)
    assert tuple(told) == (1, "dataset_failed")
    assert relay.codat.reads == 1  # terminal now: neither the second poll nor the alert asks again
