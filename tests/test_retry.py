"""The retry policy as a table: attempt, error and jitter in, run-at (or dead) out."""

from __future__ import annotations

import random

import pytest

from service.errors import GiveUp, RetryLater
from service.retry import RetryPolicy

NOW = 1_000.0


class FixedRng:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


POLICY = RetryPolicy(base_s=2.0, cap_s=60.0, max_attempts=5)


@pytest.mark.parametrize(
    ("attempt", "error", "jitter", "expected"),
    [
        (1, ValueError("x"), 0.5, NOW + 1.0),  # window 2 s
        (2, ValueError("x"), 0.5, NOW + 2.0),  # window 4 s
        (3, ValueError("x"), 1.0, NOW + 8.0),  # top of an 8 s window
        (4, ValueError("x"), 0.0, NOW + 0.0),  # full jitter reaches down to zero
        (1, RetryLater(after_s=30), 0.1, NOW + 30.0),  # the error's own wait is a floor
        (3, RetryLater(after_s=1), 0.5, NOW + 4.0),  # ...but never shortens the backoff
        (1, GiveUp("no"), 0.5, None),  # GiveUp is dead at once
        (5, ValueError("x"), 0.5, None),  # the last attempt failed: dead
        (9, ValueError("x"), 0.5, None),  # beyond the last (a lease lost again): dead
    ],
)
def test_decide_table(attempt: int, error: Exception, jitter: float, expected: float | None) -> None:
    """Each row: the policy's decision for one failure."""
    assert POLICY.decide(attempt, error, NOW, FixedRng(jitter)) == expected


@pytest.mark.parametrize(("age_s", "dead"), [(0.0, False), (3_599.0, False), (3_600.0, True), (90_000.0, True)])
def test_an_age_limit_ends_a_job_whatever_its_attempts(age_s: float, dead: bool) -> None:
    """With `give_up_after_s`, a job queued that long ago is dead at its next failure, attempts left or not."""
    policy = RetryPolicy(base_s=1.0, cap_s=60.0, max_attempts=1_000_000, give_up_after_s=3_600.0)
    decision = policy.decide(3, ValueError("x"), NOW + age_s, FixedRng(0.5), queued_at=NOW)
    assert (decision is None) == dead


def test_backoff_is_capped() -> None:
    """The window never exceeds cap_s, however many attempts a generous policy allows."""
    policy = RetryPolicy(base_s=1.0, cap_s=60.0, max_attempts=10_000)
    assert policy.decide(9_000, ValueError("x"), NOW, FixedRng(0.999)) == pytest.approx(NOW + 59.94)


def test_jitter_stays_within_the_window() -> None:
    """With a real generator every delay lies in [0, window)."""
    rng = random.Random(7)
    delays = [POLICY.decide(3, ValueError("x"), NOW, rng) for _ in range(1_000)]
    assert all(d is not None and NOW <= d < NOW + 8.0 for d in delays)


def test_gives_up_predicts_decide() -> None:
    """`gives_up` is exactly the None case of `decide`, so callers may ask before failing."""
    for attempt in range(1, 8):
        for error in (ValueError("x"), GiveUp("no"), RetryLater()):
            dead = POLICY.decide(attempt, error, NOW, FixedRng(0.5)) is None
            assert POLICY.gives_up(attempt, error) == dead
