"""Problems open once and resolve by themselves; staff hear "resolved" on the same targets (issue 17).

One lifecycle test per notification kind, each through the code that really opens and clears it: the
relay in-process with its workers, Codat the `codat-relay sandbox` process over HTTP, webhooks signed
with the `standardwebhooks` library, and staff's target a real HTTP server. Each test reads the problem
through `GET /v1/problems` and the messages the target received (`state` opened → resolved).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from handlers.connection import on_connection_deleted, on_connection_status
from service import queue
from service.clock import FixedClock
from service.db import create_engine, notifications, records, writer
from service.db import problems as problems_table
from service.dispatch import make_alert_job
from service.notifications import NOTIFY_JOB_KIND, Kind, Notification, Notifier, NotifyJob
from service.retry import RetryPolicy
from service.testing import SANDBOX_API_KEY, SANDBOX_AUTH, running_app, sandbox_company, signed_headers
from service.tracking import SYNC_KIND
from service.types import Alert, AlertKind, Context, Outcome
from service.web.app import AppOptions
from service.worker import Worker
from tests.conftest import ADMIN_TOKEN, API_TOKEN, TEST_AUTH_HEADER, TEST_SECRET, make_settings
from tests.integration.harness import sandbox_process
from tests.queue_helpers import eventually, job_rows, leased_job
from tests.test_connection_problems import event as connection_event
from tests.test_connection_problems import not_found, relay
from tests.test_notifications import Target, serving

API = {"authorization": f"Bearer {API_TOKEN}"}
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
DEADLINE_S = 30.0


def order(order_id: str, amount: float = 10.0, modified: str = "2025-06-01T10:00:00Z") -> dict[str, Any]:
    return {"id": order_id, "orderNumber": order_id, "currency": "GBP", "totalAmount": amount,
            "createdDate": "2025-06-01T09:00:00Z", "sourceModifiedDate": modified}  # fmt: skip


@pytest.fixture(scope="module")
def sandbox_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `codat-relay sandbox` process: datasets end Complete at once, pushes take 20 ms."""
    with sandbox_process(tmp_path_factory.mktemp("sandbox") / "sandbox.log", "--pace-seconds", "0",
                         "--push-processing-seconds", "0.02") as base:  # fmt: skip
        yield base


