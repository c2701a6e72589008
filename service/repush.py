"""The re-push policy: what follows a dataset that ended in an error.

Errors a new push may clear (FetchError, MapError, InternalError, ProcessingError, RateLimitError) send
the dataset's failed records again — their current versions, through the single-flight pusher — up to
RELAY_REPUSH_MAX_ATTEMPTS times with backoff; then staff hear `repush_exhausted`. Errors a re-push
cannot clear are never re-pushed blindly: AuthError/PermissionsError → `auth_required`, the rest →
`dataset_failed` with Codat's message. It runs once per dataset, whoever saw it end (poll or webhook),
because `apply_dataset_status` reports `changed` only to the first.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from service import metrics, problems, record_states
from service.datasets import COMPLETE, Applied
from service.db import datasets, push_records, records
from service.notifications import CONNECTION_SUBJECT, Kind, Notification, Notifier
from service.outbox import State, schedule_push

AUTH_ERRORS = frozenset({"AuthError", "PermissionsError"})
ACTIONS = {
    "AuthError": "Ask the merchant to re-authorise their accounting connection.",
    "PermissionsError": "Ask the merchant to grant the permissions Codat needs, then re-authorise.",
    "ValidationError": "Correct the records Codat rejected (see the message), then resubmit them.",
    "PrerequisiteNotMet": "Complete the company's Sync for Commerce configuration in Codat.",
    "NotSupported": "This data type is not supported for the merchant's platform.",
    "Cancelled": "The dataset was cancelled in Codat; resubmit the records if they are still needed.",
    "NotFound": "Codat no longer knows this dataset: check the company and its connection still exist in "
    "Codat, then re-push (codat-relay companies repush).",
}
log = structlog.get_logger("service.repush")


@dataclass(frozen=True)
class RepushPolicy:
    max_attempts: int = 3
    base_s: float = 30.0
    cap_s: float = 900.0

    def delay(self, attempt: int) -> float:
        """Attempt n (1-based) waits base·2ⁿ⁻¹, capped: a flapping Codat gets time to recover."""
        return float(min(self.cap_s, self.base_s * 2 ** max(0, attempt - 1)))


def _of_push(applied: Applied, push_id: str) -> sa.ColumnElement[bool]:
    """The dataset's records, found through their push (indexed) rather than the dataset id (not)."""
    return sa.and_(records.c.push_id == push_id, records.c.company_id == applied.company_id,
                   records.c.data_type == applied.data_type)  # fmt: skip


async def _push_of(conn: AsyncConnection, dataset_id: str) -> tuple[str | None, str | None]:
    row = (await conn.execute(
        sa.select(datasets.c.push_id, datasets.c.error_message).where(datasets.c.id == dataset_id)
    )).first()  # fmt: skip
    return (row.push_id, row.error_message) if row is not None else (None, None)


