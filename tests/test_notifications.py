"""Staff notifications: deduplicated per problem, one queue job per sender, delivered through outages."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from aiosmtpd.controller import Controller
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.clock import FixedClock, SystemClock
from service.db import create_engine, jobs, notifications
from service.notifications import NOTIFY_JOB_KIND, Kind, Notification, Notifier
from service.policies import retry_policies
from service.queue import Job
from service.retry import RetryPolicy
from service.runtime import Runtime, build_runtime
from service.senders import EmailSender, mail_text, one_line, slack_text
from service.settings import Settings
from service.worker import Worker
from tests.conftest import make_settings
from tests.queue_helpers import job_rows


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Target:
    """A real HTTP notification target that can be made to fail for a while."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.refusals = 0
        self.down = False
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> JSONResponse:
        if self.down:
            self.refusals += 1
            return JSONResponse({"error": "down"}, 503)
        self.received.append(await request.json())
        return JSONResponse({"ok": True})


@contextlib.asynccontextmanager
async def serving(app: Starlette, lifespan: Literal["on", "off"] = "off") -> AsyncIterator[str]:
    """`app` on a real socket, served by uvicorn in this event loop; yields its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan=lifespan))
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def rows(database_url: str, table: sa.Table) -> list[dict[str, Any]]:
    engine = create_engine(make_settings(database_url))
    try:
        async with engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(sa.select(table))).mappings()]
    finally:
        await engine.dispose()


def failed_dataset(company: str = "co-1", dataset: str = "ds-1") -> Notification:
    return Notification(Kind.DATASET_FAILED, "Dataset failed validation", company_id=company,
                        data_type="commerce-orders", dataset_id=dataset, details={"message": "bad tax rate"})


async def test_the_same_problem_is_told_once_per_window(database_url: str) -> None:
    """Within RELAY_NOTIFY_DEDUPE_SECONDS the same (kind, company, subject) is suppressed; after it, told again."""
    clock = FixedClock()
    engine = create_engine(make_settings(database_url))
    notifier = Notifier(engine, ["log", "webhook"], dedupe_s=3600, clock=clock)
    try:
        first = await notifier.notify(failed_dataset())
        again = await notifier.notify(failed_dataset())
        other_company = await notifier.notify(failed_dataset(company="co-2"))
        clock.advance(3601)
        later = await notifier.notify(failed_dataset())
    finally:
        await engine.dispose()
    assert first and other_company and later and again is None
    assert len(await rows(database_url, notifications)) == 3
    sent = [(j["kind"], j["payload"]["sender"]) for j in await rows(database_url, jobs)]
    assert sorted(sent) == sorted([("notify", "log"), ("notify", "webhook")] * 3)


async def test_concurrent_notifications_of_one_problem_store_one(database_url: str) -> None:
    """Twenty processes' worth of concurrent notifies of one problem: exactly one is stored."""
    engine = create_engine(make_settings(database_url))
    notifier = Notifier(engine, ["log"], dedupe_s=3600, clock=FixedClock())
    try:
        results = await asyncio.gather(*(notifier.notify(failed_dataset()) for _ in range(20)))
    finally:
        await engine.dispose()
    assert sum(r is not None for r in results) == 1


async def test_target_down_for_a_while_gets_every_notification_once(database_url: str) -> None:
    """The webhook target answers 503 for a while: every notification arrives once it is back, none twice."""
    target = Target()
    target.down = True
    async with serving(target.app) as url:
        settings = make_settings(database_url, notify_webhook_url=f"{url}/hook")
        engine = create_engine(settings)
        runtime = await build_runtime(settings, engine, SystemClock())
        worker = runtime.build_worker(retry=RetryPolicy(base_s=0.05, cap_s=0.2, max_attempts=50))
        for i in range(5):
            await runtime.notifier.notify(failed_dataset(dataset=f"ds-{i}"))
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            deadline = time.monotonic() + 20
            while target.refusals < 5:
                assert time.monotonic() < deadline, "the worker never tried the target"
                await asyncio.sleep(0.02)
            target.down = False
            while len(target.received) < 5:
                assert time.monotonic() < deadline, f"only {len(target.received)} arrived"
                await asyncio.sleep(0.02)
        finally:
            stop.set()
            await task
            await runtime.close()
            await engine.dispose()
    assert sorted(m["datasetId"] for m in target.received) == [f"ds-{i}" for i in range(5)]
    message = target.received[0]
    assert set(message) == {"kind", "severity", "companyId", "dataType", "datasetId", "summary", "details",
                            "occurredAt", "state", "problemId"}
    assert (message["kind"], message["severity"]) == ("dataset_failed", "warning")


