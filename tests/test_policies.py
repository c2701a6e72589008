"""Every retry policy is built in one place from settings (service/policies.py); the worker applies them as given."""

from __future__ import annotations

from typing import Any

import pytest

from service.clock import FixedClock
from service.db import create_engine
from service.policies import poll_policy, repush_policy, retry_policies
from service.retry import RetryPolicy
from service.runtime import build_runtime
from service.worker import Worker
from tests.conftest import make_settings

DAY_S = 86_400.0
JOBS = {"base_s": 1.0, "cap_s": 300.0, "give_up_after_s": None}
NOTIFY = {"base_s": 5.0, "cap_s": 900.0, "max_attempts": 1_000_000, "give_up_after_s": 5 * DAY_S}


class FixedRng:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize(
    ("kind", "settings", "expected"),
    [
        ("alert", {}, {**JOBS, "max_attempts": 10}),  # RELAY_MAX_ATTEMPTS' default
        ("alert", {"max_attempts": 3}, {**JOBS, "max_attempts": 3}),
        ("push", {"max_attempts": 7}, {**JOBS, "max_attempts": 7}),
        ("poll_dataset", {"max_attempts": 7}, {**JOBS, "max_attempts": 7}),
        ("check_sync", {"max_attempts": 7}, {**JOBS, "max_attempts": 7}),
        ("push_sweep", {"max_attempts": 7}, {**JOBS, "max_attempts": 7}),
        ("prune_jobs", {"max_attempts": 7}, {**JOBS, "max_attempts": 7}),
        ("index_alert_texts", {"max_attempts": 7}, {**JOBS, "max_attempts": 7}),
        ("notify", {}, NOTIFY),  # 5 days, whatever RELAY_MAX_ATTEMPTS says
        ("notify", {"max_attempts": 1}, NOTIFY),
    ],
)
def test_each_job_kind_has_its_policy_from_settings(
    kind: str, settings: dict[str, Any], expected: dict[str, Any]
) -> None:
    """Each row: a job kind and settings → the policy its failures are retried by."""
    assert retry_policies(make_settings(**settings))[kind] == RetryPolicy(**expected)


@pytest.mark.parametrize(
    ("kind", "max_attempts", "attempt", "age_s", "dead"),
    [
        ("alert", 3, 2, 0.0, False),
        ("alert", 3, 3, 0.0, True),  # RELAY_MAX_ATTEMPTS=3: the third failure is the last
        ("push", 10, 9, 30 * DAY_S, False),  # no age limit
        ("push", 10, 10, 0.0, True),
        ("notify", 3, 500, 4 * DAY_S, False),  # notifications outlive RELAY_MAX_ATTEMPTS...
        ("notify", 3, 2, 5 * DAY_S, True),  # ...until 5 days have passed since they were queued
    ],
)
def test_decisions_by_kind(kind: str, max_attempts: int, attempt: int, age_s: float, dead: bool) -> None:
    """Each row: a failure of a job of `kind` at `attempt`, `age_s` after it was queued → retried or dead."""
    policy = retry_policies(make_settings(max_attempts=max_attempts))[kind]
    assert (policy.decide(attempt, ValueError("x"), 1_000.0 + age_s, FixedRng(0.5), queued_at=1_000.0) is None) is dead


def test_the_push_pipelines_schedules_come_from_their_settings() -> None:
    """Dataset polls and re-pushes are built here too, from RELAY_DATASET_POLLS and RELAY_REPUSH_*."""
    settings = make_settings(dataset_polls=4, repush_max_attempts=5, repush_backoff_seconds=12.0)
    assert poll_policy(settings).max_polls == 4
    repush = repush_policy(settings)
    assert (repush.max_attempts, repush.base_s, repush.cap_s) == (5, 12.0, 900.0)


async def test_the_runtimes_worker_applies_every_kinds_policy_as_built(database_url: str) -> None:
    """Every kind the worker runs has a policy from settings, applied unchanged (RELAY_MAX_ATTEMPTS=3 stays 3)."""
    settings = make_settings(database_url, max_attempts=3)
    engine = create_engine(settings)
    runtime = await build_runtime(settings, engine, FixedClock())
    try:
        worker = runtime.build_worker()
        policies = retry_policies(settings)
        assert worker.kinds == set(policies)
        assert all(worker.policy(kind) == policies[kind] for kind in worker.kinds)
        assert worker.policy("alert").max_attempts == 3 and worker.policy("notify").max_attempts == 1_000_000
        assert runtime.tracker.repush == repush_policy(settings) and runtime.tracker.poll == poll_policy(settings)
        instant = RetryPolicy(base_s=0.0, cap_s=0.0, max_attempts=50)  # tests: one policy for every kind, as is
        assert all(runtime.build_worker(retry=instant).policy(kind) is instant for kind in worker.kinds)
    finally:
        await runtime.close()
        await engine.dispose()


def test_a_worker_never_amends_the_policy_it_is_given() -> None:
    """The policy passed is the policy applied: its max_attempts is not replaced by any other number."""
    generous = RetryPolicy(base_s=0.05, cap_s=0.2, max_attempts=50)
    unused: Any = None  # reading a policy touches neither storage nor the dead-job notifier
    worker = Worker(unused, {"test": _nothing}, concurrency=1, lease_s=30.0, clock=FixedClock(), notifier=unused,
                    retry=generous, policies={"old": RetryPolicy(max_attempts=2)}, listen_via_pool=False)  # fmt: skip
    assert worker.policy("test") is generous and worker.policy("anything") is generous
    assert worker.policy("old").max_attempts == 2


async def _nothing(*_: object) -> None:
    return None
