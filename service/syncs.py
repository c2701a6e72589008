"""Manual Codat syncs and sync status, shared by the admin API and the CLI.

A sync codat-relay starts is followed by a `poll_sync` job until it ends (`followed`): Codat sends no
webhook when a Sync for Commerce sync ends, so without it records would wait for the daily sync check.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from service import tracking
from service.codat.client import (
    CodatClient,
)
from service.db import writer
from service.errors import InvalidRequest


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


async def sync_latest(codat: CodatClient, company_id: str, sync_to: Any = None) -> Any:
    return await codat.sync_latest(company_id, None if sync_to is None else parse_instant("syncTo", sync_to))


async def sync_historic(codat: CodatClient, company_id: str, start: Any, end: Any) -> Any:
    first, last = historic_range(start, end)
    return await codat.sync_historic(company_id, first, last)


async def sync_status(codat: CodatClient, company_id: str) -> Any:
    return [status.model_dump(mode="json", by_alias=True) for status in await codat.get_sync_status(company_id)]


async def followed(engine: AsyncEngine, company_id: str, answer: Any, now: float) -> Any:
    """Queue the polls of a sync codat-relay just started (Codat's `SyncSummary` in `answer`); returns it."""
    async with writer(engine).begin() as conn:
        await tracking.follow_sync(conn, company_id, answer, now)
    return answer
