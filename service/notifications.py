"""Telling staff, once, when a person must act.

A notification is stored, deduplicated per (kind, company, subject) within RELAY_NOTIFY_DEDUPE_SECONDS,
and delivered by one queue job per configured sender: a Slack outage delays Slack, never loses it, and
never re-sends the e-mail that already went out.

Delivery outlives the queue's general retry limit (RELAY_MAX_ATTEMPTS, a few minutes of backoff): a
sender keeps being tried with backoff capped at 15 minutes for 5 days, as Codat retries its own
webhooks. The worker applies one retry policy to every kind (service/retry.py), so the notify job keeps
its own count: it asks for its own delay with `RetryLater` while the worker still allows attempts, and
on the last one hands over to a successor job carrying how long it has been trying. Only after 5
days is it dead, and then the other senders are told what was lost.
"""

from __future__ import annotations

import enum
import hashlib
import math
import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import metrics, queue
from service.db import jobs, notification_dedupe, notifications, writer
from service.errors import GiveUp, RetryLater
from service.retry import Rng

if TYPE_CHECKING:
    from service.clock import Clock
    from service.senders import Sender

NOTIFY_JOB_KIND = "notify"
MAX_KEY_CHARS = 255  # notification_dedupe.key
CLAIM_CHUNK = 500  # dedupe keys per upsert: far under both backends' bound-parameter limits
log = structlog.get_logger("service.notifications")


class Kind(enum.StrEnum):
    DATASET_FAILED = "dataset_failed"
    REPUSH_EXHAUSTED = "repush_exhausted"
    CONNECTION_DELETED = "connection_deleted"
    SYNC_FAILED = "sync_failed"
    UPDATE_CONFLICT = "update_conflict"
    AUTH_REQUIRED = "auth_required"
    ALERT_DEAD = "alert_dead"


# The subject of problems with a company's accounting connection (deleted, needs re-authorising): one
# per company, whoever notices it first (the push that got 404, the webhook, the dataset's AuthError).
CONNECTION_SUBJECT = "connection"
ACTION_RECONNECT = "Ask the merchant to reconnect their accounting software in Codat Link"

CRITICAL = frozenset({Kind.CONNECTION_DELETED, Kind.AUTH_REQUIRED, Kind.REPUSH_EXHAUSTED, Kind.ALERT_DEAD})


@dataclass(frozen=True)
class Notification:
    kind: Kind
    summary: str
    company_id: str | None = None
    data_type: str | None = None
    dataset_id: str | None = None
    subject: str | None = None  # what makes two notifications "the same problem"; defaults to the dataset
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def severity(self) -> str:
        return "critical" if self.kind in CRITICAL else "warning"

    @property
    def dedupe_key(self) -> str:
        return dedupe_key(self.kind, self.company_id, self.subject or self.dataset_id or self.data_type or "")


def dedupe_key(kind: Kind, company_id: str | None, subject: str) -> str:
    key = f"{kind.value}|{company_id or ''}|{subject}"
    if len(key) <= MAX_KEY_CHARS:
        return key
    # Two long ids sharing a prefix must not become one problem: keep a prefix, add a digest of the rest.
    digest = hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
    return f"{key[: MAX_KEY_CHARS - len(digest) - 1]}#{digest}"


async def forget(conn: AsyncConnection, kind: Kind, company_id: str, subject: str) -> None:
    """The problem was resolved: the next occurrence is a new problem, told at once (not after the window)."""
    key = dedupe_key(kind, company_id, subject)
    await conn.execute(notification_dedupe.delete().where(notification_dedupe.c.key == key))


def payload(row: sa.RowMapping) -> dict[str, Any]:
    """The generic webhook's JSON (CONTRACT.md); Slack and e-mail render the same fields."""
    from service.admin import iso  # late: admin imports the app's routing

    return {
        "kind": row["kind"],
        "severity": row["severity"],
        "companyId": row["company_id"],
        "dataType": row["data_type"],
        "datasetId": row["dataset_id"],
        "summary": row["summary"],
        "details": row["details"],
        "occurredAt": iso(row["occurred_at"]),
    }