async def test_email_goes_out_over_smtp() -> None:
    """The e-mail sender speaks real SMTP: a plain-text mail with the summary and the company."""
    received: list[Any] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append(envelope)
            return "250 OK"

    port = free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        sender = EmailSender(f"smtp://127.0.0.1:{port}", "ops@example.com, oncall@example.com")
        await sender.send({"kind": "auth_required", "severity": "critical", "companyId": "co-9", "dataType": None,
                           "datasetId": None, "summary": "Merchant must re-authorise", "details": {},
                           "occurredAt": "2026-01-01T00:00:00Z"})
    finally:
        controller.stop()
    [envelope] = received
    assert envelope.rcpt_tos == ["ops@example.com", "oncall@example.com"]
    text = envelope.content.decode()
    assert "Merchant must re-authorise" in text and "companyId: co-9" in text


def test_email_sender_repr_hides_the_password() -> None:
    """The SMTP password never shows in the sender's repr (and so in logs)."""
    assert "hunter2" not in repr(EmailSender("smtps://ops:hunter2@mail.example.com", "a@b.c"))


def test_slack_message_is_readable() -> None:
    """Slack gets kind, summary, where and details as one readable message."""
    text = slack_text({"kind": "connection_deleted", "severity": "critical", "companyId": "co-1", "dataType": None,
                       "datasetId": None, "summary": "Sync connection deleted", "details": {"connectionId": "c-1"}})
    assert text.startswith(":rotating_light: *connection_deleted*")
    assert "companyId `co-1`" in text and "connectionId: c-1" in text


HOSTILE_NOTE = {
    "kind": "dataset_failed", "severity": "warning", "companyId": "<!channel> co`1", "dataType": "orders",
    "datasetId": "ds\n• fake: line", "summary": "Codat says <https://evil.example|Codat: re-authorise here>",
    "occurredAt": "2024-01-01T00:00:00Z",
    "details": {"error": "<@U123> & <!here>", "action": "line\r\nBcc: victim@example.com"},
}  # fmt: skip


def test_slack_text_escapes_mentions_links_and_line_breaks() -> None:
    """A company id `<!channel>` or a Codat message holding `<url|label>` reaches Slack inert: no mention, no link."""
    text = slack_text(HOSTILE_NOTE)
    assert "<" not in text and ">" not in text  # nothing Slack could read as a mention or a link
    assert "&lt;!channel&gt;" in text and "&lt;https://evil.example|Codat: re-authorise here&gt;" in text
    assert "&lt;@U123&gt; &amp; &lt;!here&gt;" in text
    assert "companyId `&lt;!channel&gt; co'1`" in text  # a backtick cannot end the code span early
    assert len(text.splitlines()) == 4  # title, where, and one line per detail: no forged lines


def test_mail_text_and_subject_keep_values_on_their_line() -> None:
    """A line break in a value cannot forge lines of the mail, nor headers (the subject is one line)."""
    text = mail_text(HOSTILE_NOTE)
    assert "\nBcc:" not in text and "\n• fake" not in text
    assert len(text.splitlines()) == 11
    assert "\n" not in one_line("[codat-relay] a\r\nBcc: x")


@pytest.mark.parametrize(("env", "problem"), [({"notify_email_to": "a@b.c"}, "go together"),
                                              ({"smtp_url": "http://x"}, "go together")])
def test_email_settings_are_checked(env: dict[str, str], problem: str) -> None:
    """E-mail recipients and the SMTP URL go together, and the URL must be smtp(s)://."""
    from service.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match=problem):
        load_settings({"RELAY_WEBHOOK_AUTH_HEADER": "x", **{f"RELAY_{k.upper()}": v for k, v in env.items()}})


async def test_httpx_client_is_closed_with_the_runtime(database_url: str) -> None:
    """The runtime owns its outbound client: closing the runtime closes it."""
    settings = make_settings(database_url)
    engine = create_engine(settings)
    runtime = await build_runtime(settings, engine, FixedClock())
    await runtime.close()
    await engine.dispose()
    assert runtime.http.is_closed
    with pytest.raises(RuntimeError):
        await runtime.http.get("http://127.0.0.1:1/")
    assert isinstance(runtime.http, httpx.AsyncClient)


