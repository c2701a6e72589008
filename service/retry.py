"""Retry policy: exponential backoff with full jitter. Pure; the worker only applies its decisions.

Which policy each job kind gets, built from settings, is `service.policies`'s.
"""

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
    give_up_after_s: float | None = None  # also dead once this long has passed since the job was queued

    def gives_up(self, attempt: int, error: BaseException, age_s: float = 0.0) -> bool:
        """True when the failure of `attempt` (1-based), `age_s` after the job was queued, ends the job."""
        if isinstance(error, GiveUp) or attempt >= self.max_attempts:
            return True
        return self.give_up_after_s is not None and age_s >= self.give_up_after_s

    def decide(
        self, attempt: int, error: BaseException, now: float, rng: Rng, *, queued_at: float | None = None
    ) -> float | None:
        """When to run again after `attempt` failed with `error`, or None when the job is dead."""
        if self.gives_up(attempt, error, now - queued_at if queued_at is not None else 0.0):
            return None
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(attempt - 1, MAX_EXPONENT))
        # Full jitter (AWS "Exponential Backoff and Jitter"): spreads a burst of failures over the
        # whole window instead of re-synchronising them at its end.
        delay = ceiling * rng.random()
        if isinstance(error, RetryLater):
            # The failing side said how long it needs; retrying sooner only fails again.
            delay = max(delay, float(error.after_s))
        return now + delay