class Env:
    def __init__(self, relay: httpx.AsyncClient, sandbox: httpx.AsyncClient, runtime: Any, target: Target) -> None:
        self.relay, self.sandbox, self.runtime, self.target = relay, sandbox, runtime, target
        self.company = f"co-{uuid.uuid4().hex[:10]}"

    async def put(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        answer = await self.relay.put(f"/v1/companies/{self.company}/records/orders", json={"records": items},
                                      headers=API)  # fmt: skip
        assert answer.status_code == 202, answer.text
        return dict(answer.json())

    async def problems(self, **params: str) -> list[dict[str, Any]]:
        answer = await self.relay.get("/v1/problems", params={"companyId": self.company, **params}, headers=ADMIN)
        assert answer.status_code == 200, answer.text
        return list(answer.json()["results"])

    async def one(self, kind: str, state: str) -> dict[str, Any]:
        """Wait until exactly one problem of `kind` is in `state` (open: unresolved), and return it."""
        found: list[dict[str, Any]] = []

        async def there() -> bool:
            found[:] = [p for p in await self.problems(status=state) if p["kind"] == kind]
            return len(found) == 1

        await eventually(there, DEADLINE_S)
        return found[0]

    def told(self, problem_id: str) -> list[str]:
        return [m["state"] for m in self.target.received if m["problemId"] == problem_id]

    async def until_told(self, problem_id: str, states: list[str]) -> None:
        async def done() -> bool:
            return self.told(problem_id) == states

        await eventually(done, DEADLINE_S)

    async def webhook(self, event_type: str, generated: str) -> None:
        body = json.dumps({
            "id": str(uuid.uuid4()), "eventType": event_type, "generatedDate": generated,
            "payload": {"referenceCompany": {"id": self.company}, "connection": {"id": "conn-1", "status": "Linked"}},
        }).encode()  # fmt: skip
        answer = await self.relay.post("/webhooks/codat", content=body, headers=signed_headers(body, TEST_SECRET))
        assert answer.status_code == 202, answer.text

    async def enqueue(self, kind: str, payload: dict[str, Any]) -> None:
        await queue.enqueue(writer(self.runtime.engine), kind, payload, now=time.time())
        self.runtime.wake_workers()


@pytest.fixture
async def env(database_url: str, sandbox_url: str) -> AsyncIterator[Env]:
    target = Target()
    async with serving(target.app) as target_url:
        settings = make_settings(database_url, codat_base_url=sandbox_url, codat_api_key=SANDBOX_API_KEY,
                                 push_debounce_seconds=0, repush_max_attempts=1, repush_backoff_seconds=0,
                                 notify_webhook_url=f"{target_url}/hook")  # fmt: skip
        async with running_app(settings, options=AppOptions(run_workers=True)) as (app, relay):
            async with httpx.AsyncClient(base_url=sandbox_url, timeout=10, headers=SANDBOX_AUTH) as sandbox:
                created = Env(relay, sandbox, app.state.runtime, target)
                await asyncio.to_thread(sandbox_company, sandbox_url, created.company,
                                        sync_start="2025-01-01T00:00:00Z")  # fmt: skip
                yield created


async def test_dataset_failed_resolves_when_the_corrected_records_complete(env: Env) -> None:
    """ValidationError → one `dataset_failed` problem; the record corrected and resubmitted completes → resolved."""
    await env.sandbox.post("/_sandbox/script/dataset", json={
        "companyId": env.company, "dataType": "commerce-orders", "status": "ValidationError",
        "errorMessage": "Order f-1: location till-9 does not exist"})  # fmt: skip
    await env.put([order("f-1")])
    opened = await env.one("dataset_failed", "open")
    await env.until_told(opened["id"], ["opened"])
    assert opened["state"] == "open" and opened["count"] == 1 and opened["ageSeconds"] >= 0

    await env.put([order("f-1", 12.0, "2025-06-02T10:00:00Z")])  # the merchant fixed the order
    resolved = await env.one("dataset_failed", "resolved")
    await env.until_told(opened["id"], ["opened", "resolved"])
    assert resolved["id"] == opened["id"] and resolved["resolvedAt"] is not None
    assert await env.problems(status="open") == []
    message = next(m for m in env.target.received if m["state"] == "resolved")
    assert message["kind"] == "dataset_failed" and message["companyId"] == env.company
    assert message["summary"].startswith("Resolved: ")


async def test_repush_exhausted_resolves_when_a_repush_completes(env: Env) -> None:
    """FetchError twice (one re-push allowed) → `repush_exhausted`; a full re-push that completes → resolved."""
    await env.sandbox.post("/_sandbox/script/dataset", json={
        "companyId": env.company, "dataType": "commerce-orders", "status": "FetchError", "times": 2})
    await env.put([order("r-1")])
    opened = await env.one("repush_exhausted", "open")
    await env.until_told(opened["id"], ["opened"])

    answer = await env.relay.post(f"/v1/companies/{env.company}/repush", headers=ADMIN)
    assert answer.status_code == 202, answer.text
    env.runtime.wake_workers()
    resolved = await env.one("repush_exhausted", "resolved")
    await env.until_told(opened["id"], ["opened", "resolved"])
    assert resolved["id"] == opened["id"]


async def _records_in_state(env: Env, state: str, count: int) -> None:
    query = sa.select(records.c.state).where(records.c.company_id == env.company)

    async def done() -> bool:
        async with env.runtime.engine.connect() as conn:
            states = list((await conn.execute(query)).scalars())
        return states.count(state) == count == len(states)

    await eventually(done, DEADLINE_S)


async def _sync(env: Env, follow: bool) -> None:
    """A sync ran at Codat (the sandbox), then codat-relay reads its status as its `check_sync` job does."""
    started = await env.sandbox.post(f"/companies/{env.company}/sync/commerce/latest", json={})
    assert started.status_code == 200, started.text
    await env.sandbox.post("/_sandbox/tick")
    await env.enqueue(SYNC_KIND, {"company_id": env.company, **({"follow": 0} if follow else {})})


async def test_sync_failed_resolves_when_the_next_sync_succeeds(env: Env) -> None:
    """A sync ending 4000 → `sync_failed`; the next sync succeeds → resolved (Codat sends no sync webhook: polled)."""
    await env.put([order("y-1")])
    await _records_in_state(env, "accepted", 1)
    await env.sandbox.post("/_sandbox/script/sync", json={"companyId": env.company, "code": 4000})
    await _sync(env, follow=True)
    opened = await env.one("sync_failed", "open")
    await env.until_told(opened["id"], ["opened"])

    await _sync(env, follow=False)
    resolved = await env.one("sync_failed", "resolved")
    await env.until_told(opened["id"], ["opened", "resolved"])
    assert resolved["id"] == opened["id"]


async def test_update_conflict_resolves_when_the_books_content_is_sent_again(env: Env) -> None:
    """A change to a synced record → `update_conflict`; the synced content sent again → resolved."""
    original = order("c-1")
    await env.put([original])
    await _records_in_state(env, "accepted", 1)
    await _sync(env, follow=False)
    await _records_in_state(env, "synced", 1)
    answer = await env.put([order("c-1", 55.0, "2025-07-01T00:00:00Z")])
    assert answer["conflicts"] == [{"id": "c-1", "reason": "already_synced"}]
    opened = await env.one("update_conflict", "open")
    assert opened["subject"] == "commerce-orders:c-1"
    await env.until_told(opened["id"], ["opened"])

    assert (await env.put([original]))["conflicts"] == []
    resolved = await env.one("update_conflict", "resolved")
    await env.until_told(opened["id"], ["opened", "resolved"])
    assert resolved["id"] == opened["id"]


@pytest.mark.parametrize(("kind", "broken_by"), [
    ("connection_deleted", "connection.deleted"), ("auth_required", "connection.disconnected"),
])  # fmt: skip
async def test_connection_problems_resolve_when_the_connection_is_linked_again(
    env: Env, kind: str, broken_by: str
) -> None:
    """A deleted (or disconnected) connection → its problem; `connection.reconnected` → resolved."""
    await env.webhook(broken_by, "2026-01-01T10:05:00Z")
    opened = await env.one(kind, "open")
    assert opened["subject"] == "connection"
    await env.until_told(opened["id"], ["opened"])

    await env.webhook("connection.reconnected", "2026-01-01T10:10:00Z")
    resolved = await env.one(kind, "resolved")
    await env.until_told(opened["id"], ["opened", "resolved"])
    assert resolved["id"] == opened["id"]


async def test_alert_dead_resolves_when_the_replayed_alert_is_processed(database_url: str) -> None:
    """An alert whose handler keeps failing dies → `alert_dead`; replayed once its cause is fixed → resolved."""
    target = Target()
    broken = [True]

    async def flaky(alert: Alert, ctx: Context) -> Outcome:
        if broken[0]:
            raise RuntimeError("the cause, not yet fixed")
        return Outcome.DONE

    async with serving(target.app) as target_url:
        settings = make_settings(database_url, notify_webhook_url=f"{target_url}/hook")
        async with running_app(settings) as (app, relay):
            runtime = app.state.runtime
            worker = Worker(runtime.engine, {
                queue.ALERT_JOB_KIND: make_alert_job({AlertKind.CONNECTION_DELETED: flaky}, runtime),
                NOTIFY_JOB_KIND: NotifyJob(runtime.engine, runtime.senders, runtime.notifier),
            }, concurrency=2, lease_s=30, clock=runtime.clock, notifier=runtime.notifier,
                retry=RetryPolicy(base_s=0.01, cap_s=0.01, max_attempts=1), poll_interval_s=0.02)  # fmt: skip
            runtime.workers.append(worker)
            stop_worker = asyncio.Event()
            task = asyncio.create_task(worker.run(stop_worker))
            try:
                body = json.dumps({"id": str(uuid.uuid4()), "eventType": "connection.deleted",
                                   "generatedDate": "2026-01-01T10:05:00Z",
                                   "payload": {"referenceCompany": {"id": "co-dead"}}}).encode()  # fmt: skip
                stored = await relay.post("/webhooks/codat", content=body,
                                          headers={"authorization": TEST_AUTH_HEADER})  # fmt: skip
                alert_id = stored.json()["id"]
                problems: list[dict[str, Any]] = []

                async def listed(state: str) -> bool:
                    answer = await relay.get("/v1/problems", params={"status": state, "companyId": "co-dead"},
                                             headers=ADMIN)  # fmt: skip
                    problems[:] = [p for p in answer.json()["results"] if p["kind"] == "alert_dead"]
                    return len(problems) == 1

                await eventually(lambda: listed("open"), DEADLINE_S)
                opened = problems[0]
                assert opened["subject"] == alert_id

                broken[0] = False
                assert (await relay.post(f"/v1/alerts/{alert_id}/replay", headers=ADMIN)).status_code == 202
                worker.wake()
                await eventually(lambda: listed("resolved"), DEADLINE_S)

                async def told_both() -> bool:
                    return [m["state"] for m in target.received if m["problemId"] == opened["id"]] == [
                        "opened", "resolved"]

                await eventually(told_both, DEADLINE_S)
            finally:
                stop_worker.set()
                await task
    assert problems[0]["id"] == opened["id"]


async def _rows(engine: Any, table: sa.Table) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(sa.select(table).order_by(*table.primary_key))).mappings()]


