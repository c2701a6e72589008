"""Dataset status alerts: ask Codat, apply monotonically, and let the re-push policy act on failures.

Legacy *Data Sync Status Changed To Error* / *Data sync completed* / *Dataset data changed* carry a
dataset id; `read.completed` carries none, so every unfinished dataset of that company and data type
is checked. The alert's own status is never trusted: Codat's answer is what gets applied, and a dataset
already terminal never moves back (a stale error alert after `Complete` does nothing).

Coalescing: a storm repeats itself (Codat sends an alert per status change, per dataset, per retry),
and each alert's question is "what is this dataset's status now?". An answer Codat gave to a question
sent *after* an alert arrived already reflects whatever that alert reports, so the alert asks nothing
again: `datasets.checked_at` holds when the last question was sent, and alerts about one dataset that
waited in the queue together (one company's alerts run one at a time, in order) cost one call.
"""


from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import RowMapping

from service.codat.models import TERMINAL_STATUSES
from service.datasets import apply_dataset_status, load, mark_checked
from service.db import bookkeeper, datasets, reader, writer
from service.hot_reads import read_column
from service.tracking import ask_codat
from service.types import Alert, Context, DataTypeStatus, Outcome

# Built once: building a select (and its cache key) per alert cost more than running it on SQLite.
_NAMED = (
    sa.select(datasets.c.id)
    .where(datasets.c.company_id == sa.bindparam("company_id"), datasets.c.id == sa.bindparam("dataset_id"))
    .order_by(datasets.c.requested_at)
)
_UNFINISHED = (
    sa.select(datasets.c.id)
    .where(datasets.c.company_id == sa.bindparam("company_id"), datasets.c.data_type == sa.bindparam("data_type"),
           datasets.c.terminal.is_(False))
    .order_by(datasets.c.requested_at)
)  # fmt: skip


async def _concerned(ctx: Context, company_id: str, entry: DataTypeStatus) -> list[str]:
    """Our datasets this entry speaks of: the one named, or every unfinished one of its data type."""
    if entry.dataset_id:
        query, params = _NAMED, {"company_id": company_id, "dataset_id": entry.dataset_id}
    elif entry.data_type:
        query, params = _UNFINISHED, {"company_id": company_id, "data_type": entry.data_type}
    else:
        return []
    return await read_column(ctx.store, query, params)


def answered_since(row: RowMapping, arrived_at: float | None) -> bool:
    """Whether Codat was asked about this dataset after the alert arrived (strictly: an alert stamped
    the same instant as the question may have been stored just after it was sent)."""
    checked_at = row["checked_at"]
    return arrived_at is not None and checked_at is not None and checked_at > arrived_at


async def reconcile(
    ctx: Context, company_id: str, dataset_id: str, *, arrived_at: float | None = None
) -> tuple[str | None, bool]:
    """Codat's status of one dataset, applied: (the status now, whether Codat was asked).

    The status is None if the dataset is not ours. Codat is not asked when the dataset is terminal or was
    asked about after `arrived_at` (the alert's arrival): that answer is already applied.
    """
    async with reader(ctx.store).connect() as conn:
        row = await load(conn, dataset_id)
    if row is None or row["terminal"] or answered_since(row, arrived_at):
        return (None if row is None else str(row["status"])), False
    asked_at = ctx.clock.now()  # before the request is sent (and paced): an earlier stamp is never wrong
    found = await ask_codat(ctx.codat, row, asked_at)
    if found is None:
        return str(row["status"]), True  # a 404 just after the push: the poll or the sweep asks again
    if found.status == row["status"] and found.status not in TERMINAL_STATUSES:
        # Still where we last saw it (a stale or repeated alert): no status to write, only the stamp, which
        # is bookkeeping (lost, it costs one more call, never a wrong status).
        async with bookkeeper(ctx.store).begin() as conn:
            await mark_checked(conn, dataset_id, asked_at)
        return found.status, True
    async with writer(ctx.store).begin() as conn:
        row = await load(conn, dataset_id)
        if row is None:
            return None, True
        applied = await apply_dataset_status(conn, row, found.status, found.message, now=asked_at,
                                             completed_at=found.completed_at)  # fmt: skip
        await mark_checked(conn, dataset_id, asked_at)
        if applied.terminal and applied.changed:
            await ctx.tracker.after_terminal(conn, applied, asked_at)
    return applied.status, True


async def on_dataset_status(alert: Alert, ctx: Context) -> Outcome:
    if not alert.company_id:
        ctx.log.info("dataset_alert_without_company")
        return Outcome.IGNORED
    checked = 0
    for entry in alert.data_types:
        for dataset_id in await _concerned(ctx, alert.company_id, entry):
            status, asked = await reconcile(ctx, alert.company_id, dataset_id, arrived_at=alert.received_at)
            checked += 1
            ctx.log.info("dataset_reconciled", dataset_id=dataset_id, alert_status=entry.status, codat_status=status,
                         asked_codat=asked)  # fmt: skip
    # An alert about datasets we never pushed (another integration's, or long pruned) changes nothing.
    return Outcome.DONE if checked else Outcome.IGNORED
