"""The push job: sends a company's pending records of one data type to Codat, at most 5,000 at a time.

One push job per (company, data type) runs at a time across every process: the job's lock key is
`push:{company}:{dataType}` (Codat rule 3), and its queueing lock is the same, so a burst of intakes
collapses into one waiting job. Records are claimed in keyset-ordered chunks straight from the
database and the payload is spliced from their stored canonical bytes: nothing but one chunk is ever
held in memory, and nothing is decoded and re-encoded.

A push is written down (with its payload and its Idempotency-Key, first its id) before it is sent: if
the process dies between Codat's answer and our record of it, the next run sends the same bytes under
the same key, and Codat answers from its idempotency cache instead of creating a second dataset. Codat
caches every answer but a 429 (docs/using-the-api/write-data/idempotency.md), so an attempt answered
5xx is over: a new key is recorded and the next attempt sends it (a record Codat already holds, same
`id` and `sourceModifiedDate`, is discarded, so a new key never duplicates data). No answer, a 409 (in
flight) or a 429 keep the key. An open push is resent only while the books hold no other version of its
records (else it is dropped unsent).

Every send is fenced: it goes only while this attempt of the job still holds a live lease, so a worker
stalled past its lease stops before its next call instead of pushing beside the worker that took over.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from service import keys, metrics, queue, record_states
from service.codat.budget import routine
from service.codat.client import CodatAuthError, CodatNotFound, CodatRejected, CodatUnavailable
from service.db import datasets, pushes, records, writer
from service.late_records import HISTORIC_KIND
from service.notifications import ACTION_RECONNECT, CONNECTION_SUBJECT, Kind, Notification
from service.outbox import CODAT_NOT_FOUND, IS_PENDING, PUSH_KIND, is_paused, lock_outbox, pause_unless_paused
from service.queue import Job, describe_error
from service.record_states import Event
from service.tracking import (
    POLL_KIND,
    SWEEP_KIND,
    SYNC_KIND,
    TrackingDeps,
)
from service.worker import JobFunction, Periodic

SEND, SKIP, STOP = "send", "skip", "stop"  # what the fence before a Codat call decides
API_KEY_SUBJECT = "api_key"  # an auth_required about codat-relay's own key, not the merchant's connection
log = structlog.get_logger("service.pusher")


@dataclass(frozen=True)
class Push:
    id: str
    company_id: str
    data_type: str
    payload: bytes
    record_count: int
    last_id: str = ""
    idempotency_key: str | None = None  # None: the push's id

    @property
    def key(self) -> str:
        return self.idempotency_key or self.id


class Pusher:
    """The push job; dataset polling and sync checks are the `Tracker`'s."""

    def __init__(self, deps: TrackingDeps) -> None:
        self._deps = deps
        self.tracker = deps.tracker

    @property
    def _engine(self) -> Any:
        return self._deps.engine

    def jobs(self) -> dict[str, JobFunction]:
        """The push pipeline's job kinds, for the worker's job table."""
        # Dataset polls are routine: the webhooks answer the same question, so below the daily quota's
        # reserve they give way to pushes (service/budget.py).
        return {PUSH_KIND: self.run, POLL_KIND: _routine(self.tracker.poll_dataset),
                SYNC_KIND: self.tracker.check_sync_job, SWEEP_KIND: self.tracker.sweep,
                HISTORIC_KIND: self.tracker.historic_sync_job}  # fmt: skip

    def periodic(self) -> list[Periodic]:
        return [Periodic(SWEEP_KIND, SWEEP_KIND, self._deps.settings.push_interval_seconds)]

    async def run(self, job: Job, attempt: int) -> None:
        """`push` job: resend an unrecorded push, then push every pending record in chunks."""
        company_id, data_type = str(job.payload["company_id"]), str(job.payload["data_type"])
        started, sent, count = time.perf_counter(), 0, 0
        if await self._paused(company_id):
            log.info("push_skipped", company_id=company_id, data_type=data_type, reason="paused")
            return
        unrecorded = await self._open_pushes(company_id, data_type)
        if not unrecorded and not await self._has_pending(company_id, data_type):
            return
        await self.tracker.guard_synced(company_id)
        for open_push in unrecorded:
            if not await self._send(job, open_push, resend=True):
                return
        cursor: str | None = ""
        while cursor is not None and not await self._paused(company_id):
            push, cursor = await self._claim(company_id, data_type, cursor, reason="push")
            if push is None:
                continue
            if not await self._send(job, push):
                break
            sent, count = sent + 1, count + push.record_count
        log.info("push_finished", company_id=company_id, data_type=data_type, pushes=sent, records=count,
                 duration_ms=round((time.perf_counter() - started) * 1000, 1))  # fmt: skip

    async def _paused(self, company_id: str) -> bool:
        async with self._engine.connect() as conn:
            return await is_paused(conn, company_id)

    async def _has_pending(self, company_id: str, data_type: str) -> bool:
        query = sa.select(records.c.record_id).where(
            records.c.company_id == company_id, records.c.data_type == data_type, IS_PENDING,
            records.c.inflight.is_(False),
        ).limit(1)  # fmt: skip
        async with self._engine.connect() as conn:
            return (await conn.scalar(query)) is not None

    async def _open_pushes(self, company_id: str, data_type: str) -> list[Push]:
        query = (
            sa.select(pushes.c.id, pushes.c.payload, pushes.c.record_count, pushes.c.idempotency_key)
            .where(pushes.c.company_id == company_id, pushes.c.data_type == data_type,
                   pushes.c.finished_at.is_(None))
            .order_by(pushes.c.started_at)
        )  # fmt: skip
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [Push(r.id, company_id, data_type, r.payload, r.record_count, idempotency_key=r.idempotency_key)
                for r in rows]  # fmt: skip

    async def _claim(
        self, company_id: str, data_type: str, after: str, *, reason: str
    ) -> tuple[Push | None, str | None]:
        """Take the next chunk of pending records (ids after `after`) into a new, written-down push.

        Returns the push (None when nothing in the chunk could be claimed) and where the next claim
        starts (None when no pending record is left).
        """
        push_id, now = str(uuid.uuid4()), self._deps.clock.now()
        async with writer(self._engine).begin() as conn:
            await lock_outbox(conn, company_id, data_type)  # every move of these records waits for this claim
            rows, last = await record_states.claim(
                conn, company_id, data_type, push_id, after, self._deps.settings.max_push_records, now
            )
            if last == after:
                return None, None
            if not rows:
                return None, last
            payload = b"[" + b",".join(row.body for row in rows) + b"]"
            await conn.execute(pushes.insert().values(
                id=push_id, company_id=company_id, data_type=data_type, record_count=len(rows), payload=payload,
                reason=reason, started_at=now, outcome="open", idempotency_key=push_id,
            ))  # fmt: skip
        return Push(push_id, company_id, data_type, payload, len(rows), rows[-1].record_id), last

    async def _may_send(self, job: Job, push: Push, *, resend: bool) -> str:
        """The fence before each Codat call: this attempt still holds its lease; and an open push goes
        again only while the books hold no other version of its records (else it is dropped unsent)."""
        now = self._deps.clock.now()
        async with writer(self._engine).begin() as conn:
            if not await queue.holds_lease(conn, job, now):
                log.warning("push_fenced", company_id=push.company_id, data_type=push.data_type, push_id=push.id,
                            job_id=job.id, attempt=job.attempts)  # fmt: skip
                return STOP
            if resend and await record_states.flight_blocked(conn, push.id):
                await self._close(conn, push, "superseded", "the books now hold another version", Event.ABANDON)
                log.warning("push_superseded", company_id=push.company_id, data_type=push.data_type,
                            push_id=push.id)  # fmt: skip
                return SKIP
        return SEND

    async def _send(self, job: Job, push: Push, *, resend: bool = False) -> bool:
        """Send one push and record what came of it; False when the job should stop pushing."""
        decision = await self._may_send(job, push, resend=resend)
        if decision != SEND:
            return decision == SKIP
        codat = self._deps.codat
        # A 429 or 503 raises `RetryLater` through: the push stays open, and the job's retry (after `after_s`)
        # resends the same bytes under the same key.
        try:
            result = await codat.push_records_json(
                push.company_id, push.data_type, push.payload, idempotency_key=push.key
            )
        except CodatNotFound as exc:
            await self._abandon(push, exc, pause=CODAT_NOT_FOUND)
            return False
        except CodatAuthError as exc:
            await self._abandon(push, exc, pause=None)
            raise  # our API key: the job retries, and dies (telling staff) if nobody fixes it
        except CodatRejected as exc:
            await self._reject(push, exc)
            return True  # these records were refused; the next chunk may well be fine
        except CodatUnavailable as exc:
            if exc.status_code is not None and exc.status_code >= 500:
                await self._new_key(push, exc)  # answered: this key would only replay the 5xx
            raise  # the job retries with backoff; the push stays open
        await self._record(push, result.dataset_id)
        return True

    async def _new_key(self, push: Push, exc: CodatUnavailable) -> None:
        """Record the next attempt's key before it is sent (a crash then resends that key, never none)."""
        key = str(uuid.uuid4())
        async with writer(self._engine).begin() as conn:
            open_push = sa.and_(pushes.c.id == push.id, pushes.c.finished_at.is_(None))
            await conn.execute(pushes.update().where(open_push).values(idempotency_key=key))
        log.warning("push_answered_error", company_id=push.company_id, data_type=push.data_type, push_id=push.id,
                    status=exc.status_code, next_key=key)  # fmt: skip

    async def _record(self, push: Push, dataset_id: str) -> None:
        now = self._deps.clock.now()
        first_poll = self.tracker.poll.first_poll_at(now)
        insert = postgresql.insert if self._engine.dialect.name == "postgresql" else sqlite.insert
        async with writer(self._engine).begin() as conn:
            await conn.execute(
                pushes.update().where(pushes.c.id == push.id)
                .values(dataset_id=dataset_id, finished_at=now, outcome="pushed", payload=None)
            )  # fmt: skip
            await conn.execute(insert(datasets).values(
                id=dataset_id, company_id=push.company_id, data_type=push.data_type, push_id=push.id,
                record_count=push.record_count, status="Initial", terminal=False, requested_at=now, updated_at=now,
                polls=0, next_poll_at=first_poll,
            ).on_conflict_do_nothing(index_elements=["id"]))  # fmt: skip
            if first_poll is not None:
                await queue.enqueue(
                    conn, POLL_KIND, {"dataset_id": dataset_id, "company_id": push.company_id}, now=now,
                    queueing_lock=keys.poll_lock(dataset_id), run_at=first_poll,
                )  # fmt: skip
            # Codat took a push: codat-relay's API key works again for this company.
            await self._deps.notifier.resolve(conn, "Codat accepted a push with codat-relay's API key",
                                              kinds=[Kind.AUTH_REQUIRED], company_id=push.company_id,
                                              subjects=[API_KEY_SUBJECT])  # fmt: skip
        log.info("push_recorded", company_id=push.company_id, data_type=push.data_type, push_id=push.id,
                 dataset_id=dataset_id, records=push.record_count)  # fmt: skip
        metrics.PUSHES.labels(data_type=push.data_type, outcome="pushed").inc()

    async def _close(self, conn: AsyncConnection, push: Push, outcome: str, error: str, event: Event) -> None:
        """End a push without a dataset; its records move by `event` (FAIL or ABANDON)."""
        now = self._deps.clock.now()
        metrics.PUSHES.labels(data_type=push.data_type, outcome=outcome).inc()
        await lock_outbox(conn, push.company_id, push.data_type)
        await conn.execute(
            pushes.update().where(pushes.c.id == push.id)
            .values(finished_at=now, outcome=outcome, error=error, payload=None)
        )  # fmt: skip
        await record_states.end_flight(conn, push.id, event, now)

    async def _abandon(self, push: Push, exc: Exception, *, pause: str | None) -> None:
        """Codat never took the push (no company or connection, or our key refused): records wait again.

        A 404 pauses the company unless it is paused already (an existing reason is kept, see
        `pause_unless_paused`), and only the push that paused it tells staff: once per company, with the
        same subject as the connection-deleted webhook, so a deletion is one notification, not one per
        data type plus one for the webhook.
        """
        now = self._deps.clock.now()
        details = {"pushId": push.id, "records": push.record_count, "error": describe_error(exc)}
        async with writer(self._engine).begin() as conn:
            await self._close(conn, push, "abandoned", describe_error(exc), Event.ABANDON)
            paused = pause is not None and await pause_unless_paused(conn, push.company_id, pause, now)
            note: Notification | None = None
            if isinstance(exc, CodatAuthError):
                # Our API key, not the merchant's connection: one problem per company, whatever the data type.
                note = Notification(
                    Kind.AUTH_REQUIRED, "Codat refused codat-relay's API key for a push", company_id=push.company_id,
                    data_type=push.data_type, subject=API_KEY_SUBJECT,
                    details={**details, "action": "Check RELAY_CODAT_API_KEY and its rights"},
                )  # fmt: skip
            elif paused:
                note = Notification(
                    Kind.CONNECTION_DELETED, "Codat no longer knows this company's connection (a push got 404): "
                    "pushes are paused", company_id=push.company_id, data_type=push.data_type,
                    subject=CONNECTION_SUBJECT, details={**details, "action": ACTION_RECONNECT},
                )  # fmt: skip
            if note is not None:
                await self._deps.notifier.notify(note, conn)
        log.warning("push_abandoned", company_id=push.company_id, data_type=push.data_type, push_id=push.id,
                    error=describe_error(exc), paused=paused)  # fmt: skip

    async def _reject(self, push: Push, exc: CodatRejected) -> None:
        async with writer(self._engine).begin() as conn:
            await self._close(conn, push, "rejected", describe_error(exc), Event.FAIL)
            summary = f"Codat rejected a push of {push.record_count} records"
            await self._tell(conn, push, Kind.DATASET_FAILED, summary)
        log.warning("push_rejected", company_id=push.company_id, data_type=push.data_type, push_id=push.id,
                    error=describe_error(exc))  # fmt: skip

    async def _tell(self, conn: AsyncConnection, push: Push, kind: Kind, summary: str) -> None:
        details = {"pushId": push.id, "records": push.record_count}
        note = Notification(kind, summary, company_id=push.company_id, data_type=push.data_type,
                            subject=push.data_type, details=details)  # fmt: skip
        await self._deps.notifier.notify(note, conn)


def _routine(function: JobFunction) -> JobFunction:
    """The job's Codat calls are routine (`service.codat.budget.routine`)."""

    async def run(job: Job, attempt: int) -> object:
        with routine():
            return await function(job, attempt)

    return run
