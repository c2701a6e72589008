"""Issue 13, idempotency by Codat's rules: an answered attempt is over (next one, new key); no answer,
409 or 429 keep the key. Codat caches every answer to a keyed write but a 429 for 90 minutes
(docs/using-the-api/write-data/idempotency.md); the sandbox does the same.
"""

from __future__ import annotations

from itertools import count

import sqlalchemy as sa

from service.db import pushes
from service.errors import RetryLater
from service.retry import RetryPolicy
from tests import test_push_correctness
from tests.test_push_correctness import BAD, CO, World, order

world = test_push_correctness.world  # the relay and the sandbox on one fixed clock, on both backends

MINUTE_S = 60.0


class Longest:
    """The worker's jitter at its longest: every retry waits as long as the policy ever lets it."""

    def random(self) -> float:
        return 0.999


async def push_until_sent(w: World, policy: RetryPolicy, first: BaseException | None = None) -> float:
    """Run the push job as the worker would, retried by its RetryPolicy, until a run ends without error;
    returns how long that took on the clock (from before the failure `first`, if given)."""
    started = w.clock.now()
    error = first
    for attempt in count(1):
        if error is not None:
            run_at = policy.decide(attempt, error, w.clock.now(), Longest())
            assert run_at is not None, f"the job died after {attempt} attempts: {error!r}"
            w.clock.set(run_at)
            if w.clock.now() - started > 10 * MINUTE_S:
                raise AssertionError(f"still failing after 10 minutes: {error!r}")
        try:
            await w.push()
            return w.clock.now() - started
        except Exception as exc:  # the worker's own catch: a failure is data for the policy
            error = exc
    raise AssertionError("unreachable")


async def fail_first_push(w: World, fault: dict[str, object]) -> BaseException:
    await w.sandbox.put("/_sandbox/faults/push", json=fault)
    try:
        await w.push()
    except Exception as exc:
        return exc
    finally:
        await w.sandbox.delete("/_sandbox/faults")
    raise AssertionError("the first push was not refused")


async def keys(w: World) -> list[tuple[str, str | None]]:
    async with w.engine.connect() as conn:
        rows = await conn.execute(sa.select(pushes.c.id, pushes.c.idempotency_key).where(pushes.c.company_id == CO))
        return [(row.id, row.idempotency_key) for row in rows]


async def test_a_push_first_answered_500_reaches_codat_within_a_minute_as_one_dataset(world: World) -> None:
    """Codat caches the 500 under the push's key: the next attempt, under a new key recorded first, gets
    the dataset — one dataset, within a minute of the 500 (the old relay replayed the 500 for 90 minutes)."""
    w = world
    await w.put([order("a"), order("b")])
    error = await fail_first_push(w, {"errorRate": 1.0, "errorStatuses": [500]})
    took = await push_until_sent(w, RetryPolicy(), first=error)
    assert took < MINUTE_S
    [sent] = await w.pushes()
    assert sorted(sent["recordIds"]) == ["a", "b"]
    [(push_id, key)] = await keys(w)
    assert sent["idempotencyKey"] == key != push_id  # the second attempt's key, recorded before it was sent
    await w.settle()
    assert await w.states() == {"a": "accepted", "b": "accepted"}
    assert await w.held() == {"a": order("a"), "b": order("b")}
    assert await w.breaches(*BAD) == []


async def test_a_push_answered_429_is_retried_after_retry_after_with_its_key(world: World) -> None:
    """A 429 is the one answer Codat does not cache: the key is released and the same push goes again,
    under the same key, once Retry-After (here 120 s, beyond the client's own budget) has passed."""
    w = world
    await w.put([order("a")])
    error = await fail_first_push(w, {"burst429": 1, "retryAfterS": 120})
    assert isinstance(error, RetryLater) and error.after_s == 120
    took = await push_until_sent(w, RetryPolicy(), first=error)
    assert 120 <= took < 120 + MINUTE_S
    [sent] = await w.pushes()
    [(push_id, key)] = await keys(w)
    assert sent["idempotencyKey"] == key == push_id
    await w.settle()
    assert await w.states() == {"a": "accepted"}
