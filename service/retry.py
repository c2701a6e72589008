"""Retry policy: exponential backoff with full jitter. Pure; the worker only applies its decisions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from service.errors import GiveUp, RetryLater

# 2**62 seconds outlives any cap; a larger exponent would only overflow the float.
MAX_EXPONENT = 62


class Rng(Protocol):
    def random(self) -> float:
        """A float in [0, 1)."""
        ...


@dataclass(frozen=True)
class RetryPolicy:
    base_s: float = 1.0
    cap_s: float = 300.0
    max_attempts: int = 10

    def gives_up(self, attempt: int, error: BaseException) -> bool:
        """True when the failure of `attempt` (1-based) ends the job: it becomes dead."""
        return isinstance(error, GiveUp) or attempt >= self.max_attempts

    def decide(self, attempt: int, error: BaseException, now: float, rng: Rng) -> float | None:
        """When to run again after `attempt` failed with `error`, or None when the job is dead."""
        if self.gives_up(attempt, error):
            return None
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(attempt - 1, MAX_EXPONENT))
        # Full jitter (AWS "Exponential Backoff and Jitter"): spreads a burst of failures over the
        # whole window instead of re-synchronising them at its end.
        delay = ceiling * rng.random()
        if isinstance(error, RetryLater):
            # The failing side said how long it needs; retrying sooner only fails again.
            delay = max(delay, float(error.after_s))
        return now + delay
