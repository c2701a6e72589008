"""Records too late for any `latest` sync: told to staff once, and — if asked — a historic sync requested.

A `latest` sync starts where the last successful one ended (sync-commerce-current.json, `request-sync`),
so a record that reaches Codat dated before that point — pushed late: a paused company's backlog, a
failed dataset re-pushed — is in no future `latest` sync and never reaches the books unless a historic
sync (`request-sync-for-date-range`) covers its dates. The relay notices at a dataset's end and at each
sync check (service/coverage.py `find_late`), tells staff once per record (`records.late_told_at`) with
the date range concerned, and with `RELAY_AUTO_HISTORIC_SYNC=true` queues a `historic_sync` job for that
range; the sync it starts is followed like any the relay starts, and applied with its own range.
"""

from __future__ import annotations

from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from service import coverage, queue, record_states
from service.clock import iso
from service.notifications import Kind, Notification

HISTORIC_KIND = "historic_sync"
IDS_TOLD = 50  # record ids listed in one notification; the counts are always complete
log = structlog.get_logger("service.late_records")


def late_notification(late: coverage.Late, requested: bool) -> Notification:
    start, finish = iso(late.start), iso(late.finish)
    action = (
        "codat-relay has requested a historic sync of this range" if requested
        else f"Run a historic sync of this range: codat-relay sync historic {late.company_id} "
             f"--start {start} --end {finish} (or set RELAY_AUTO_HISTORIC_SYNC=true)"
    )  # fmt: skip
    listed = [f"{data_type}:{record_id}" for data_type, ids in late.ids.items() for record_id in ids]
    return Notification(
        Kind.LATE_RECORDS,
        f"{late.count} record(s) reached Codat dated before the last successful sync's end; no `latest` sync "
        f"will take them ({start} to {finish})",
        company_id=late.company_id, subject=f"{start}/{finish}",
        details={"count": late.count, "byDataType": {k: len(v) for k, v in late.ids.items()},
                 "recordIds": listed[:IDS_TOLD], "dateRange": {"start": start, "finish": finish},
                 "historicSyncRequested": requested, "action": action},
    )  # fmt: skip


async def notice(
    conn: AsyncConnection, notifier: Any, company_id: str, data_types: list[str], now: float, *, auto: bool
) -> coverage.Late | None:
    """Tell staff of late records of `data_types` not told before (the caller holds their outbox locks)."""
    late = await coverage.find_late(conn, company_id, data_types)
    if late is None:
        return None
    await record_states.mark_late_told(conn, company_id, late.ids, now)
    if auto:
        payload = {"company_id": company_id, "start": late.start, "finish": late.finish}
        await queue.enqueue(conn, HISTORIC_KIND, payload, now=now)
    await notifier.notify(late_notification(late, auto), conn)
    log.warning("late_records", company_id=company_id, count=late.count, start=iso(late.start),
                finish=iso(late.finish), historic_sync_requested=auto)  # fmt: skip
    return late
