"""When a failed Codat call is tried again: a pure policy, and how a response asks for it."""

from __future__ import annotations

import email.utils
from dataclasses import dataclass

import httpx

RETRYABLE_STATUSES = frozenset({408, 429})  # plus every 5xx, as Codat's SDKs do


@dataclass(frozen=True)
class CodatRetryPolicy:
    """When to try a failed call again. Pure: same inputs, same answer (`rand` carries the jitter)."""

    max_attempts: int = 5
    initial_s: float = 0.5
    factor: float = 1.5
    max_interval_s: float = 60.0
    # Codat's SDKs keep going for an hour; a job holding a worker that long starves the others, so we
    # give up sooner and let the job queue reschedule (RELAY_MAX_ATTEMPTS).
    budget_s: float = 60.0
    jitter: float = 0.25  # ± fraction of the backoff, so that workers hit by one outage spread out

    def delay(
        self, attempt: int, retry_after: float | None = None, elapsed_s: float = 0.0, rand: float = 0.5
    ) -> float | None:
        """Seconds to wait after failed attempt number `attempt` (from 1), or None to give up.

        `retry_after` (Codat's header) wins over the backoff and is honoured exactly; `rand` in
        [0, 1) picks the jitter (0.5 = none); `elapsed_s` is time spent on this call so far.
        """
        if attempt >= self.max_attempts:
            return None
        if retry_after is not None:
            wait = max(retry_after, 0.0)
        else:
            backoff = min(self.initial_s * self.factor ** (attempt - 1), self.max_interval_s)
            wait = backoff * (1 + self.jitter * (2 * rand - 1))
        if elapsed_s + wait > self.budget_s:
            return None
        return wait


def retryable(response: httpx.Response, attempt: int, method: str) -> bool:
    status = response.status_code
    if status in RETRYABLE_STATUSES or status >= 500:
        return True
    # 409 on a POST: an earlier attempt under the same Idempotency-Key (this call's, or the previous run
    # of the same job's) is still in flight; once it finishes Codat replays its answer, so we wait.
    return status == 409 and method == "POST"


# Answers Codat does not treat as the end of a keyed attempt: 409 (that key is still in flight), 429 (the
# key is released; retry it after Retry-After) and 408 (the request timed out before Codat answered it).
KEY_KEPT_STATUSES = frozenset({408, 409, 429})


def attempt_over(response: httpx.Response) -> bool:
    """Whether Codat's answer ends a keyed attempt: it caches every answer but these for 90 minutes
    (docs/using-the-api/write-data/idempotency.md), so the same key would only replay it; the next
    attempt needs a new key. No answer at all (a timeout, a reset) keeps the key."""
    return response.status_code >= 400 and response.status_code not in KEY_KEPT_STATUSES


def retry_after_s(outcome: httpx.Response | httpx.TransportError, now: float) -> float | None:
    if not isinstance(outcome, httpx.Response):
        return None
    value = outcome.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:  # the HTTP-date form
        return max(email.utils.parsedate_to_datetime(value).timestamp() - now, 0.0)
    except (TypeError, ValueError):
        return None
