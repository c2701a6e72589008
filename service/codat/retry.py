"""When a failed Codat call is tried again, and how Codat's "come back later" becomes one wait.

Two things live here, both pure: the retry policy inside one call (Codat's SDK schedule, cut short),
and the one translation of Codat's `Retry-After` — seconds or an HTTP date, missing or garbage — into
the whole seconds a caller waits (`later_s`), which `CodatRateLimited`/`CodatUnavailable` carry as the
`RetryLater.after_s` every caller (the worker, the admin API, the CLI) takes as it is.
"""

from __future__ import annotations

import email.utils
import math
from dataclasses import dataclass
from datetime import UTC

import httpx

RETRYABLE_STATUSES = frozenset({408, 429})  # plus every 5xx, as Codat's SDKs do
RATE_LIMITED_WAIT_S = 30  # a 429 that does not say how long (Codat's do; a proxy's may not)
UNAVAILABLE_WAIT_S = 5  # a 503, another 5xx, a timeout or no answer at all, that does not say
# Codat's longest honest wait is its daily quota's reset (00:00 UTC): anything longer is garbage, capped.
MAX_WAIT_S = 86_400


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


def parse_retry_after(value: str | None, now: float) -> float | None:
    """`Retry-After` in seconds from `now`: delta-seconds or an HTTP date (RFC 9110 §10.2.3).

    None when missing or unreadable (negative, NaN, infinite, neither a number nor a date); a date
    already past is 0. A decimal is taken as it is: being liberal costs nothing here.
    """
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if moment.tzinfo is None:  # "-0000": UTC with no claim about the sender's zone
        moment = moment.replace(tzinfo=UTC)
    return max(moment.timestamp() - now, 0.0)


def retry_after_s(outcome: httpx.Response | httpx.TransportError, now: float) -> float | None:
    """The `Retry-After` of an answer, parsed; None for no answer or no usable header."""
    if not isinstance(outcome, httpx.Response):
        return None
    return parse_retry_after(outcome.headers.get("Retry-After"), now)


def later_s(status: int | None, retry_after: float | None) -> int:
    """Codat's "come back later", translated once: whole seconds to wait before calling again.

    What Codat said, rounded up (coming back early only fails again) and capped at a day; what it did
    not say, the default for the answer: 30 s for a 429, 5 s for anything else (`status` None: no answer).
    """
    if retry_after is None:
        return RATE_LIMITED_WAIT_S if status == 429 else UNAVAILABLE_WAIT_S
    return min(math.ceil(retry_after), MAX_WAIT_S)
