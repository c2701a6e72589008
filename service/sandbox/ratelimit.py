"""Codat's rate limits (`docs/using-the-api/rate-limits.md`), as pure policies over an injected clock.

"1,000 x (1 + number of ACCs) requests per day" (an ACC is a company with an active, linked connection),
"reset at 00:00 UTC each day". Every response carries `X-Rate-Limit-Limit`, `X-Rate-Limit-Remaining` and
`X-Rate-Limit-Reset` ("the date when the quota will be reset"); once it is spent, `429` with `Retry-After`.
The docs give the reset header no format: the sandbox writes an ISO-8601 UTC instant, the form Codat's own
rate-limit events use for the same moment (`ExpiresUtc`, `expiryDate`).

"10 concurrent requests per ACC", and "Codat will return a `429` status code for all requests to the API
that are received while rate limiting is active ... The response will also include a `Retry-After` header"
(the same page): `Concurrency` answers the 11th request in flight for one company 429.

The events: `client.rateLimit.reached` "Called when your client's request count to Codat's API surpasses
the allocated quota", `client.rateLimit.reset` "Called when your client's rate limit quota is reset"
(webhooks-2024-10.yaml). *Own choice, the docs name no exact moment:* `reached` is sent with the answer that
spends the last request of the quota (`X-Rate-Limit-Remaining: 0`), so a client that stops there never meets
a 429. `reset` at every daily reset ("You can use our dedicated ClientRateLimitReset webhook event type to be
notified when the client-based limit resets", the page's tip), and when `POST /_sandbox/rate-limits/reset`
says so.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

DAY_S = 86_400
PER_COMPANY = 1_000
CONCURRENT_PER_COMPANY = 10  # "10 concurrent requests per ACC"
CONCURRENCY_RETRY_AFTER_S = 1  # the docs give no figure for this 429's Retry-After: one second (own choice)
REACHED = "client.rateLimit.reached"
RESET = "client.rateLimit.reset"


def codat_quota(active_companies: int) -> int:
    return PER_COMPANY * (1 + active_companies)


def reset_at(now: float) -> float:
    """The next 00:00 UTC after `now`."""
    return (math.floor(now / DAY_S) + 1) * DAY_S


@dataclass
class DailyQuota:
    """Requests used today; `take` spends one, or says how long until the quota resets.

    It also keeps what a test asks about it: when the quota was spent (`reached_at`), and how many requests
    arrived while it was spent (`refused`), and it lists the rate-limit events due (`events`, drained by
    the caller): `client.rateLimit.reached` when the last request is spent, `reset` once it comes back.
    """

    used: int = 0
    day: int | None = None
    reached_at: float | None = None
    refused: int = 0  # requests answered 429 while the quota was spent, since the sandbox started
    events: list[str] = field(default_factory=list)

    def _roll(self, now: float) -> None:
        today = math.floor(now / DAY_S)
        if self.day != today:
            if self.day is not None:
                self._reset()
            self.day, self.used = today, 0

    def _reset(self) -> None:
        self.events.append(RESET)
        self.used, self.reached_at = 0, None

    def roll(self, now: float) -> None:
        """Let the clock turn the day over (a `reset` is due if the quota was spent)."""
        self._roll(now)

    def reset(self, now: float) -> None:
        """The quota is whole again now (`POST /_sandbox/rate-limits/reset`), as at 00:00 UTC."""
        self._roll(now)
        self._reset()

    def take(self, now: float, limit: int) -> float | None:
        """None when the request may go ahead (and is counted); else seconds until the reset."""
        self._roll(now)
        if self.used >= limit:
            self.refused += 1
            if self.reached_at is None:  # a quota lowered below what was used: spent all the same
                self.reached_at = now
                self.events.append(REACHED)
            return reset_at(now) - now
        self.used += 1
        if self.used >= limit and self.reached_at is None:
            self.reached_at = now
            self.events.append(REACHED)
        return None

    def drain(self) -> list[str]:
        events, self.events = self.events, []
        return events

    def headers(self, now: float, limit: int) -> dict[str, str]:
        self._roll(now)
        stamp = datetime.fromtimestamp(reset_at(now), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        remaining = max(0, limit - self.used)
        return {"X-Rate-Limit-Limit": str(limit), "X-Rate-Limit-Remaining": str(remaining), "X-Rate-Limit-Reset": stamp}


@dataclass
class Concurrency:
    """Requests in flight per company; past the limit, a request is refused (429) rather than served."""

    limit: int = CONCURRENT_PER_COMPANY
    in_flight: Counter[str] = field(default_factory=Counter)
    max_seen: Counter[str] = field(default_factory=Counter)  # the most in flight at once, per company
    refused: Counter[str] = field(default_factory=Counter)  # 429s answered for being over the limit

    def enter(self, company_id: str) -> bool:
        if self.in_flight[company_id] >= self.limit:
            self.refused[company_id] += 1
            return False
        self.in_flight[company_id] += 1
        self.max_seen[company_id] = max(self.max_seen[company_id], self.in_flight[company_id])
        return True

    def leave(self, company_id: str) -> None:
        self.in_flight[company_id] -= 1