class FixedRng:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


NOTIFY_RETRY = retry_policies(make_settings())[NOTIFY_JOB_KIND]


@pytest.mark.parametrize(("attempt", "longest"), [(1, 5.0), (2, 10.0), (5, 80.0), (8, 640.0), (9, 900.0), (500, 900.0)])
def test_notify_backoff_doubles_up_to_fifteen_minutes(attempt: int, longest: float) -> None:
    """A failed delivery waits up to 5 s, doubling each time, never more than 15 minutes, for 5 days."""
    assert NOTIFY_RETRY.decide(attempt, ValueError("down"), 0.0, FixedRng(0.999999), queued_at=0.0) == (
        pytest.approx(longest, rel=1e-5))
    assert NOTIFY_RETRY.decide(attempt, ValueError("down"), 5 * 86_400.0 - 1, FixedRng(0.5), queued_at=0.0) is not None
    assert NOTIFY_RETRY.decide(attempt, ValueError("down"), 5 * 86_400.0, FixedRng(0.5), queued_at=0.0) is None


async def drive_clock(clock: FixedClock, worker: Worker, runtime: Runtime, done: Any, *, step_s: float = 0.0) -> None:
    """Move the injected clock to the next retry (at least `step_s` on) whenever nothing is running or due.

    Advancing only when every waiting job is in the future means no job can be claimed meanwhile, so the
    jump never expires a running job's lease.
    """
    deadline = time.monotonic() + 60
    while not done():
        assert time.monotonic() < deadline, "the notification jobs stopped making progress"
        active = [r for r in await job_rows(runtime.engine) if r["status"] in ("waiting", "running")]
        if active and all(r["status"] == "waiting" and r["run_at"] > clock.now() for r in active):
            clock.set(max(min(r["run_at"] for r in active), clock.now() + step_s))
            worker.wake()
        await asyncio.sleep(0.01)


async def settled_jobs(engine: AsyncEngine, *, kind: str) -> list[sa.RowMapping]:
    """The `kind` job rows once none is waiting or running (the worker recorded every outcome)."""
    deadline = time.monotonic() + 30
    while True:
        found = await job_rows(engine, kind=kind)
        if not any(r["status"] in ("waiting", "running") for r in found):
            return found
        assert time.monotonic() < deadline, f"{kind} jobs never settled: {[r['status'] for r in found]}"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def notified_and_working(settings: Settings, clock: FixedClock) -> AsyncIterator[tuple[Runtime, Worker]]:
    """A runtime that has stored `failed_dataset()`, and its worker running on the injected clock."""
    engine = create_engine(settings)
    runtime = await build_runtime(settings, engine, clock)
    worker = runtime.build_worker()
    await runtime.notifier.notify(failed_dataset())
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield runtime, worker
    finally:
        stop.set()
        await task
        await runtime.close()
        await engine.dispose()


async def _settled(runtime: Runtime, kind: str) -> bool:
    return all(r["status"] in ("done", "dead") for r in await job_rows(runtime.engine, kind=kind))


async def test_an_outage_longer_than_the_attempt_limit_delays_but_never_loses(database_url: str) -> None:
    """With the default RELAY_MAX_ATTEMPTS (10), a target refusing 14 times in a row still gets it, once."""
    target, clock = Target(), FixedClock()
    target.down = True
    async with serving(target.app) as url:
        settings = make_settings(database_url, notify_webhook_url=f"{url}/hook")
        assert settings.max_attempts == 10
        async with notified_and_working(settings, clock) as (runtime, worker):
            await drive_clock(clock, worker, runtime, lambda: target.refusals >= 14)
            target.down = False
            await drive_clock(clock, worker, runtime, lambda: len(target.received) >= 1)
            # The target answered before the worker's next round records `done`: wait for that state.
            rows = await settled_jobs(runtime.engine, kind="notify")
    assert [m["datasetId"] for m in target.received] == ["ds-1"]
    [webhook] = [r for r in rows if r["payload"]["sender"] == "webhook"]
    assert (webhook["status"], webhook["attempts"]) == ("done", target.refusals + 1)  # one job, never dead
    assert clock.now() - 1_750_000_000.0 < 6 * 3600  # 14 tries took hours of (injected) time, not days


