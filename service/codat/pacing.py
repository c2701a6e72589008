"""Pacing Codat calls to Codat's per-IP rate limit (FACTS §6: 1,000 requests a minute).

Going over earns a 429 and a `Retry-After`, and the job that met it waits out its backoff while its
company's later alerts queue behind it: under a storm the relay then drains in bursts and pauses. Paced,
each request waits for its slot instead (a generic cell rate: one slot every 60/rate seconds, with a
burst of a few), so a backlog drains at the limit's own rate and Codat never has to refuse us.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

Monotonic = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Pacer:
    """`await pacer.wait()` before each request; `per_minute=0` paces nothing.

    Each caller reserves its slot at once and sleeps until it comes, so waiters go in arrival order and
    none of them holds a lock while it sleeps. A caller cancelled while waiting leaves its slot unused.
    """

    def __init__(
        self, per_minute: int, burst: int = 1, *, monotonic: Monotonic = time.monotonic, sleep: Sleep = asyncio.sleep
    ) -> None:
        self._interval = 60.0 / per_minute if per_minute > 0 else 0.0
        self._tolerance = self._interval * max(burst - 1, 0)
        self._monotonic = monotonic
        self._sleep = sleep
        self._next = 0.0  # when the slot after the last one reserved falls due (the "theoretical arrival time")

    @property
    def per_minute(self) -> float:
        return 60.0 / self._interval if self._interval else 0.0

    async def wait(self) -> float:
        """Wait for this request's slot; returns how long it waited (seconds)."""
        if not self._interval:
            return 0.0
        now = self._monotonic()
        due = max(self._next, now)
        self._next = due + self._interval
        delay = due - self._tolerance - now
        if delay <= 0:
            return 0.0
        await self._sleep(delay)  # a timer for this request's slot, not a wait for work
        return delay
