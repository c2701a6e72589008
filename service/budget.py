"""Codat's rate limits as one budget shared by every process, kept in the database (the tables' only writer).

Codat serves 10 concurrent requests per company, a daily quota of 1,000 x (1 + connected companies) reset
at 00:00 UTC, and answers 429 + Retry-After past either (docs/using-the-api/rate-limits.md, FACTS §6).
A per-process cap cannot keep that across two workers; this does:

- **Slots**: each company has RELAY_CODAT_COMPANY_CONCURRENCY numbered slots (`codat_slots`). A request
  takes a free one under a lease (the Codat timeout and a margin), and gives it back when answered; a
  process that dies mid-request frees its slots when their leases expire. Taking one is one UPDATE
  (SKIP LOCKED on PostgreSQL), giving it back another, each in the transaction of the quota's own UPDATE
  (the quota row first in both, so that two never deadlock).
- **The daily quota** (`codat_quota`, one row): what Codat last said in `X-Rate-Limit-*` or a
  `client.rateLimit.*` event, counted down by every request any process sends (in the same transaction
  as its slot), so that the processes together never send past it. Routine calls (dataset polls) are
  spaced out below twice a reserve (RELAY_CODAT_QUOTA_RESERVE_PERCENT of the limit) and stop at it,
  keeping the rest for pushes and what staff asked for; at 0 everything waits for the reset, staff are
  told once (`rate_limit_reached`), and `client.rateLimit.reset` (or the reset time passing) lets the
  calls go again.
- **429 waits** (`codat_company_waits`): a 429 for one company holds every process's calls for that
  company until its Retry-After.

A call the budget refuses raises `Deferred`: its job waits and runs again without spending an attempt.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import metrics
from service.clock import Clock
from service.codat.budget import Lease, Priority
from service.codat.retry import later_s, parse_retry_after
from service.db import bookkeeper, codat_company_waits, codat_quota, codat_slots, reader
from service.errors import Deferred
from service.keys import codat_budget_key

log = structlog.get_logger("service.budget")

DAY_S = 86_400
QUOTA_ROW = 1
LEASE_MARGIN_S = 30.0  # a slot outlives its request's timeout by this much before another may take it
SLOT_WAIT_S = 5.0  # how long a call waits in-process for a busy company's slot before its job is deferred
SLOT_POLL_FIRST_S = 0.02
SLOT_POLL_MAX_S = 0.25
BUSY_DEFER_S = 1  # a job whose company stayed busy that long comes back after this
SHORT_WAIT_S = 2.0  # a 429 wait this short is waited out in-process rather than deferring the job
RECHECK_S = 60.0  # a job waiting on a spent quota looks again at most this long after

OnReached = Callable[[int | None, float], Awaitable[None]]
"""Told when the daily quota is found spent: (the daily limit if known, when it resets)."""


@dataclass(frozen=True)
class QuotaView:
    limit: int | None
    remaining: int | None
    reset_at: float | None
    routine_after: float | None = None

    def reserve(self, percent: int) -> int:
        return (self.limit or 0) * percent // 100

    def known(self, now: float) -> bool:
        return self.remaining is not None and self.reset_at is not None and self.reset_at > now


def next_midnight(now: float) -> float:
    """Codat resets the quota at 00:00 UTC."""
    return (math.floor(now / DAY_S) + 1) * DAY_S


def parse_reset(value: str | None) -> float | None:
    """`X-Rate-Limit-Reset`: "the date when the quota will be reset" — ISO 8601 or an HTTP date."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        parsed = parse_retry_after(value, 0.0)  # an HTTP date, as seconds from the epoch
        return parsed if parsed else None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


