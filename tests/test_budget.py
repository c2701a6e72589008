"""Codat's rate-limit budget shared through the database (service/budget.py), on both backends.

Two `SharedBudget`s on one database stand for two processes: what one takes, the other sees. Codat's
limits are those of docs/using-the-api/rate-limits.md (FACTS §6): 10 concurrent requests per company,
a daily quota reset at 00:00 UTC told in `X-Rate-Limit-*`, 429 + `Retry-After` past either.
"""

from __future__ import annotations

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service import budget as budget_module
from service import queue
from service.budget import SharedBudget, next_midnight, parse_reset, record_event
from service.clock import FixedClock, iso
from service.codat.budget import Priority
from service.db import codat_quota, writer
from service.errors import Deferred
from tests.queue_helpers import job_rows

T0 = 1_750_000_000.0
RESET = next_midnight(T0)


def make_budget(engine: AsyncEngine, clock: FixedClock, **overrides: object) -> SharedBudget:
    options: dict[str, object] = {"company_slots": 10, "reserve_percent": 10, "lease_s": 60.0, "slot_wait_s": 0.2}
    options.update(overrides)
    return SharedBudget(engine, clock, **options)  # type: ignore[arg-type]


def answer(status: int = 200, *, remaining: int | None = None, limit: int = 2000, retry_after: str | None = None,
           reset: float = RESET) -> httpx.Response:  # fmt: skip
    headers: dict[str, str] = {}
    if remaining is not None:
        headers = {"X-Rate-Limit-Limit": str(limit), "X-Rate-Limit-Remaining": str(remaining),
                   "X-Rate-Limit-Reset": iso(reset) or ""}  # fmt: skip
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    return httpx.Response(status, headers=headers)


async def known_quota(engine: AsyncEngine, remaining: int = 1_000, now: float = T0) -> None:
    """The quota as a `client.rateLimit.reset` tells it, so that calls need no probe first."""
    async with writer(engine).begin() as conn:
        await record_event(conn, reached=False, limit=2000, remaining=remaining, reset_at=RESET, at=now, now=now)


async def quota_row(engine: AsyncEngine) -> sa.Row[tuple[object, ...]]:
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(codat_quota))).one()
    return row


async def test_ten_requests_per_company_across_processes(engine: AsyncEngine) -> None:
    """Two processes together hold at most 10 slots of one company; the 11th call is deferred, another
    company is unaffected, and a slot given back is taken again."""
    clock = FixedClock(T0)
    await known_quota(engine)
    one, two = make_budget(engine, clock), make_budget(engine, clock)
    leases = [await (one if n % 2 else two).acquire("co-a", Priority.PRIORITY) for n in range(10)]
    assert sorted(lease.slot for lease in leases) == list(range(10))  # type: ignore[type-var]
    with pytest.raises(Deferred) as refused:
        await one.acquire("co-a", Priority.PRIORITY)
    assert refused.value.after_s == budget_module.BUSY_DEFER_S
    other = await two.acquire("co-b", Priority.PRIORITY)
    assert other.slot == 0
    await two.release(leases[3], answer())
    again = await one.acquire("co-a", Priority.PRIORITY)
    assert again.slot == leases[3].slot


async def test_a_purged_company_gets_its_slots_back_in_a_process_that_had_used_them(engine: AsyncEngine) -> None:
    """A purge forgets the company's slots (service/purge.py); the same process calling for that company
    again makes them anew, rather than finding none and deferring every call for it until it restarts (seen
    in the full schemathesis run: the sync endpoints of a purged company answered 503 for the rest of the run)."""
    clock = FixedClock(T0)
    await known_quota(engine)
    process = make_budget(engine, clock)
    await process.release(await process.acquire("co-a", Priority.PRIORITY), answer())
    async with writer(engine).begin() as conn:
        assert await budget_module.forget_company(conn, "codat_slots", "co-a") == 10
    lease = await process.acquire("co-a", Priority.PRIORITY)
    assert lease.slot == 0
    held = [lease] + [await process.acquire("co-a", Priority.PRIORITY) for _ in range(9)]
    with pytest.raises(Deferred):  # the ten made anew are still the company's ten, no more
        await process.acquire("co-a", Priority.PRIORITY)
    assert sorted(h.slot for h in held) == list(range(10))  # type: ignore[type-var]


