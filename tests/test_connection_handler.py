"""Connection events are applied in event-time order per company: a late, older one changes nothing."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
import structlog

from handlers.connection import on_connection_deleted, on_connection_status
from service.alerts import parse_alert
from service.clock import FixedClock
from service.db import companies, create_engine
from service.notifications import Notifier
from service.testing import connection_deleted_body
from service.types import Context, Outcome
from tests.conftest import make_settings


def envelope(event: str, at: str, company: str = "co-1") -> Any:
    body = connection_deleted_body()
    body.update(eventType=event, generatedDate=at)
    body["payload"]["referenceCompany"]["id"] = company
    return parse_alert(body, json.dumps(body).encode(), header_id=None, signed=True)


async def test_a_late_older_reconnection_does_not_resume_a_deleted_connection(database_url: str) -> None:
    """deleted@10:05 then reconnected@10:00 (delivered late) → still paused; reconnected@10:10 → resumed."""
    settings = make_settings(database_url)
    engine = create_engine(settings)
    clock = FixedClock()
    ctx = Context(store=engine, codat=None, notifier=Notifier(engine, ["log"], 3600, clock), clock=clock,
                  log=structlog.get_logger(), attempt=1, settings=settings)
    try:
        assert await on_connection_deleted(envelope("connection.deleted", "2026-01-01T10:05:00Z"), ctx) is Outcome.DONE
        await on_connection_status(envelope("connection.reconnected", "2026-01-01T10:00:00Z"), ctx)
        async with engine.connect() as conn:
            still = (await conn.execute(sa.select(companies.c.paused, companies.c.pause_reason))).one()
        await on_connection_status(envelope("connection.reconnected", "2026-01-01T10:10:00Z"), ctx)
        async with engine.connect() as conn:
            after = (await conn.execute(sa.select(companies.c.paused, companies.c.pause_reason))).one()
    finally:
        await engine.dispose()
    assert tuple(still) == (True, "connection_deleted")
    assert tuple(after) == (False, None)