# The quota row counts down by one unless it is known spent (down to `floor`) for the window it describes.
# Routine calls stop at the reserve, `reserve_percent` of the daily limit; the others at 0. While the quota
# is not known (no answer yet, or its window has passed), one request goes alone, as a probe: its answer
# tells the quota, and from then on every request is counted down here before it is sent, so that no
# request is ever on its way uncounted.
# Between the reserve and twice it, the quota is thinning: routine calls are spaced out so that the rest of
# their share lasts until the reset (one every (reset - now) / (remaining - reserve) seconds, all processes
# together), rather than spent in the first minutes.
_TAKE_QUOTA = sa.text("""
UPDATE codat_quota SET
  remaining = CASE WHEN reset_at > :now THEN remaining - 1 ELSE NULL END,
  probe_until = CASE WHEN reset_at > :now AND remaining IS NOT NULL THEN probe_until ELSE :probe_until END,
  routine_after = CASE
    WHEN :routine = 1 AND reset_at > :now AND remaining <= 2 * (coalesce(daily_limit, 0) * :pct / 100)
    THEN :now + (reset_at - :now) / CASE WHEN remaining - coalesce(daily_limit, 0) * :pct / 100 > 1
                                         THEN remaining - coalesce(daily_limit, 0) * :pct / 100 ELSE 1 END
    ELSE routine_after END
WHERE id = 1 AND (
    reset_at > :now AND remaining IS NOT NULL
      AND remaining > CASE WHEN :routine = 1 THEN coalesce(daily_limit, 0) * :pct / 100 ELSE 0 END
      AND (:routine = 0 OR remaining > 2 * (coalesce(daily_limit, 0) * :pct / 100)
           OR routine_after IS NULL OR routine_after <= :now)
    OR (reset_at IS NULL OR reset_at <= :now OR remaining IS NULL)
      AND (probe_until IS NULL OR probe_until < :now))
RETURNING remaining
""")
# A probe that got no figure back (no answer, or one without the headers): the next request probes again.
_PROBE_OVER = sa.text("UPDATE codat_quota SET probe_until = NULL WHERE id = 1 AND probe_until IS NOT NULL")
_TAKE_SLOT = """
UPDATE codat_slots SET holder = :holder, expires_at = :until
WHERE key = :key AND expires_at < :now AND slot = (
    SELECT s.slot FROM codat_slots s
    WHERE s.key = :key AND s.slot < :slots AND s.expires_at < :now
    ORDER BY s.slot LIMIT 1 {row_lock})
  AND NOT EXISTS (SELECT 1 FROM codat_company_waits w WHERE w.key = :key AND w.not_before > :now)
RETURNING slot
"""
TAKE_SLOT_SQL = {
    "sqlite": sa.text(_TAKE_SLOT.format(row_lock="")),  # one writer at a time: nothing to skip
    "postgresql": sa.text(_TAKE_SLOT.format(row_lock="FOR UPDATE SKIP LOCKED")),
}
# What Codat said. The same window only ever counts down (requests still on their way were counted down
# here when sent, and are not in Codat's figure yet): one statement, the common case.
_OBSERVE_SAME = sa.text("""
UPDATE codat_quota SET remaining = CASE WHEN remaining IS NULL OR :remaining < remaining THEN :remaining
                                        ELSE remaining END,
                       daily_limit = coalesce(:limit, daily_limit), updated_at = :now, probe_until = NULL
WHERE id = 1 AND reset_at = :reset
RETURNING remaining, reset_at, daily_limit
""")
# A later window (or the first answer ever) replaces what we knew, less the requests in flight now: they
# may not have reached Codat yet, and none of them was counted down against this window. An answer about
# an earlier window (a request sent before a reset) changes nothing.
_OBSERVE_NEW = sa.text("""
UPDATE codat_quota SET remaining = :remaining - (
        SELECT count(*) FROM codat_slots
        WHERE expires_at > :now AND NOT (key = :key AND slot = :slot AND holder = :holder)),
                       daily_limit = :limit, reset_at = :reset, updated_at = :now, probe_until = NULL
WHERE id = 1 AND (reset_at IS NULL OR reset_at < :reset)
RETURNING remaining, reset_at, daily_limit
""")


class _NoSlot(Exception):
    """Rolls back the acquire's transaction (and the quota it took) when no slot was free."""