class Notifier:
    """Stores notifications and queues their delivery; `senders` are the names configured."""

    def __init__(self, engine: AsyncEngine, senders: list[str], dedupe_s: float, clock: Any) -> None:
        self._engine = engine
        self._senders = senders
        self._dedupe_s = dedupe_s
        self._clock = clock

    async def notify(
        self, note: Notification, conn: AsyncConnection | None = None, *, senders: Sequence[str] | None = None
    ) -> str | None:
        """Record and queue `note` (to `senders`, default all); None when told within the window."""
        if conn is None:
            async with writer(self._engine).begin() as own:
                return await self.notify(note, own, senders=senders)
        now = self._clock.now()
        if not await _claim_windows(conn, [note.dedupe_key], now, self._dedupe_s):
            self._suppressed(note.kind, note.company_id)
            return None
        return await self._store(conn, note, now, senders)

    async def notify_new(
        self, conn: AsyncConnection, kind: Kind, company_id: str | None, subjects: Sequence[str],
        build: Callable[[list[str]], Notification],
    ) -> str | None:  # fmt: skip
        """One notification, `build(new)`, about those `subjects` not told within the window.

        Each subject is its own problem (its own window), but a batch of them is one message: a sync
        that puts forty changed records in conflict tells staff once, naming the forty, and a conflict on
        a forty-first record an hour later is told, where one window per data type would have hidden it.
        """
        now = self._clock.now()
        keys = {dedupe_key(kind, company_id, subject): subject for subject in subjects}
        fresh = await _claim_windows(conn, list(keys), now, self._dedupe_s)
        new = [subject for key, subject in keys.items() if key in fresh]
        if not new:
            self._suppressed(kind, company_id)
            return None
        return await self._store(conn, build(new), now, None)

    def _suppressed(self, kind: Kind, company_id: str | None) -> None:
        log.info("notification_suppressed", kind=kind.value, company_id=company_id)
        metrics.NOTIFICATIONS.labels(kind=kind.value, outcome="suppressed").inc()

    async def _store(
        self, conn: AsyncConnection, note: Notification, now: float, senders: Sequence[str] | None
    ) -> str:
        metrics.NOTIFICATIONS.labels(kind=note.kind.value, outcome="stored").inc()
        note_id = uuid.uuid4().hex
        await conn.execute(
            sa.insert(notifications).values(
                id=note_id, kind=note.kind.value, severity=note.severity, company_id=note.company_id,
                data_type=note.data_type, dataset_id=note.dataset_id, dedupe_key=note.dedupe_key,
                summary=note.summary, details=note.details, occurred_at=now,
            )
        )
        for sender in self._senders if senders is None else [s for s in self._senders if s in senders]:
            await queue.enqueue(conn, NOTIFY_JOB_KIND, {"notification_id": note_id, "sender": sender}, now=now)
        return note_id

    async def job_dead(self, job: queue.Job, error: str) -> None:
        """The worker gave up on a job: a dead alert or a lost notification is a staff matter."""
        log.error("job_dead", job_id=job.id, kind=job.kind, lock_key=job.lock_key, attempts=job.attempts, error=error)
        if job.kind == NOTIFY_JOB_KIND:
            await self._notification_lost(job, error)
            return
        if job.kind != "alert":
            return
        alert_id = str(job.payload.get("alert_id"))
        await self.notify(Notification(
            Kind.ALERT_DEAD, f"Alert {alert_id} could not be processed after {job.attempts} attempts",
            company_id=(job.lock_key or "").removeprefix("company:") or None, subject=alert_id,
            details={"alertId": alert_id, "error": error},
        ))

    async def _notification_lost(self, job: queue.Job, error: str) -> None:
        """One sender never took a notification: the other senders hear what it missed.

        Deduplicated per (company, sender) within the window, so a target dead for days costs one
        message per merchant and window, not one per lost notification; the log has every one.
        """
        note_id, sender = str(job.payload.get("notification_id")), str(job.payload.get("sender"))
        async with writer(self._engine).begin() as conn:
            if await _has_successor(conn, job):
                return  # the job died after handing over (a lost lease): its successor carries on
            row = (await conn.execute(sa.select(notifications).where(notifications.c.id == note_id))).mappings().first()
            others = [s for s in self._senders if s != sender]
            if row is None or sender not in self._senders or not others or row["details"].get("lostNotificationId"):
                # Gone, a sender no longer configured, nobody else to tell, or itself a report of a loss.
                metrics.NOTIFICATIONS.labels(kind=str(row["kind"]) if row else "unknown", outcome="lost").inc()
                return
            metrics.NOTIFICATIONS.labels(kind=row["kind"], outcome="lost").inc()
            await self.notify(Notification(
                Kind.ALERT_DEAD, f"A {row['kind']} notification never reached {sender}: {row['summary']}",
                company_id=row["company_id"], data_type=row["data_type"], dataset_id=row["dataset_id"],
                subject=f"undelivered:{sender}",
                details={"lostNotificationId": note_id, "sender": sender, "lostKind": row["kind"],
                         "lostSummary": row["summary"], "error": error,
                         "action": f"Check the {sender} target; the notification is kept in the notifications table"},
            ), conn, senders=others)  # fmt: skip


