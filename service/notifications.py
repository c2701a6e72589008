"""Telling staff, once, when a person must act.

A notification is stored, deduplicated per (kind, company, subject) within RELAY_NOTIFY_DEDUPE_SECONDS,
and delivered by one queue job per configured sender: a Slack outage delays Slack, never loses it, and
never re-sends the e-mail that already went out.

Delivery outlives the queue's general retry limit (RELAY_MAX_ATTEMPTS, a few minutes of backoff): notify
jobs have their own retry policy (`service.policies`: backoff to 15 minutes for 5 days, as Codat retries
its own webhooks). Only after 5 days is one dead, and then the other senders are told what was lost.
"""

from __future__ import annotations

import enum
import hashlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import keys, metrics, queue
from service.clock import iso
from service.db import notification_dedupe, notifications, writer
from service.errors import GiveUp

if TYPE_CHECKING:
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
    RATE_LIMIT_REACHED = "rate_limit_reached"


# The subject of problems with a company's accounting connection (deleted, needs re-authorising): one
# per company, whoever notices it first (the push that got 404, the webhook, the dataset's AuthError).
CONNECTION_SUBJECT = "connection"
ACTION_RECONNECT = "Ask the merchant to reconnect their accounting software in Codat Link"

CRITICAL = frozenset({
    Kind.CONNECTION_DELETED, Kind.AUTH_REQUIRED, Kind.REPUSH_EXHAUSTED, Kind.ALERT_DEAD, Kind.RATE_LIMIT_REACHED,
})  # fmt: skip


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


def rate_limit_reached(limit: int | None, reset_at: float) -> Notification:
    """Codat's daily quota is spent: every Codat call waits for its reset. One problem per quota window."""
    quota = f"of {limit:,} requests " if limit is not None else ""
    return Notification(
        kind=Kind.RATE_LIMIT_REACHED,
        summary=f"Codat's daily quota {quota}is spent: no data reaches Codat until it resets at {iso(reset_at)}",
        subject=f"quota:{iso(reset_at)}",
        details={"dailyQuota": limit, "resetsAt": iso(reset_at),
                 "action": "Nothing is lost: pushes resume by themselves at the reset. If this repeats, ask "
                           "Codat for a higher quota or push less often (RELAY_PUSH_INTERVAL_SECONDS)"},
    )  # fmt: skip


def payload(row: sa.RowMapping) -> dict[str, Any]:
    """The generic webhook's JSON (CONTRACT.md); Slack and e-mail render the same fields."""

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
        if job.kind != queue.ALERT_JOB_KIND:
            return
        alert_id = str(job.payload.get("alert_id"))
        await self.notify(Notification(
            Kind.ALERT_DEAD, f"Alert {alert_id} could not be processed after {job.attempts} attempts",
            company_id=keys.company_of(job.lock_key), subject=alert_id,
            details={"alertId": alert_id, "error": error},
        ))

    async def _notification_lost(self, job: queue.Job, error: str) -> None:
        """One sender never took a notification: the other senders hear what it missed.

        Deduplicated per (company, sender) within the window, so a target dead for days costs one
        message per merchant and window, not one per lost notification; the log has every one.
        """
        note_id, sender = str(job.payload.get("notification_id")), str(job.payload.get("sender"))
        async with writer(self._engine).begin() as conn:
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


class NotifyJob:
    """The `notify` job: deliver one stored notification through one sender (retried for 5 days: `service.policies`)."""

    def __init__(self, engine: AsyncEngine, senders: Mapping[str, Sender]) -> None:
        self._engine, self._senders = engine, senders

    async def __call__(self, job: queue.Job, attempt: int) -> None:
        sender = self._senders.get(str(job.payload.get("sender")))
        if sender is None:
            raise GiveUp(f"sender {job.payload.get('sender')!r} is no longer configured")
        query = sa.select(notifications).where(notifications.c.id == job.payload.get("notification_id"))
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            raise GiveUp("notification row is gone")
        await sender.send(payload(row))  # a failure is retried later, for days: never lost


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