@dataclass
class SharedBudget:
    """The `service.codat.budget.Budget` every process of one database shares."""

    engine: AsyncEngine
    clock: Clock
    company_slots: int = 10
    reserve_percent: int = 10
    lease_s: float = 60.0
    on_reached: OnReached | None = None
    slot_wait_s: float = SLOT_WAIT_S
    recheck_s: float = RECHECK_S
    holder: str = field(default_factory=lambda: uuid.uuid4().hex)
    _seeded: set[str] = field(default_factory=set)

    async def acquire(self, company_id: str | None, priority: Priority) -> Lease:
        """A slot of `company_id` (none for company-less calls) and one unit of quota, or `Deferred`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.slot_wait_s
        pause = SLOT_POLL_FIRST_S
        waiting = False
        try:
            while True:
                lease = await self._try(company_id, priority)
                if lease is not None:
                    return lease
                hold = await self._company_wait(company_id)
                if hold > SHORT_WAIT_S:
                    raise Deferred(f"Codat asked to wait before calling for company {company_id}", later_s(429, hold))
                if loop.time() + max(hold, pause) > deadline:
                    raise Deferred(f"Codat's request slots of company {company_id} (or the quota's probe) busy",
                                   BUSY_DEFER_S)  # fmt: skip
                if not waiting:
                    waiting = True
                    metrics.CODAT_CALLS_WAITING.labels("slot").inc()
                # Slots free up as other processes' requests end: no event tells us, so we look again.
                await asyncio.sleep(max(hold, pause))
                pause = min(pause * 2, SLOT_POLL_MAX_S)
        finally:
            if waiting:
                metrics.CODAT_CALLS_WAITING.labels("slot").dec()

    async def _try(self, company_id: str | None, priority: Priority) -> Lease | None:
        now = self.clock.now()
        routine = int(priority is Priority.ROUTINE)
        try:
            async with bookkeeper(self.engine).begin() as conn:
                taken = (await conn.execute(_TAKE_QUOTA, {
                    "now": now, "routine": routine, "pct": self.reserve_percent, "probe_until": now + self.lease_s,
                })).first()  # fmt: skip
                if taken is None:
                    quota = await self._quota_in(conn)
                    if not quota.known(now):
                        raise _NoSlot  # a probe is on its way: its answer will tell the quota
                    if self._would_admit(quota, routine):
                        # The probe's answer committed between the take and this read (PostgreSQL reads the
                        # latest commit per statement): the quota has room, so take again, not defer.
                        raise _NoSlot
                    raise self._quota_deferred(quota, now, priority)
                if company_id is None:
                    return Lease(None, None, self.holder)
                if company_id not in self._seeded:
                    await self._seed(conn, company_id)
                slot = await self._take_slot(conn, company_id, now)
                if slot is None and company_id in self._seeded:
                    # Its rows may be gone: a purge forgets the company's slots (`forget_company`). Made again
                    # (a no-op when they are all there and busy), then looked at once more.
                    await self._seed(conn, company_id)
                    slot = await self._take_slot(conn, company_id, now)
                if slot is None:
                    raise _NoSlot
        except _NoSlot:
            return None
        self._seeded.add(company_id)
        return Lease(company_id, int(slot), self.holder)

    async def _take_slot(self, conn: AsyncConnection, company_id: str, now: float) -> int | None:
        return (await conn.execute(TAKE_SLOT_SQL[conn.dialect.name], {
            "holder": self.holder, "until": now + self.lease_s, "key": codat_budget_key(company_id), "now": now,
            "slots": self.company_slots,
        })).scalar_one_or_none()  # fmt: skip

    def _would_admit(self, quota: QuotaView, routine: int) -> bool:
        """Whether `_TAKE_QUOTA` takes from this quota, leaving out the routine calls' spacing (it defers)."""
        floor = quota.reserve(self.reserve_percent) * (2 if routine else 0)
        return (quota.remaining or 0) > floor

    def _quota_deferred(self, quota: QuotaView, now: float, priority: Priority) -> Deferred:
        reset = quota.reset_at if quota.reset_at is not None else next_midnight(now)
        # `client.rateLimit.reset` brings every deferred job forward; one deferred in the instant the event
        # was handled would miss that, so none waits longer than `recheck_s` before looking again.
        wait = later_s(429, min(max(reset - now, 1.0), self.recheck_s))
        if priority is Priority.ROUTINE and (quota.remaining or 0) > quota.reserve(self.reserve_percent):
            spaced = later_s(429, min(max((quota.routine_after or now) - now, 1.0), self.recheck_s))
            return Deferred(f"Codat's daily quota is thinning ({quota.remaining} left): routine calls are "
                            "spaced out", spaced)  # fmt: skip
        if priority is Priority.ROUTINE and (quota.remaining or 0) > 0:
            return Deferred(f"Codat's daily quota is down to its reserve ({quota.remaining} left): routine "
                            "calls wait for the reset", wait)  # fmt: skip
        return Deferred("Codat's daily quota is spent: calls wait for its reset", wait)

    async def _seed(self, conn: AsyncConnection, company_id: str) -> None:
        rows = [{"key": codat_budget_key(company_id), "slot": n, "holder": None, "expires_at": 0.0}
                for n in range(self.company_slots)]  # fmt: skip
        insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        await conn.execute(insert(codat_slots).values(rows).on_conflict_do_nothing())

    async def _company_wait(self, company_id: str | None) -> float:
        if company_id is None:
            return 0.0
        async with reader(self.engine).connect() as conn:
            until = await conn.scalar(
                sa.select(codat_company_waits.c.not_before)
                .where(codat_company_waits.c.key == codat_budget_key(company_id))
            )
        return max(0.0, (until or 0.0) - self.clock.now())

    async def release(self, lease: Lease, response: httpx.Response | None) -> None:
        """The slot is free again; what Codat's answer said about the quota and waits is recorded."""
        try:
            spent = await self._release(lease, response)
        except (SQLAlchemyError, OSError) as exc:
            # Codat answered: losing that answer to our storage would only repeat the call. The slot's
            # lease frees it in time; the next answer brings the quota up to date.
            log.warning("codat_budget_release_failed", error=type(exc).__name__, company_id=lease.company_id)
            return
        if spent is not None:
            await self._tell_reached(*spent)

    async def _release(self, lease: Lease, response: httpx.Response | None) -> tuple[int | None, float] | None:
        now = self.clock.now()
        spent: tuple[int | None, float] | None = None
        # The quota row first, then the slot: the order `acquire` takes them in, so two never deadlock.
        async with bookkeeper(self.engine).begin() as conn:
            told = False
            if response is not None:
                told, spent = await self._observe(conn, response, lease, now)
            if not told:
                await conn.execute(_PROBE_OVER)
            if lease.slot is not None:
                await conn.execute(
                    codat_slots.update()
                    .where(codat_slots.c.key == codat_budget_key(lease.company_id or ""),
                           codat_slots.c.slot == lease.slot, codat_slots.c.holder == lease.holder)
                    .values(holder=None, expires_at=0.0)
                )  # fmt: skip
            if response is not None and response.status_code == 429 and lease.company_id is not None:
                wait = parse_retry_after(response.headers.get("Retry-After"), now)
                await _hold_company(conn, lease.company_id, now + later_s(429, wait))
        return spent

    async def _observe(
        self, conn: AsyncConnection, response: httpx.Response, lease: Lease, now: float
    ) -> tuple[bool, tuple[int | None, float] | None]:
        """(whether the answer told the quota, (limit, reset) when it is spent)."""
        remaining = _int(response.headers.get("X-Rate-Limit-Remaining"))
        if remaining is None:
            return False, None
        reset = parse_reset(response.headers.get("X-Rate-Limit-Reset")) or next_midnight(now)
        limit = _int(response.headers.get("X-Rate-Limit-Limit"))
        params = {"remaining": remaining, "reset": reset, "limit": limit, "now": now}
        row = (await conn.execute(_OBSERVE_SAME, params)).first()
        if row is None:
            mine = {"key": codat_budget_key(lease.company_id or ""), "slot": -1 if lease.slot is None else lease.slot,
                    "holder": lease.holder}  # fmt: skip
            row = (await conn.execute(_OBSERVE_NEW, params | mine)).first()
        if row is None or row.remaining is None:
            return True, None
        metrics.CODAT_QUOTA_REMAINING.set(row.remaining)
        return True, ((row.daily_limit, row.reset_at) if row.remaining <= 0 and row.reset_at > now else None)

    async def _tell_reached(self, limit: int | None, reset_at: float) -> None:
        log.warning("codat_quota_spent", daily_limit=limit, reset_at=reset_at)
        if self.on_reached is not None:
            await self.on_reached(limit, reset_at)

    async def quota(self) -> QuotaView:
        async with reader(self.engine).connect() as conn:
            return await self._quota_in(conn)

    async def _quota_in(self, conn: AsyncConnection) -> QuotaView:
        row = (await conn.execute(sa.select(codat_quota).where(codat_quota.c.id == QUOTA_ROW))).first()
        if row is None:
            return QuotaView(None, None, None)
        return QuotaView(row.daily_limit, row.remaining, row.reset_at, row.routine_after)