async def _has_successor(conn: AsyncConnection, job: queue.Job) -> bool:
    waiting = await conn.scalar(
        sa.select(jobs.c.id).where(
            jobs.c.queueing_lock == delivery_lock(job.payload), jobs.c.id > job.id,
            jobs.c.status.in_(["waiting", "running", "done"]),
        ).limit(1)
    )  # fmt: skip
    return waiting is not None


def delivery_lock(job_payload: Mapping[str, Any]) -> str:
    """The queueing lock of a notification's successor jobs for one sender: at most one waits."""
    return f"notify:{job_payload.get('notification_id')}:{job_payload.get('sender')}"


@dataclass(frozen=True)
class DeliveryPolicy:
    """How long one sender is tried: backoff from `base_s` doubling to `cap_s`, for `give_up_after_s`.

    The defaults follow Codat's own webhook retries (hours apart, for days; an endpoint failing for 5
    days is disabled): a notification survives any outage someone can be expected to fix.
    """

    base_s: float = 5.0
    cap_s: float = 900.0
    give_up_after_s: float = 5 * 86_400.0

    def delay(self, tries: int, rng: Rng) -> float:
        """The wait after the `tries`-th failure (1-based): half fixed, half jitter, so never near zero."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(tries - 1, 62))
        return ceiling / 2 + ceiling / 2 * rng.random()


class NotifyJob:
    """The `notify` job: deliver one stored notification through one sender, for as long as the policy says."""

    def __init__(
        self, engine: AsyncEngine, senders: Mapping[str, Sender], clock: Clock, *, max_attempts: int,
        policy: DeliveryPolicy | None = None, rng: Rng | None = None,
    ) -> None:  # fmt: skip
        self._engine, self._senders, self._clock = engine, senders, clock
        self._max_attempts = max_attempts  # the worker's limit (RELAY_MAX_ATTEMPTS)
        self._policy = policy or DeliveryPolicy()
        self._rng = rng or random.Random()

    async def __call__(self, job: queue.Job, attempt: int) -> None:
        sender = self._senders.get(str(job.payload.get("sender")))
        if sender is None:
            raise GiveUp(f"sender {job.payload.get('sender')!r} is no longer configured")
        query = sa.select(notifications).where(notifications.c.id == job.payload.get("notification_id"))
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            raise GiveUp("notification row is gone")
        try:
            await sender.send(payload(row))
        except Exception as exc:  # any failure of the target: try again later, never lose it
            await self._failed(job, attempt, exc)

    async def _failed(self, job: queue.Job, attempt: int, exc: Exception) -> None:
        now = self._clock.now()
        since = float(job.payload.get("since", job.created_at))
        tries = int(job.payload.get("tries", 0)) + attempt
        error = queue.describe_error(exc)
        if now - since >= self._policy.give_up_after_s:
            raise GiveUp(f"not delivered in {round((now - since) / 3600)} h ({tries} tries): {error}") from exc
        delay = self._policy.delay(tries, self._rng)
        if attempt < self._max_attempts:
            raise RetryLater(error, after_s=math.ceil(delay)) from exc
        # The worker's attempts end with this one: a successor job carries on from here. If this job
        # is run again (its completion lost with a crash), its lease-lost attempt ends it unrun.
        successor = {**job.payload, "since": since, "tries": tries}
        await queue.enqueue(self._engine, NOTIFY_JOB_KIND, successor, now=now, run_at=now + delay,
                            queueing_lock=delivery_lock(job.payload))  # fmt: skip
        log.warning("notification_retry_later", notification_id=job.payload.get("notification_id"),
                    sender=job.payload.get("sender"), tries=tries, retry_in_s=round(delay), error=error)  # fmt: skip


async def _claim_windows(conn: AsyncConnection, keys: Sequence[str], now: float, window_s: float) -> set[str]:
    """Atomically: the keys not told within the window (each starts a new window); the rest are left be."""
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    fresh: set[str] = set()
    for start in range(0, len(keys), CLAIM_CHUNK):
        rows = [{"key": key, "last_sent_at": now} for key in keys[start : start + CLAIM_CHUNK]]
        upsert = insert(notification_dedupe).values(rows).on_conflict_do_update(
            index_elements=["key"],
            set_={"last_sent_at": now},
            where=notification_dedupe.c.last_sent_at <= now - window_s,
        )
        fresh.update((await conn.execute(upsert.returning(notification_dedupe.c.key))).scalars())
    return fresh
