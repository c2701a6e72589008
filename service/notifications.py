"""Telling staff, once, when a person must act.

A notification is stored, deduplicated per (kind, company, subject) within RELAY_NOTIFY_DEDUPE_SECONDS,
and delivered by one queue job per configured sender: a Slack outage delays Slack, never loses it, and
never re-sends the e-mail that already went out.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import metrics, queue
from service.db import notification_dedupe, notifications, writer

NOTIFY_JOB_KIND = "notify"
log = structlog.get_logger("service.notifications")


class Kind(enum.StrEnum):
    DATASET_FAILED = "dataset_failed"
    REPUSH_EXHAUSTED = "repush_exhausted"
    CONNECTION_DELETED = "connection_deleted"
    SYNC_FAILED = "sync_failed"
    UPDATE_CONFLICT = "update_conflict"
    AUTH_REQUIRED = "auth_required"
    ALERT_DEAD = "alert_dead"


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
        subject = self.subject or self.dataset_id or self.data_type or ""
        return f"{self.kind.value}|{self.company_id or ''}|{subject}"[:255]


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

    async def notify(self, note: Notification, conn: AsyncConnection | None = None) -> str | None:
        """Record and queue `note`; None when the same problem was told within the window."""
        if conn is None:
            async with writer(self._engine).begin() as own:
                return await self.notify(note, own)
        now = self._clock.now()
        if not await _claim_window(conn, note.dedupe_key, now, self._dedupe_s):
            log.info("notification_suppressed", kind=note.kind.value, company_id=note.company_id)
            metrics.NOTIFICATIONS.labels(kind=note.kind.value, outcome="suppressed").inc()
            return None
        metrics.NOTIFICATIONS.labels(kind=note.kind.value, outcome="stored").inc()
        note_id = uuid.uuid4().hex
        await conn.execute(
            sa.insert(notifications).values(
                id=note_id, kind=note.kind.value, severity=note.severity, company_id=note.company_id,
                data_type=note.data_type, dataset_id=note.dataset_id, dedupe_key=note.dedupe_key,
                summary=note.summary, details=note.details, occurred_at=now,
            )
        )
        for sender in self._senders:
            await queue.enqueue(conn, NOTIFY_JOB_KIND, {"notification_id": note_id, "sender": sender}, now=now)
        return note_id

    async def job_dead(self, job: queue.Job, error: str) -> None:
        """The worker gave up on a job. Dead alerts are a staff matter; a dead notification only logs."""
        log.error("job_dead", job_id=job.id, kind=job.kind, lock_key=job.lock_key, attempts=job.attempts, error=error)
        if job.kind != "alert":
            return
        alert_id = str(job.payload.get("alert_id"))
        await self.notify(Notification(
            Kind.ALERT_DEAD, f"Alert {alert_id} could not be processed after {job.attempts} attempts",
            company_id=(job.lock_key or "").removeprefix("company:") or None, subject=alert_id,
            details={"alertId": alert_id, "error": error},
        ))


async def _claim_window(conn: AsyncConnection, key: str, now: float, window_s: float) -> bool:
    """Atomically: True if nothing with this key was told within the window (and start a new window)."""
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    upsert = insert(notification_dedupe).values(key=key, last_sent_at=now).on_conflict_do_update(
        index_elements=["key"],
        set_={"last_sent_at": now},
        where=notification_dedupe.c.last_sent_at <= now - window_s,
    )
    return (await conn.execute(upsert.returning(notification_dedupe.c.key))).first() is not None
