"""Dataset status alerts: ask Codat, apply monotonically, and let the re-push policy act on failures.

Legacy *Data Sync Status Changed To Error* / *Data sync completed* / *Dataset data changed* carry a
dataset id; `read.completed` carries none, so every unfinished dataset of that company and data type
is checked. The alert's own status is never trusted: Codat's answer is what gets applied, and a dataset
already terminal never moves back (a stale error alert after `Complete` does nothing).
"""

from __future__ import annotations

import sqlalchemy as sa

from service.codat.models import TERMINAL_STATUSES
from service.datasets import apply_dataset_status, load
from service.db import datasets, reader, writer
from service.tracking import ask_codat
from service.types import Alert, Context, DataTypeStatus, Outcome


async def _concerned(ctx: Context, company_id: str, entry: DataTypeStatus) -> list[str]:
    """Our datasets this entry speaks of: the one named, or every unfinished one of its data type."""
    query = sa.select(datasets.c.id).where(datasets.c.company_id == company_id)
    if entry.dataset_id:
        query = query.where(datasets.c.id == entry.dataset_id)
    elif entry.data_type:
        query = query.where(datasets.c.data_type == entry.data_type, datasets.c.terminal.is_(False))
    else:
        return []
    async with reader(ctx.store).connect() as conn:
        return list((await conn.execute(query.order_by(datasets.c.requested_at))).scalars())


async def reconcile(ctx: Context, company_id: str, dataset_id: str) -> str | None:
    """Codat's status of one dataset, applied; returns the status applied (None if not ours)."""
    async with reader(ctx.store).connect() as conn:
        row = await load(conn, dataset_id)
    if row is None or row["terminal"]:
        return None if row is None else str(row["status"])
    now = ctx.clock.now()
    found = await ask_codat(ctx.codat, row, now)
    if found is None:
        return str(row["status"])  # a 404 just after the push: the poll or the sweep asks again
    if found.status == row["status"] and found.status not in TERMINAL_STATUSES:
        # Still where we last saw it (a stale or repeated alert): nothing to write, no write lock to take.
        return found.status
    async with writer(ctx.store).begin() as conn:
        row = await load(conn, dataset_id)
        if row is None:
            return None
        applied = await apply_dataset_status(conn, row, found.status, found.message, now=now,
                                             completed_at=found.completed_at)  # fmt: skip
        if applied.terminal and applied.changed:
            await ctx.tracker.after_terminal(conn, applied, now)
    return applied.status


async def on_dataset_status(alert: Alert, ctx: Context) -> Outcome:
    if not alert.company_id:
        ctx.log.info("dataset_alert_without_company")
        return Outcome.IGNORED
    checked = 0
    for entry in alert.data_types:
        for dataset_id in await _concerned(ctx, alert.company_id, entry):
            status = await reconcile(ctx, alert.company_id, dataset_id)
            checked += 1
            ctx.log.info("dataset_reconciled", dataset_id=dataset_id, alert_status=entry.status, codat_status=status)
    # An alert about datasets we never pushed (another integration's, or long pruned) changes nothing.
    return Outcome.DONE if checked else Outcome.IGNORED