async def test_a_crashed_process_frees_its_slots_when_their_leases_expire(engine: AsyncEngine) -> None:
    """Slots held by a process that died (never released) are free once their lease has expired."""
    clock = FixedClock(T0)
    await known_quota(engine)
    dead, alive = make_budget(engine, clock, company_slots=2), make_budget(engine, clock, company_slots=2)
    await dead.acquire("co-a", Priority.PRIORITY)
    await dead.acquire("co-a", Priority.PRIORITY)
    with pytest.raises(Deferred):
        await alive.acquire("co-a", Priority.PRIORITY)
    clock.advance(61)
    assert (await alive.acquire("co-a", Priority.PRIORITY)).slot == 0


async def test_a_call_waiting_for_a_slot_takes_the_one_given_back(engine: AsyncEngine) -> None:
    """Within its wait, a call whose company is busy gets the slot another process gives back."""
    import asyncio

    clock = FixedClock(T0)
    one, two = make_budget(engine, clock, company_slots=1, slot_wait_s=30.0), make_budget(engine, clock)
    held = await two.acquire("co-a", Priority.PRIORITY)
    waiting = asyncio.create_task(one.acquire("co-a", Priority.PRIORITY))
    await asyncio.sleep(0)
    assert not waiting.done()
    await two.release(held, answer())
    assert (await asyncio.wait_for(waiting, 10)).slot == 0


async def test_the_quota_counts_down_across_processes_and_stops_at_zero(engine: AsyncEngine) -> None:
    """Codat's `X-Rate-Limit-Remaining` is recorded; every request any process sends counts it down; at 0 every
    call is deferred until the reset, and staff are told (once per process noticing; the notifier dedupes)."""
    clock = FixedClock(T0)
    told: list[tuple[int | None, float]] = []

    async def tell(limit: int | None, reset_at: float) -> None:
        told.append((limit, reset_at))

    one, two = make_budget(engine, clock, on_reached=tell), make_budget(engine, clock)
    first = await one.acquire("co-a", Priority.PRIORITY)
    await one.release(first, answer(remaining=3))
    assert (await quota_row(engine)).remaining == 3
    for b in (one, two, one):
        await b.release(await b.acquire("co-b", Priority.PRIORITY), None)
    assert (await quota_row(engine)).remaining == 0
    with pytest.raises(Deferred) as refused:
        await two.acquire("co-c", Priority.PRIORITY)
    assert refused.value.after_s == 60  # looks again within `recheck_s` (the reset event brings it sooner)
    assert "spent" in str(refused.value)
    # The last answer Codat gives says 0 too: that is when staff hear of it.
    await one.release(budget_module.Lease(None, None, one.holder), answer(remaining=0))
    assert told == [(2000, RESET)]
    clock.set(RESET + 1)  # the quota reset at midnight: what we knew says nothing any more
    await two.acquire("co-c", Priority.PRIORITY)


async def test_routine_calls_stop_at_the_reserve(engine: AsyncEngine) -> None:
    """Below the reserve (10% of the daily limit), routine polls are deferred while pushes still go."""
    clock = FixedClock(T0)
    b = make_budget(engine, clock)
    await b.release(await b.acquire("co-a", Priority.PRIORITY), answer(remaining=201, limit=2000))
    await b.release(await b.acquire("co-a", Priority.ROUTINE), None)  # 201 → 200: the reserve itself
    with pytest.raises(Deferred) as refused:
        await b.acquire("co-a", Priority.ROUTINE)
    assert "reserve" in str(refused.value)
    await b.acquire("co-a", Priority.PRIORITY)
    assert (await quota_row(engine)).remaining == 199


async def test_an_answer_about_an_older_window_changes_nothing(engine: AsyncEngine) -> None:
    """The same window only counts down; a later window replaces it; an earlier one is ignored."""
    clock = FixedClock(T0)
    b = make_budget(engine, clock)
    lease = budget_module.Lease(None, None, b.holder)
    await b.release(lease, answer(remaining=50))
    await b.release(lease, answer(remaining=70))  # answered before the 50 arrived: stale
    assert (await quota_row(engine)).remaining == 50
    await b.release(lease, answer(remaining=1999, reset=RESET + 86_400))
    await b.release(lease, answer(remaining=0))
    row = await quota_row(engine)
    assert (row.remaining, row.reset_at) == (1999, RESET + 86_400)


