"""Sync alerts (*Sync Completed*, *Sync Failed*, *New company synchronised*): ask Codat what happened.

A successful sync (2000/2040) puts in the books the accepted records its date range covers
(service/coverage.py: they become `synced`, and later changes to them become conflicts instead of
pushes); a failed one (4xxx/5xxx) is told to staff with the meaning of its code — branching on the
code, never on the text.
"""

from __future__ import annotations

from service.codat.client import CodatNotFound, is_failure
from service.tracking import sync_failed
from service.types import Alert, Context, Outcome


async def on_sync_completed(alert: Alert, ctx: Context) -> Outcome:
    if not alert.company_id:
        return Outcome.IGNORED
    conflicts = await ctx.tracker.check_sync(alert.company_id)
    try:
        syncs = await ctx.codat.get_sync_status(alert.company_id)
    except CodatNotFound:
        return Outcome.DONE  # Codat knows no sync for this company: nothing to tell
    dated = [s for s in syncs if s.sync_utc is not None] or syncs
    latest = max(dated, key=lambda s: s.sync_utc.timestamp() if s.sync_utc else 0.0, default=None)
    if latest is not None and latest.sync_status_code is not None and is_failure(latest.sync_status_code):
        await ctx.notifier.notify(sync_failed(alert.company_id, latest))
    ctx.log.info("sync_checked", code=latest.sync_status_code if latest else None,
                 conflicts=sum(map(len, conflicts.values())))  # fmt: skip
    return Outcome.DONE
