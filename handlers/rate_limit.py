"""`client.rateLimit.reached` / `client.rateLimit.reset` (schema ClientRateLimitWebhook): Codat's daily quota.

Reached: every process's Codat calls wait for the reset (the shared budget, service/budget.py) and staff
are told once per quota window. Reset: calls go again, and the jobs that were waiting on the quota run now
rather than at the reset time they were given. An event older than what the budget already knows (a
reached arriving after the reset that followed it) changes nothing.
"""

from __future__ import annotations

from service import budget, queue
from service.db import writer
from service.notifications import rate_limit_reached
from service.types import Alert, Context, Outcome

REACHED = "client.ratelimit.reached"
RESET = "client.ratelimit.reset"


async def on_rate_limit(alert: Alert, ctx: Context) -> Outcome:
    event = alert.type.strip().lower()
    if alert.rate_limit is None or event not in (REACHED, RESET):
        return Outcome.IGNORED
    quota = alert.rate_limit
    now = ctx.clock.now()
    reached = event == REACHED
    async with writer(ctx.store).begin() as conn:
        reset_at = await budget.record_event(
            conn, reached=reached, limit=quota.daily_quota, remaining=quota.quota_remaining,
            reset_at=quota.expires_at, at=alert.generated_at if alert.generated_at is not None else now, now=now,
        )  # fmt: skip
        if reset_at is None:
            ctx.log.info("rate_limit_event_stale", event_type=alert.type)
            return Outcome.DONE
        resumed = 0 if reached else await queue.resume_deferred(conn, now)
    if reached:
        await ctx.notifier.notify(rate_limit_reached(quota.daily_quota, reset_at))
    ctx.log.info("rate_limit_event", event_type=alert.type, reset_at=reset_at, resumed_jobs=resumed)
    return Outcome.DONE