async def test_a_429_holds_that_companys_calls_in_every_process(engine: AsyncEngine) -> None:
    """Codat's 429 with Retry-After 30 for one company defers every process's calls for it by that long;
    other companies go on."""
    clock = FixedClock(T0)
    await known_quota(engine)
    one, two = make_budget(engine, clock), make_budget(engine, clock)
    await one.release(await one.acquire("co-a", Priority.PRIORITY), answer(429, retry_after="30"))
    with pytest.raises(Deferred) as refused:
        await two.acquire("co-a", Priority.PRIORITY)
    assert refused.value.after_s == 30
    await two.acquire("co-b", Priority.PRIORITY)
    clock.advance(31)
    await two.acquire("co-a", Priority.PRIORITY)


async def test_rate_limit_events_pause_and_resume(engine: AsyncEngine) -> None:
    """`client.rateLimit.reached` makes the quota spent until its expiry; `reset` gives it back and brings
    forward the jobs deferred on it; a `reached` older than that reset changes nothing."""
    clock = FixedClock(T0)
    b = make_budget(engine, clock)
    async with writer(engine).begin() as conn:
        assert await record_event(conn, reached=True, limit=2000, remaining=0, reset_at=RESET, at=T0, now=T0) == RESET
    with pytest.raises(Deferred):
        await b.acquire("co-a", Priority.PRIORITY)
    job_id = await queue.enqueue(engine, "push", {}, now=T0)
    claimed = await queue.claim(engine, "w", 1, T0, 30.0)
    assert await queue.defer(engine, claimed[0], RESET, "quota spent", T0)
    async with writer(engine).begin() as conn:
        await record_event(conn, reached=False, limit=2000, remaining=2000, reset_at=RESET, at=T0 + 5, now=T0 + 5)
        assert await queue.resume_deferred(conn, T0 + 5) == 1
        assert await record_event(conn, reached=True, limit=2000, remaining=0, reset_at=RESET, at=T0 + 1,
                                  now=T0 + 6) is None  # fmt: skip
    [row] = await job_rows(engine, id=job_id)
    assert (row.status, row.attempts, row.run_at) == ("waiting", 0, T0 + 5)
    assert row.last_error.startswith(queue.DEFERRED_PREFIX)
    assert (await b.acquire("co-a", Priority.PRIORITY)).slot == 0


def test_the_reset_header_is_a_date() -> None:
    """`X-Rate-Limit-Reset` is "the date when the quota will be reset": ISO 8601 or an HTTP date."""
    assert parse_reset("2026-03-03T00:00:00Z") == parse_reset("Tue, 03 Mar 2026 00:00:00 GMT")
    assert parse_reset("garbage") is None
    assert parse_reset(None) is None


async def test_a_deferred_job_waits_without_spending_an_attempt(engine: AsyncEngine) -> None:
    """A job told to wait by the budget (`Deferred`) goes back to waiting for `after_s` with its attempt given
    back, however many times it is told: it never dies of waiting."""
    from service.clock import SystemClock
    from service.retry import RetryPolicy
    from service.worker import Worker
    from tests.queue_helpers import RecordingNotifier, eventually, running

    runs: list[int] = []

    async def told_to_wait(job: queue.Job, attempt: int) -> None:
        runs.append(attempt)
        if len(runs) < 4:
            raise Deferred("quota spent", 0)

    worker = Worker(engine, {"push": told_to_wait}, concurrency=1, lease_s=30.0, clock=SystemClock(),
                    notifier=RecordingNotifier(), retry=RetryPolicy(base_s=0, cap_s=0, max_attempts=2),
                    poll_interval_s=0.05)  # fmt: skip
    job_id = await queue.enqueue(engine, "push", {}, now=SystemClock().now())

    async def finished() -> bool:
        [row] = await job_rows(engine, id=job_id)
        return bool(row.status == "done")

    async with running(worker):
        await eventually(finished)
    assert runs == [1, 1, 1, 1]