async def after_failure(
    conn: AsyncConnection, applied: Applied, notifier: Notifier, policy: RepushPolicy, now: float
) -> str:
    """Decide and act for one failed dataset; returns what was done (for logs and tests)."""
    push_id, error_message = await _push_of(conn, applied.dataset_id)
    base = {"company_id": applied.company_id, "data_type": applied.data_type, "dataset_id": applied.dataset_id}
    if not applied.repush_may_clear or push_id is None:
        kind = Kind.AUTH_REQUIRED if applied.status in AUTH_ERRORS else Kind.DATASET_FAILED
        # Re-authorising is one act of the merchant's, however many datasets it failed: one problem per
        # company. A dataset's own failure (validation, configuration) is a problem of that dataset.
        subject = CONNECTION_SUBJECT if kind is Kind.AUTH_REQUIRED else applied.dataset_id
        await notifier.notify(Notification(
            kind, f"Dataset {applied.dataset_id} ended {applied.status}", **base, subject=subject,
            details={"status": applied.status, "message": error_message, "records": applied.records,
                     "action": ACTIONS.get(applied.status, "Look at the dataset in Codat.")},
        ), conn)  # fmt: skip
        metrics.REPUSHES.labels(status=applied.status, decision=kind.value).inc()
        return kind.value
    done = await conn.scalar(
        sa.select(sa.func.max(records.c.repush_count))
        .where(_of_push(applied, push_id), records.c.state == State.FAILED)
    )
    attempts = int(done or 0)
    if attempts >= policy.max_attempts:
        await notifier.notify(Notification(
            Kind.REPUSH_EXHAUSTED,
            f"Dataset {applied.dataset_id} still ends {applied.status} after {attempts} re-pushes", **base,
            details={"status": applied.status, "message": error_message, "repushes": attempts,
                     "action": "Look at the dataset in Codat; re-push by hand once the cause is fixed."},
        ), conn)  # fmt: skip
        metrics.REPUSHES.labels(status=applied.status, decision="repush_exhausted").inc()
        return "repush_exhausted"
    # Each failed record is decided again: one the books now hold another version of is a conflict,
    # one Codat holds already is accepted; only the rest go again (the same decision as every push).
    requeued = await record_states.requeue_failed(conn, push_id, now)
    await schedule_push(conn, applied.company_id, applied.data_type, now=now, delay_s=policy.delay(attempts + 1))
    log.info("repush_scheduled", **base, attempt=attempts + 1, records=requeued)
    metrics.REPUSHES.labels(status=applied.status, decision="repushed").inc()
    return "repushed"


async def after_complete(conn: AsyncConnection, applied: Applied) -> None:
    """A dataset reached Codat: its records' re-push counts start again."""
    if applied.status != COMPLETE:
        return
    push_id, _ = await _push_of(conn, applied.dataset_id)
    if push_id is not None:
        await record_states.reset_repush_counts(conn, push_id)


# A failed dataset's problem lasts while one of its records is still failed or not yet taken by Codat.
UNSETTLED = (State.FAILED, State.PENDING, State.PUSHED)
FAILURE_KINDS = (Kind.DATASET_FAILED, Kind.REPUSH_EXHAUSTED)
PUSH_OPERATION_SUBJECT = "push_operation:"


async def resolve_failures(conn: AsyncConnection, applied: Applied, notifier: Notifier) -> int:
    """A dataset of this company and data type completed: failures it settled are over (staff hear so).

    A failed dataset's problem (`dataset_failed`, `repush_exhausted`) resolves once every record it held
    has reached Codat since (accepted or synced — re-pushed, or corrected and resubmitted); a rejected push
    (subject: the data type) once any dataset of that data type completes. Push operations belong to
    Codat's write APIs, whose end codat-relay never sees: those stay open until acknowledged.
    """
    if applied.status != COMPLETE:
        return 0
    candidates = await problems.open_rows(
        conn, kinds=[k.value for k in FAILURE_KINDS], company_id=applied.company_id, data_type=applied.data_type
    )
    over = [row["id"] for row in candidates if await _settled(conn, applied, row["subject"])]
    if not over:
        return 0
    return await notifier.resolve(conn, f"dataset {applied.dataset_id} completed", kinds=FAILURE_KINDS, ids=over)


async def _settled(conn: AsyncConnection, applied: Applied, subject: str) -> bool:
    if subject == applied.data_type:
        return True
    if subject.startswith(PUSH_OPERATION_SUBJECT):
        return False
    push_id, _ = await _push_of(conn, subject)
    if push_id is None:
        return False
    unsettled = (
        sa.select(records.c.record_id)
        .join(push_records, sa.and_(push_records.c.push_id == push_id, push_records.c.record_id == records.c.record_id))
        .where(records.c.company_id == applied.company_id, records.c.data_type == applied.data_type,
               records.c.state.in_([s.value for s in UNSETTLED]))
        .limit(1)
    )  # fmt: skip
    return (await conn.execute(unsettled)).first() is None
