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

from service import keys, metrics, problems, queue, tracing
from service.clock import iso
from service.db import notification_dedupe, notifications, writer
from service.errors import GiveUp

if TYPE_CHECKING:
    from service.senders import Sender

NOTIFY_JOB_KIND = "notify"
MAX_KEY_CHARS = 255  # notification_dedupe.key
DIGEST_CHARS = 32  # the hex digest ending a key cut to MAX_KEY_CHARS
CLAIM_CHUNK = 500  # dedupe keys per upsert: far under both backends' bound-parameter limits
log = structlog.get_logger("service.notifications")


class Kind(enum.StrEnum):
    DATASET_FAILED = "dataset_failed"
    REPUSH_EXHAUSTED = "repush_exhausted"
    CONNECTION_DELETED = "connection_deleted"
    SYNC_FAILED = "sync_failed"
    UPDATE_CONFLICT = "update_conflict"
    LATE_RECORDS = "late_records"  # Codat holds records dated before the last sync's end that no sync took
    AUTH_REQUIRED = "auth_required"
    ALERT_DEAD = "alert_dead"
    SYNC_AT_RISK = "sync_at_risk"
    RATE_LIMIT_REACHED = "rate_limit_reached"


# The subject of problems with a company's accounting connection (deleted, needs re-authorising): one
# per company, whoever notices it first (the push that got 404, the webhook, the dataset's AuthError).
CONNECTION_SUBJECT = "connection"
UNDELIVERED = "undelivered:"  # the subject of a target's lost notifications: `undelivered:{sender}`
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
    digest = hashlib.blake2b(key.encode(), digest_size=DIGEST_CHARS // 2).hexdigest()
    return f"{key[: MAX_KEY_CHARS - len(digest) - 1]}#{digest}"


def company_dedupe_keys(company_id: str) -> sa.ColumnElement[bool]:
    """The dedupe rows of one company's problems (a purge deletes them), whatever their subject.

    A key too long is cut and digested (`dedupe_key`), so a prefix that would not survive the cut is cut
    the same way: another company sharing those first 220 characters loses its windows too, which only
    means its next problem is told at once.
    """
    kept = MAX_KEY_CHARS - DIGEST_CHARS - 1
    prefixes = [f"{kind.value}|{company_id}|"[:kept] for kind in Kind]
    return sa.or_(*(notification_dedupe.c.key.startswith(prefix, autoescape=True) for prefix in prefixes))


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
        "state": row["event"],  # "opened", or "resolved": the problem is over (service/problems.py)
        "problemId": row["problem_id"],
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
        seen = await self._observe(conn, note, note.subject or note.dataset_id or note.data_type or "", now)
        reopened = seen.seen is problems.Seen.REOPENED  # back within the window: the same problem, not told again
        if reopened or not await _claim_windows(conn, [note.dedupe_key], now, self._dedupe_s):
            self._suppressed(note.kind, note.company_id)
            return None
        return await self._store(conn, note, now, senders, problem_id=seen.id)

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
        keys: dict[str, str] = {}
        problem_of: dict[str, str] = {}
        for subject in subjects:
            key = dedupe_key(kind, company_id, subject)
            seen = await self._observe(conn, build([subject]), subject, now)
            problem_of[subject] = seen.id
            if seen.seen is not problems.Seen.REOPENED:  # back within the window: the same problem, untold
                keys[key] = subject
        fresh = await _claim_windows(conn, list(keys), now, self._dedupe_s)
        new = [subject for key, subject in keys.items() if key in fresh]
        if not new:
            self._suppressed(kind, company_id)
            return None
        return await self._store(conn, build(new), now, None, problem_id=problem_of[new[0]])

    async def _observe(self, conn: AsyncConnection, note: Notification, subject: str, now: float) -> problems.Observed:
        return await problems.observe(
            conn, kind=note.kind.value, company_id=note.company_id, subject=subject,
            key=dedupe_key(note.kind, note.company_id, subject), data_type=note.data_type, summary=note.summary,
            now=now, window_s=self._dedupe_s,
        )  # fmt: skip

    async def resolve(
        self, conn: AsyncConnection, reason: str, *, kinds: Sequence[Kind], company_id: str | None = None,
        subjects: Sequence[str] | None = None, data_type: str | None = None, ids: Sequence[str] | None = None,
    ) -> int:  # fmt: skip
        """The condition cleared: close the matching open problems and tell staff "resolved", on every target."""
        now = self._clock.now()
        closed = await problems.resolve(
            conn, now, kinds=[k.value for k in kinds], company_id=company_id, subjects=subjects, data_type=data_type,
            ids=ids,
        )  # fmt: skip
        for row in closed:
            note = Notification(
                Kind(row["kind"]), f"Resolved: {row['summary']}", company_id=row["company_id"],
                data_type=row["data_type"], subject=row["subject"],
                details={"reason": reason, "problemId": row["id"], "openedAt": iso(row["opened_at"]),
                         "occurrences": row["count"]},
            )  # fmt: skip
            await self._store(conn, note, now, None, problem_id=row["id"], event="resolved")
            log.info("problem_resolved", kind=row["kind"], company_id=row["company_id"], problem_id=row["id"])
        return len(closed)

    def _suppressed(self, kind: Kind, company_id: str | None) -> None:
        log.info("notification_suppressed", kind=kind.value, company_id=company_id)
        metrics.NOTIFICATIONS.labels(kind=kind.value, outcome="suppressed").inc()

    async def _store(
        self, conn: AsyncConnection, note: Notification, now: float, senders: Sequence[str] | None, *,
        problem_id: str | None = None, event: str = "opened",
    ) -> str:  # fmt: skip
        metrics.NOTIFICATIONS.labels(kind=note.kind.value, outcome="stored" if event == "opened" else event).inc()
        note_id = uuid.uuid4().hex
        await conn.execute(
            sa.insert(notifications).values(
                id=note_id, kind=note.kind.value, severity=note.severity if event == "opened" else "info",
                company_id=note.company_id, data_type=note.data_type, dataset_id=note.dataset_id,
                dedupe_key=note.dedupe_key, summary=note.summary, details=note.details, occurred_at=now,
                problem_id=problem_id, event=event,
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
                subject=f"{UNDELIVERED}{sender}",
                details={"lostNotificationId": note_id, "sender": sender, "lostKind": row["kind"],
                         "lostSummary": row["summary"], "error": error,
                         "action": f"Check the {sender} target; the notification is kept in the notifications table"},
            ), conn, senders=others)  # fmt: skip


class NotifyJob:
    """The `notify` job: deliver one stored notification through one sender (retried for 5 days: `service.policies`)."""

    def __init__(self, engine: AsyncEngine, senders: Mapping[str, Sender], notifier: Notifier | None = None) -> None:
        self._engine, self._senders, self._notifier = engine, senders, notifier

    async def __call__(self, job: queue.Job, attempt: int) -> None:
        sender = self._senders.get(str(job.payload.get("sender")))
        if sender is None:
            raise GiveUp(f"sender {job.payload.get('sender')!r} is no longer configured")
        query = sa.select(notifications).where(notifications.c.id == job.payload.get("notification_id"))
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            raise GiveUp("notification row is gone")
        name = str(job.payload.get("sender"))
        with tracing.span(f"notify {name}", kind=tracing.CLIENT, attributes={"relay.notification.kind": row["kind"]}):
            await sender.send(payload(row))  # a failure is retried later, for days: never lost
        try:
            await self._delivered(str(job.payload.get("sender")), row["company_id"])
        except Exception:  # bookkeeping only: the message went, so the job must not run (and send) again
            log.warning("problem_resolve_failed", sender=job.payload.get("sender"), exc_info=True)

    async def _delivered(self, sender: str, company_id: str | None) -> None:
        """A target that lost notifications delivers again: that `alert_dead` problem is over."""
        subject = f"{UNDELIVERED}{sender}"
        async with self._engine.connect() as conn:
            if self._notifier is None or not await problems.any_open(conn, Kind.ALERT_DEAD.value, [subject]):
                return
        async with writer(self._engine).begin() as conn:
            await self._notifier.resolve(conn, f"{sender} delivers notifications again", kinds=[Kind.ALERT_DEAD],
                                         company_id=company_id, subjects=[subject])  # fmt: skip


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