async def test_a_problem_back_within_the_window_is_reopened_untold_and_after_it_is_new(database_url: str) -> None:
    """Deleted → reconnected → deleted again 10 min later: the same row, reopened (count 2), no new message;
    reconnected again and deleted after RELAY_NOTIFY_DEDUPE_SECONDS: a new problem, told at once."""
    async with relay(database_url, not_found) as r:
        clock = r.runtime.clock
        await on_connection_deleted(connection_event("connection.deleted", "2026-01-01T10:05:00Z"), r.ctx)
        clock.advance(300)
        await on_connection_status(connection_event("connection.reconnected", "2026-01-01T10:10:00Z"), r.ctx)
        clock.advance(600)
        await on_connection_deleted(connection_event("connection.deleted", "2026-01-01T10:20:00Z"), r.ctx)
        reopened = await _rows(r.runtime.engine, problems_table)
        messages = [(n["event"], n["problem_id"]) for n in await _rows(r.runtime.engine, notifications)]
        await on_connection_status(connection_event("connection.reconnected", "2026-01-01T10:30:00Z"), r.ctx)
        clock.advance(r.runtime.settings.notify_dedupe_seconds + 1)
        await on_connection_deleted(connection_event("connection.deleted", "2026-01-01T12:00:00Z"), r.ctx)
        later = await _rows(r.runtime.engine, problems_table)
        opened = [n for n in await _rows(r.runtime.engine, notifications) if n["event"] == "opened"]
    assert len(reopened) == 1 and reopened[0]["count"] == 2 and reopened[0]["resolved_at"] is None
    assert reopened[0]["last_seen_at"] - reopened[0]["opened_at"] == 900
    assert sorted(messages) == sorted([("opened", reopened[0]["id"]), ("resolved", reopened[0]["id"])])
    assert len(later) == 2 and sum(p["resolved_at"] is None for p in later) == 1
    assert len(opened) == 2 and {n["problem_id"] for n in opened} == {p["id"] for p in later}


