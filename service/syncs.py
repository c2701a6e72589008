"""Manual Codat syncs and sync status, shared by the admin API and the CLI."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from service.codat.client import (
    CodatClient,
)
from service.coverage import HISTORIC, LATEST
from service.errors import InvalidRequest

# Keeps a sync just started — (company, kind, Codat's `SyncSummary`): its range is what it covers — and
# queues the reads of its status until it ends (service.tracking.follow_sync).
Follow = Callable[[str, str, Any], Awaitable[None]]


def parse_instant(field: str, value: Any) -> datetime:
    """An ISO-8601 instant with a time zone (Codat's syncTo/dateRange are instants)."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{field}: expected an ISO-8601 date-time string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"{field}: not an ISO-8601 date-time") from None
    if parsed.tzinfo is None:
        raise InvalidRequest(f"{field}: needs a time zone (e.g. Z or +00:00)")
    return parsed


def historic_range(start: Any, end: Any) -> tuple[datetime, datetime]:
    first, last = parse_instant("start", start), parse_instant("end", end)
    if first >= last:
        raise InvalidRequest("end: must be after start")
    return first, last


async def sync_latest(codat: CodatClient, company_id: str, sync_to: Any = None, *, follow: Follow | None = None) -> Any:
    """Start a latest sync; with `follow`, its status is then polled until it ends (no webhook tells us)."""
    summary = await codat.sync_latest(company_id, None if sync_to is None else parse_instant("syncTo", sync_to))
    if follow is not None:
        await follow(company_id, LATEST, summary)
    return summary


async def sync_historic(
    codat: CodatClient, company_id: str, start: Any, end: Any, *, follow: Follow | None = None
) -> Any:
    first, last = historic_range(start, end)
    summary = await codat.sync_historic(company_id, first, last)
    if follow is not None:
        await follow(company_id, HISTORIC, summary)
    return summary


async def sync_status(codat: CodatClient, company_id: str) -> Any:
    return [status.model_dump(mode="json", by_alias=True) for status in await codat.get_sync_status(company_id)]