async def _hold_company(conn: AsyncConnection, company_id: str, until: float) -> None:
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    statement = insert(codat_company_waits).values(key=codat_budget_key(company_id), not_before=until)
    later = sa.func.max if conn.dialect.name == "sqlite" else sa.func.greatest  # never shortens a wait
    await conn.execute(statement.on_conflict_do_update(
        index_elements=["key"],
        set_={"not_before": later(codat_company_waits.c.not_before, statement.excluded.not_before)},
    ))


async def record_event(conn: AsyncConnection, *, reached: bool, limit: int | None, remaining: int | None,
                       reset_at: float | None, at: float, now: float) -> float | None:  # fmt: skip
    """`client.rateLimit.reached` / `.reset`, generated by Codat `at`; returns the reset time recorded, or
    None when the budget already knows something newer (a later window, or news since `at`).

    Reached: the quota is spent until `expiryDate`. Reset: a fresh quota (`quotaRemaining`, else the
    whole `dailyQuota`) until `expiryDate`; what we knew of the spent window is forgotten.
    """
    reset = reset_at if reset_at is not None else next_midnight(now)
    values: dict[str, object] = {"reset_at": reset, "updated_at": at}
    values["remaining"] = 0 if reached else (remaining if remaining is not None else limit)
    if limit is not None:
        values["daily_limit"] = limit
    q = codat_quota.c
    newest = sa.or_(q.reset_at.is_(None), q.reset_at < reset, q.updated_at.is_(None), q.updated_at <= at)
    result = await conn.execute(codat_quota.update().where(q.id == QUOTA_ROW, newest).values(**values))
    return reset if result.rowcount else None