async def test_problems_are_listed_filtered_and_acknowledged(database_url: str) -> None:
    """`GET /v1/problems` by status and company with their age; `POST /v1/problems/{id}/ack` keeps it open
    (acknowledged) until it resolves; bad filters are 422, unknown ids 404, no token 401."""
    clock = FixedClock()
    async with running_app(make_settings(database_url), clock=clock) as (app, client):
        notifier = app.state.runtime.notifier
        await notifier.notify(Notification(Kind.SYNC_FAILED, "Codat sync failed with 4000", company_id="co-a",
                                           subject="sync-1"))  # fmt: skip
        clock.advance(10)
        await notifier.notify(Notification(Kind.SYNC_FAILED, "Codat sync failed with 4000", company_id="co-b",
                                           subject="sync-2"))  # fmt: skip
        clock.advance(5)
        listed = (await client.get("/v1/problems", headers=ADMIN)).json()["results"]
        first = listed[1]
        acked = await client.post(f"/v1/problems/{first['id']}/ack", json={"by": "sam"}, headers=ADMIN)
        open_now = (await client.get("/v1/problems?status=open", headers=ADMIN)).json()["results"]
        ack_only = (await client.get("/v1/problems?state=acknowledged", headers=ADMIN)).json()["results"]
        of_b = (await client.get("/v1/problems?companyId=co-b", headers=ADMIN)).json()["results"]
        async with writer(app.state.runtime.engine).begin() as conn:
            await notifier.resolve(conn, "a sync succeeded", kinds=[Kind.SYNC_FAILED], company_id="co-a")
        clock.advance(100)
        resolved = (await client.get("/v1/problems?status=resolved", headers=ADMIN)).json()["results"]
        bad = await client.get("/v1/problems?status=closed", headers=ADMIN)
        bad_limit = await client.get("/v1/problems?limit=0", headers=ADMIN)
        bad_body = await client.post(f"/v1/problems/{first['id']}/ack", json={"who": "x"}, headers=ADMIN)
        missing = await client.post("/v1/problems/nope/ack", headers=ADMIN)
        anonymous = await client.get("/v1/problems")
    assert [p["companyId"] for p in listed] == ["co-b", "co-a"]
    assert (first["ageSeconds"], listed[0]["ageSeconds"]) == (15, 5)
    assert acked.status_code == 200
    assert acked.json()["state"] == "acknowledged" and acked.json()["acknowledgedBy"] == "sam"
    assert sorted(p["state"] for p in open_now) == ["acknowledged", "open"]
    assert [p["id"] for p in ack_only] == [first["id"]]
    assert [p["companyId"] for p in of_b] == ["co-b"]
    assert [p["id"] for p in resolved] == [first["id"]]
    assert resolved[0]["ageSeconds"] == 15  # its age stopped when it resolved
    assert (bad.status_code, bad_limit.status_code, bad_body.status_code) == (422, 422, 422)
    assert (missing.status_code, anonymous.status_code) == (404, 401)


