"""Connection alerts: a deleted sync connection pauses the company; a reconnection resumes it.

Codat promises no order, so a late event must not undo a newer one. New-style events carry
`generatedDate`: each company keeps the time of the newest connection event applied, and an older one
changes nothing. Legacy alert rules carry no time at all, so ordering them by when they happen to be
processed would let a delayed *Sync Connection Deleted* pause a company that has reconnected since.
A legacy event is instead checked against Codat's present (FACTS §5: never trust an alert's status as
current): an event about a connection other than the one now linked is stale; otherwise Codat is asked
for the connection (`GET /companies/{id}/connections/{connectionId}`) and its answer decides — a
deletion stands only if Codat no longer has the connection (404), a status change is applied as
Codat's status now says (Linked resumes, Unlinked/Deauthorized/PendingAuth needs a person). Legacy
events claim no time, so they never make a later-delivered new-style event look stale.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from service import keys, outbox, queue, schedules
from service.codat.client import CodatNotFound
from service.db import companies, records, writer
from service.notifications import ACTION_RECONNECT, CONNECTION_SUBJECT, Kind, Notification, forget
from service.records import MODELS
from service.types import Alert, Context, Outcome

RESUMING = frozenset({"connection.created", "connection.connected", "connection.reconnected"})
NEEDS_A_PERSON = frozenset({"connection.disconnected", "connection.failed"})
LINKED = frozenset({"linked"})
UNLINKED = frozenset({"unlinked", "deauthorized", "deauthorised", "pendingauth", "disconnected"})
DELETE, RESUME, TELL = "delete", "resume", "tell"


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
    """True when this event may be applied: the company's newest timed event, or a legacy one (checked
    against Codat before, see `_legacy_direction`). A stale one is logged and changes nothing."""
    if alert.generated_at is None:
        await outbox.ensure_company(conn, company, now)
        return True
    if await _newer(conn, company, alert.generated_at, now):
        return True
    ctx.log.info("stale_connection_event")
    return False


def _named(connection_id: str | None) -> str | None:
    """The connection id an alert names; legacy deletions may send all zeros, which name nothing."""
    return connection_id if connection_id and set(connection_id) - set("0-") else None


async def _legacy_direction(ctx: Context, alert: Alert, claim: str | None) -> str | None:
    """What a legacy (timeless) connection event means now: DELETE, RESUME, TELL or None (stale)."""
    if claim is None or alert.company_id is None:
        return None
    async with ctx.store.connect() as conn:
        row = (await conn.execute(
            sa.select(companies.c.connection_id, companies.c.connection_status)
            .where(companies.c.id == alert.company_id))).first()  # fmt: skip
    named, known = _named(alert.connection_id), row.connection_id if row is not None else None
    if row is not None and named and known and named != known and row.connection_status == "linked":
        ctx.log.info("stale_connection_event", reason="another connection is linked now")
        return None
    connection = named or known
    if connection is None:
        return claim  # nothing to ask Codat about: the alert's word is all there is
    try:
        found = await ctx.codat.get_connection(alert.company_id, connection)
    except CodatNotFound:
        codat_says = DELETE
    else:
        status = str(found.get("status") or "").strip().lower() if isinstance(found, dict) else ""
        codat_says = RESUME if status in LINKED else TELL if status in UNLINKED else ""
    if not codat_says or (claim == DELETE) != (codat_says == DELETE):
        ctx.log.info("stale_connection_event", reason=f"Codat says {codat_says or 'nothing known'}", claimed=claim)
        return None
    return codat_says


async def on_connection_deleted(alert: Alert, ctx: Context) -> Outcome:
    if not alert.company_id:
        return Outcome.IGNORED
    if alert.generated_at is None and await _legacy_direction(ctx, alert, DELETE) != DELETE:
        return Outcome.DONE
    company, now = alert.company_id, ctx.clock.now()
    async with writer(ctx.store).begin() as conn:
        if not await _fresh(conn, company, alert, ctx, now):
            return Outcome.DONE
        named = _named(alert.connection_id)
        await conn.execute(
            companies.update().where(companies.c.id == company).values(
                connection_status="deleted", connection_id=named or companies.c.connection_id,
                connection_deleted_at=now, updated_at=now)
        )  # fmt: skip
        # A company already paused keeps its reason (a manual pause stays manual; a push's 404 got here first).
        await outbox.pause_unless_paused(conn, company, outbox.CONNECTION_DELETED, now)
        # Pushes waiting for this company (re-pushes among them) would only find it paused: drop them.
        # Exact keys, not LIKE 'push:{company}:%': a company id holding `%` or `_` would match others'.
        locks = [keys.push_lock(company, data_type) for data_type in MODELS]
        cancelled = await queue.cancel_waiting(conn, outbox.PUSH_KIND, locks)
        await ctx.notifier.notify(Notification(
            Kind.CONNECTION_DELETED, "The merchant's sync connection was deleted: pushes are paused",
            company_id=company, subject=CONNECTION_SUBJECT,
            details={"connectionId": alert.connection_id, "alertId": alert.delivery_id, "action": ACTION_RECONNECT},
        ), conn)  # fmt: skip
    ctx.log.info("company_paused", reason=outbox.CONNECTION_DELETED, cancelled_pushes=cancelled)
    return Outcome.DONE


def _direction(alert: Alert) -> str | None:
    """RESUME, TELL or None, as the alert claims it: an envelope type or a legacy Data.newStatus."""
    kind = alert.type.strip().lower()
    if kind in RESUMING:
        return RESUME
    if kind in NEEDS_A_PERSON:
        return TELL
    new_status = (alert.dataset_status or "").strip().lower()  # legacy Data.newStatus lands here
    if new_status in LINKED:
        return RESUME
    if new_status in UNLINKED:
        return TELL
    return None


async def _resume(conn: AsyncConnection, company: str, alert: Alert, ctx: Context, now: float) -> int:
    """Lift a pause a deleted or unknown connection caused (a manual pause stays) and push the backlog."""
    # The connection is back: the problem is over (staff hear so); a deletion after the dedupe window is a
    # new problem, told at once — one within it reopens this one (service/problems.py).
    kinds = (Kind.CONNECTION_DELETED, Kind.AUTH_REQUIRED)
    for kind in kinds:
        await forget(conn, kind, company, CONNECTION_SUBJECT)
    await ctx.notifier.resolve(conn, f"the connection is linked again ({alert.type})", kinds=kinds,
                               company_id=company, subjects=[CONNECTION_SUBJECT])  # fmt: skip
    # Which connection is linked now, paused or not: a late event about an older one is then stale.
    await conn.execute(
        companies.update().where(companies.c.id == company)
        .values(connection_status="linked", connection_id=_named(alert.connection_id) or companies.c.connection_id,
                connection_deleted_at=None)  # reconnected: the deletion is history, no longer a problem
    )  # fmt: skip
    result = await conn.execute(
        companies.update()
        .where(companies.c.id == company, companies.c.pause_reason.in_(sorted(outbox.CONNECTION_PAUSES)))
        .values(paused=False, pause_reason=None, updated_at=now)
    )  # fmt: skip
    if not result.rowcount:
        return 0
    waiting = await conn.execute(
        sa.select(records.c.data_type).distinct()
        .where(records.c.company_id == company, records.c.state.in_([outbox.State.PENDING, outbox.State.FAILED]))
    )  # fmt: skip
    data_types = list(waiting.scalars())
    for data_type in data_types:
        await outbox.schedule_push(conn, company, data_type, now=now)
    return len(data_types) or 1


async def on_connection_status(alert: Alert, ctx: Context) -> Outcome:
    direction = _direction(alert)
    if not alert.company_id or direction is None:
        return Outcome.IGNORED
    if alert.generated_at is None:
        direction = await _legacy_direction(ctx, alert, direction)
        if direction is None:
            return Outcome.DONE
    company, now = alert.company_id, ctx.clock.now()
    async with writer(ctx.store).begin() as conn:
        if not await _fresh(conn, company, alert, ctx, now):
            return Outcome.DONE
        # A new or changed connection may come with a new sync schedule (and name): read them again.
        await schedules.queue_refresh(conn, company, now)
        if direction == RESUME:
            resumed = await _resume(conn, company, alert, ctx, now)
            ctx.log.info("connection_linked", resumed=bool(resumed))
            return Outcome.DONE
        await conn.execute(companies.update().where(companies.c.id == company).values(
            connection_status="unlinked", connection_id=_named(alert.connection_id) or companies.c.connection_id,
            updated_at=now))  # fmt: skip
        await ctx.notifier.notify(Notification(
            Kind.AUTH_REQUIRED, "The merchant's accounting connection needs re-authorising",
            company_id=company, subject=CONNECTION_SUBJECT,
            details={"connectionId": alert.connection_id, "event": alert.type,
                     "action": "Ask the merchant to re-authorise the connection in Codat Link"},
        ), conn)  # fmt: skip
    return Outcome.DONE
