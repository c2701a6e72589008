"""Connection alerts: a deleted sync connection pauses the company; a reconnection resumes it.

Connection events carry no status we could ask Codat for in Sync for Commerce, so staleness is judged
by time instead: each company keeps the time of the newest connection event applied, and an older one
arriving late (Codat promises no order) changes nothing.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from service import outbox
from service.db import companies, jobs, records, writer
from service.notifications import ACTION_RECONNECT, CONNECTION_SUBJECT, Kind, Notification, forget
from service.records import MODELS
from service.types import Alert, Context, Outcome

RESUMING = frozenset({"connection.created", "connection.connected", "connection.reconnected"})
NEEDS_A_PERSON = frozenset({"connection.disconnected", "connection.failed"})
LINKED = frozenset({"linked"})
UNLINKED = frozenset({"unlinked", "deauthorized", "deauthorised", "pendingauth", "disconnected"})


def event_time(alert: Alert, ctx: Context) -> float:
    return alert.generated_at if alert.generated_at is not None else ctx.clock.now()


async def _newer(conn: AsyncConnection, company_id: str, at: float, now: float) -> bool:
    """Claim `at` as the company's newest connection event; False when a newer one was applied."""
    await outbox.ensure_company(conn, company_id, now)
    result = await conn.execute(
        companies.update()
        .where(companies.c.id == company_id,
               sa.or_(companies.c.connection_event_at.is_(None), companies.c.connection_event_at <= at))
        .values(connection_event_at=at, updated_at=now)
    )  # fmt: skip
    return bool(result.rowcount)


async def _fresh(conn: AsyncConnection, company: str, alert: Alert, ctx: Context, now: float) -> bool:
    """True when this event is the company's newest; a stale one is logged and changes nothing."""
    if await _newer(conn, company, event_time(alert, ctx), now):
        return True
    ctx.log.info("stale_connection_event")
    return False


async def on_connection_deleted(alert: Alert, ctx: Context) -> Outcome:
    if not alert.company_id:
        return Outcome.IGNORED
    company, now = alert.company_id, ctx.clock.now()
    async with writer(ctx.store).begin() as conn:
        if not await _fresh(conn, company, alert, ctx, now):
            return Outcome.DONE
        await conn.execute(
            companies.update().where(companies.c.id == company).values(
                connection_status="deleted", connection_id=alert.connection_id, connection_deleted_at=now,
                updated_at=now)
        )  # fmt: skip
        # A company already paused keeps its reason (a manual pause stays manual; a push's 404 got here first).
        await outbox.pause_unless_paused(conn, company, outbox.CONNECTION_DELETED, now)
        # Pushes waiting for this company (re-pushes among them) would only find it paused: drop them.
        # Exact keys, not LIKE 'push:{company}:%': a company id holding `%` or `_` would match others'.
        locks = [outbox.push_lock(company, data_type) for data_type in MODELS]
        cancelled = await conn.execute(
            jobs.delete().where(jobs.c.kind == outbox.PUSH_KIND, jobs.c.status == "waiting",
                                jobs.c.lock_key.in_(locks))
        )  # fmt: skip
        await ctx.notifier.notify(Notification(
            Kind.CONNECTION_DELETED, "The merchant's sync connection was deleted: pushes are paused",
            company_id=company, subject=CONNECTION_SUBJECT,
            details={"connectionId": alert.connection_id, "alertId": alert.delivery_id, "action": ACTION_RECONNECT},
        ), conn)  # fmt: skip
    ctx.log.info("company_paused", reason=outbox.CONNECTION_DELETED, cancelled_pushes=cancelled.rowcount)
    return Outcome.DONE


def _direction(alert: Alert) -> str | None:
    """`resume`, `tell` or None, from an envelope type or a legacy DataConnectionStatusChanged."""
    kind = alert.type.strip().lower()
    if kind in RESUMING:
        return "resume"
    if kind in NEEDS_A_PERSON:
        return "tell"
    new_status = (alert.dataset_status or "").strip().lower()  # legacy Data.newStatus lands here
    if new_status in LINKED:
        return "resume"
    if new_status in UNLINKED:
        return "tell"
    return None


async def _resume(conn: AsyncConnection, company: str, alert: Alert, now: float) -> int:
    """Lift a pause a deleted or unknown connection caused (a manual pause stays) and push the backlog."""
    # The connection is back: a later deletion or lost authorisation is a new problem, told at once.
    for kind in (Kind.CONNECTION_DELETED, Kind.AUTH_REQUIRED):
        await forget(conn, kind, company, CONNECTION_SUBJECT)
    result = await conn.execute(
        companies.update()
        .where(companies.c.id == company, companies.c.pause_reason.in_(sorted(outbox.CONNECTION_PAUSES)))
        .values(paused=False, pause_reason=None, connection_status="linked",
                connection_id=alert.connection_id, updated_at=now)
    )  # fmt: skip
    if not result.rowcount:
        return 0
    waiting = await conn.execute(
        sa.select(records.c.data_type).distinct()
        .where(records.c.company_id == company, records.c.state.in_(["pending", "failed"]))
    )  # fmt: skip
    data_types = list(waiting.scalars())
    for data_type in data_types:
        await outbox.schedule_push(conn, company, data_type, now=now)
    return len(data_types) or 1


async def on_connection_status(alert: Alert, ctx: Context) -> Outcome:
    direction = _direction(alert)
    if not alert.company_id or direction is None:
        return Outcome.IGNORED
    company, now = alert.company_id, ctx.clock.now()
    async with writer(ctx.store).begin() as conn:
        if not await _fresh(conn, company, alert, ctx, now):
            return Outcome.DONE
        if direction == "resume":
            resumed = await _resume(conn, company, alert, now)
            ctx.log.info("connection_linked", resumed=bool(resumed))
            return Outcome.DONE
        await conn.execute(companies.update().where(companies.c.id == company)
                           .values(connection_status="unlinked", updated_at=now))  # fmt: skip
        await ctx.notifier.notify(Notification(
            Kind.AUTH_REQUIRED, "The merchant's accounting connection needs re-authorising",
            company_id=company, subject=CONNECTION_SUBJECT,
            details={"connectionId": alert.connection_id, "event": alert.type,
                     "action": "Ask the merchant to re-authorise the connection in Codat Link"},
        ), conn)  # fmt: skip
    return Outcome.DONE