class Recording:
    """A notification target that takes everything (the generic webhook's messages, as dicts)."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any]) -> None:
        self.received.append(message)


async def test_a_target_that_lost_notifications_resolves_when_it_delivers_again(database_url: str) -> None:
    """The webhook target's notify job dies → `alert_dead` (undelivered:webhook), told to the e-mail target;
    the next notification of that company reaches the webhook → resolved, told to both."""
    clock = FixedClock()
    engine = create_engine(make_settings(database_url))
    webhook, email = Recording(), Recording()
    notifier = Notifier(engine, ["email", "webhook"], dedupe_s=3600, clock=clock)
    deliver = NotifyJob(engine, {"webhook": webhook, "email": email}, notifier)
    try:
        lost = await notifier.notify(Notification(Kind.SYNC_FAILED, "sync failed", company_id="co-1", subject="s-1"))
        dead = await leased_job(engine, NOTIFY_JOB_KIND, {"notification_id": lost, "sender": "webhook"}, clock.now())
        await notifier.job_dead(dead, "HTTPStatusError: 503")
        clock.advance(60)
        later = await notifier.notify(Notification(Kind.SYNC_FAILED, "sync failed", company_id="co-1", subject="s-2"))
        await deliver(await leased_job(engine, NOTIFY_JOB_KIND, {"notification_id": later, "sender": "webhook"},
                                       clock.now()), 1)  # fmt: skip
        problems = {p["subject"]: p for p in await _rows(engine, problems_table)}
        told = [(n["kind"], n["event"], n["problem_id"]) for n in await _rows(engine, notifications)]
        queued = await job_rows(engine, kind=NOTIFY_JOB_KIND, status="waiting")
    finally:
        await engine.dispose()
    undelivered = problems["undelivered:webhook"]
    assert undelivered["kind"] == "alert_dead" and undelivered["resolved_at"] == clock.now()
    assert ("alert_dead", "opened", undelivered["id"]) in told and ("alert_dead", "resolved", undelivered["id"]) in told
    # the loss was told to the e-mail target only; its resolution goes to every target
    by_sender = Counter(j["payload"]["sender"] for j in queued)
    assert by_sender == Counter({"email": 4, "webhook": 3})


async def test_our_refused_api_key_resolves_when_codat_takes_a_push(database_url: str) -> None:
    """401 on a push → `auth_required` (subject api_key); the key fixed, the next push is taken → resolved."""
    refusing = [True]

    def codat(request: httpx.Request) -> httpx.Response:
        if refusing[0]:
            return httpx.Response(401, json={"statusCode": 401, "error": "Unauthorized"})
        return httpx.Response(200, json={"datasetId": f"ds-{uuid.uuid4().hex[:8]}"})

    async with relay(database_url, codat) as r:
        with pytest.raises(Exception, match=r"401|Unauthorized"):
            await r.push("commerce-orders")
        opened = await _rows(r.runtime.engine, problems_table)
        refusing[0] = False
        await r.push("commerce-orders")
        after = await _rows(r.runtime.engine, problems_table)
        told = sorted(n["event"] for n in await _rows(r.runtime.engine, notifications))
    assert [(p["kind"], p["subject"], p["resolved_at"]) for p in opened] == [("auth_required", "api_key", None)]
    assert after[0]["resolved_at"] is not None and told == ["opened", "resolved"]