async def quota_gauge(engine: AsyncEngine) -> int | None:
    """The quota remaining as the budget knows it (None: not known yet)."""
    async with reader(engine).connect() as conn:
        value = await conn.scalar(sa.select(codat_quota.c.remaining).where(codat_quota.c.id == QUOTA_ROW))
    return int(value) if value is not None else None


# -- purge (service/purge.py): a purged company's share of the budget goes with it -------------------------

_COMPANY_TABLES = {"codat_slots": codat_slots, "codat_company_waits": codat_company_waits}


async def count_company(conn: AsyncConnection, table: str, company_id: str) -> int:
    """Rows of `table` (`codat_slots` or `codat_company_waits`) that are the company's share."""
    rows = _COMPANY_TABLES[table]
    query = sa.select(sa.func.count()).select_from(rows).where(rows.c.key == codat_budget_key(company_id))
    return int(await conn.scalar(query) or 0)


async def forget_company(conn: AsyncConnection, table: str, company_id: str) -> int:
    """Delete the company's rows of `table`; returns how many. A call still holding a slot releases nothing then:
    its release updates no row, and the next acquire, in any process, makes the slots again."""
    rows = _COMPANY_TABLES[table]
    return int((await conn.execute(rows.delete().where(rows.c.key == codat_budget_key(company_id)))).rowcount)
