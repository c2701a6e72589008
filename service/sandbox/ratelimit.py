"""Codat's daily request quota (`docs/using-the-api/rate-limits.md`), as a pure policy over an injected clock.

"1,000 x (1 + number of ACCs) requests per day" (an ACC is a company with an active, linked connection),
"reset at 00:00 UTC each day". Every response carries `X-Rate-Limit-Limit`, `X-Rate-Limit-Remaining` and
`X-Rate-Limit-Reset` ("the date when the quota will be reset"); once it is spent, `429` with `Retry-After`.
The docs give the reset header no format: the sandbox writes an ISO-8601 UTC instant, the form Codat's own
rate-limit events use for the same moment (`ExpiresUtc`, `expiryDate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

DAY_S = 86_400
PER_COMPANY = 1_000


def codat_quota(active_companies: int) -> int:
    return PER_COMPANY * (1 + active_companies)


def reset_at(now: float) -> float:
    """The next 00:00 UTC after `now`."""
    return (math.floor(now / DAY_S) + 1) * DAY_S


@dataclass
class DailyQuota:
    """Requests used today; `take` spends one, or says how long until the quota resets."""

    used: int = 0
    day: int | None = None

    def _roll(self, now: float) -> None:
        today = math.floor(now / DAY_S)
        if self.day != today:
            self.day, self.used = today, 0

    def take(self, now: float, limit: int) -> float | None:
        """None when the request may go ahead (and is counted); else seconds until the reset."""
        self._roll(now)
        if self.used >= limit:
            return reset_at(now) - now
        self.used += 1
        return None

    def headers(self, now: float, limit: int) -> dict[str, str]:
        self._roll(now)
        stamp = datetime.fromtimestamp(reset_at(now), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        remaining = max(0, limit - self.used)
        return {"X-Rate-Limit-Limit": str(limit), "X-Rate-Limit-Remaining": str(remaining), "X-Rate-Limit-Reset": stamp}