async def test_while_the_quota_is_unknown_one_request_goes_alone(engine: AsyncEngine) -> None:
    """Before Codat has told the quota (or once its window has passed), one request goes alone as a probe:
    others wait for its answer, so that no request is ever on its way uncounted; then they all go."""
    clock = FixedClock(T0)
    one, two = make_budget(engine, clock), make_budget(engine, clock)
    probe = await one.acquire("co-a", Priority.PRIORITY)
    with pytest.raises(Deferred):
        await two.acquire("co-b", Priority.PRIORITY)
    await one.release(probe, answer(remaining=100))
    [await two.acquire(c, Priority.PRIORITY) for c in ("co-a", "co-b")]
    assert (await quota_row(engine)).remaining == 98
    clock.set(RESET + 1)  # a new day: unknown again until the next answer
    probe = await two.acquire("co-c", Priority.PRIORITY)
    with pytest.raises(Deferred):
        await one.acquire("co-d", Priority.PRIORITY)
    await two.release(probe, None)  # no answer: the next request probes again
    await one.acquire("co-d", Priority.PRIORITY)


async def test_a_probe_answered_between_the_take_and_the_read_is_taken_again_not_deferred(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The take finds the probe in flight; the probe's answer commits before the acquire reads the quota
    (PostgreSQL's READ COMMITTED sees it; a full-suite run met it): the quota has room, so the call is
    taken on the next try, not deferred as "spent" (which held a push for a minute)."""
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite's acquire holds the write lock (BEGIN IMMEDIATE): no answer commits in between")
    clock = FixedClock(T0)
    one, two = make_budget(engine, clock), make_budget(engine, clock, slot_wait_s=5.0)
    probe = await one.acquire("co-a", Priority.PRIORITY)
    read_quota = SharedBudget._quota_in

    async def answered_meanwhile(self: SharedBudget, conn: object) -> object:
        if probe.company_id is not None and not answered:
            answered.append(True)
            await one.release(probe, answer(remaining=100))  # commits on its own connection
        return await read_quota(self, conn)  # type: ignore[arg-type]

    answered: list[bool] = []
    monkeypatch.setattr(SharedBudget, "_quota_in", answered_meanwhile)
    await two.acquire("co-b", Priority.PRIORITY)
    assert answered == [True]
    assert (await quota_row(engine)).remaining == 99


async def test_the_first_answer_of_a_window_counts_the_requests_still_in_flight(engine: AsyncEngine) -> None:
    """A new window's first figure is taken less the other requests in flight (they may not have reached Codat)."""
    clock = FixedClock(T0)
    b = make_budget(engine, clock)
    await known_quota(engine, remaining=500, now=T0)
    first, second, third = [await b.acquire(c, Priority.PRIORITY) for c in ("co-a", "co-a", "co-b")]
    await b.release(first, answer(remaining=100, reset=RESET + 86_400))
    assert (await quota_row(engine)).remaining == 98  # `second` and `third` are still out
    await b.release(second, answer(remaining=99, reset=RESET + 86_400))
    await b.release(third, answer(remaining=98, reset=RESET + 86_400))
    assert (await quota_row(engine)).remaining == 98


async def test_routine_calls_are_spaced_out_as_the_quota_thins(engine: AsyncEngine) -> None:
    """Between the reserve (200 of 2,000) and twice it, routine calls go one every (time to reset) / (routine
    share left), across processes, so that the share lasts the day; pushes are not held back."""
    clock = FixedClock(T0)
    one, two = make_budget(engine, clock, recheck_s=60.0), make_budget(engine, clock)
    await known_quota(engine, remaining=500)
    [await one.acquire(f"co-{n}", Priority.ROUTINE) for n in range(3)]  # above twice the reserve: no spacing
    await known_quota(engine, remaining=350)
    await one.acquire("co-a", Priority.ROUTINE)  # 350 left: the next routine call in (RESET - T0) / 150 s
    with pytest.raises(Deferred) as spaced:
        await two.acquire("co-b", Priority.ROUTINE)
    assert "spaced out" in str(spaced.value) and spaced.value.after_s == 60  # looks again within recheck_s
    await two.acquire("co-b", Priority.PRIORITY)
    clock.advance((RESET - T0) / 150 + 1)
    await two.acquire("co-b", Priority.ROUTINE)