async def test_a_notification_undelivered_for_five_days_is_reported_to_the_other_senders(database_url: str) -> None:
    """The webhook refuses for over 5 days: its job dies, and Slack (and the log) hear once what it missed."""
    webhook, slack, clock = Target(), Target(), FixedClock()
    webhook.down = True
    async with serving(webhook.app) as webhook_url, serving(slack.app) as slack_url:
        settings = make_settings(database_url, notify_webhook_url=f"{webhook_url}/hook",
                                 notify_slack_webhook_url=f"{slack_url}/hook")  # fmt: skip
        dead_seen: list[bool] = []
        async with notified_and_working(settings, clock) as (runtime, worker):
            await drive_clock(clock, worker, runtime, lambda: len(slack.received) >= 2, step_s=6 * 3600)
            sent = await job_rows(runtime.engine, kind="notify")
            dead_seen.append(any(r["status"] == "dead" for r in sent))
            stored = await rows(database_url, notifications)
    assert dead_seen == [True] and webhook.received == [] and webhook.refusals >= 10
    assert clock.now() - 1_750_000_000.0 >= 5 * 86_400
    original, lost = slack.received
    assert "*dataset_failed*" in original["text"]
    assert lost["text"].startswith(":rotating_light: *alert_dead*") and "never reached webhook" in lost["text"]
    [report] = [n for n in stored if n["kind"] == "alert_dead"]
    assert report["details"]["lostKind"] == "dataset_failed" and report["company_id"] == "co-1"
    assert sorted(j["payload"]["sender"] for j in sent if j["payload"]["notification_id"] == report["id"]) == [
        "log", "slack"]  # fmt: skip
    assert [j["status"] for j in sent if j["payload"]["sender"] == "webhook"].count("dead") == 1


async def test_a_lost_notification_for_a_sender_no_longer_configured_tells_nobody(database_url: str) -> None:
    """A notify job for a sender removed from the settings dies without reporting a loss to the others."""
    settings = make_settings(database_url)
    engine = create_engine(settings)
    notifier = Notifier(engine, ["log", "webhook"], dedupe_s=3600, clock=FixedClock())
    try:
        note_id = await notifier.notify(failed_dataset())
        await notifier.job_dead(Job(id=1, kind="notify", payload={"notification_id": note_id, "sender": "gone"},
                                    lock_key=None, queueing_lock=None, attempts=1, run_at=0.0, created_at=0.0),
                                "sender 'gone' is no longer configured")  # fmt: skip
    finally:
        await engine.dispose()
    assert [n["kind"] for n in await rows(database_url, notifications)] == ["dataset_failed"]


async def test_each_record_in_conflict_is_told_once_per_window_in_one_message_per_batch(database_url: str) -> None:
    """Each conflicting record is told once per window; the new ones of one batch come in one message."""
    from service.tracking import tell_conflicts

    clock = FixedClock()
    engine = create_engine(make_settings(database_url))
    notifier = Notifier(engine, ["log"], dedupe_s=3600, clock=clock)

    async def conflicts(*ids: str) -> None:
        clock.advance(1)
        async with engine.begin() as conn:
            await tell_conflicts(notifier, conn, "co-1", "commerce-orders", list(ids))

    try:
        await conflicts("a", "b")
        await conflicts("b", "c")
        await conflicts("a")
        await conflicts("a", "b", "c")
        clock.advance(3600)
        await conflicts("a")
    finally:
        await engine.dispose()
    told = sorted(await rows(database_url, notifications), key=lambda n: n["occurred_at"])
    assert [n["details"]["recordIds"] for n in told] == [["a", "b"], ["c"], ["a"]]
    assert {n["kind"] for n in told} == {"update_conflict"} and told[1]["details"]["count"] == 1


async def test_long_subjects_that_differ_only_at_the_end_are_different_problems(database_url: str) -> None:
    """Dedupe keys longer than the column keep a digest of the whole: two 250-character ids are two problems."""
    engine = create_engine(make_settings(database_url))
    notifier = Notifier(engine, ["log"], dedupe_s=3600, clock=FixedClock())
    try:
        first = await notifier.notify(failed_dataset(company="c" * 249 + "1"))
        second = await notifier.notify(failed_dataset(company="c" * 249 + "2"))
        again = await notifier.notify(failed_dataset(company="c" * 249 + "2"))
    finally:
        await engine.dispose()
    assert first and second and again is None
