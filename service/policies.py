"""Every retry policy codat-relay applies, built in one place from settings; everything else only applies them.

- `retry_policies`: how a failed job of each kind is tried again (the worker applies it). Every kind gets
  `RELAY_MAX_ATTEMPTS` attempts, backoff from 1 s doubling to 5 minutes, with full jitter; notifications
  instead are tried for 5 days however many attempts that takes (a target down over a weekend still gets
  its message). A `RetryLater` (a Codat 429/503, storage down) waits at least its `after_s` either way; a
  `Deferred` (Codat's rate-limit budget said "not now" before anything was sent, service/budget.py) is no
  failure at all: the worker puts the job back for its `after_s` and gives the attempt back.
- `poll_policy`: when a pushed dataset is asked about again (`RELAY_DATASET_POLLS`).
- `repush_policy`: when a failed dataset is pushed again, and how often (`RELAY_REPUSH_*`).

Codat's own retries inside one call belong to its client (`service.codat.retry.CodatRetryPolicy`: the
schedule of Codat's SDKs, cut short; no setting moves it). This module is apart from `service.retry` (the
arithmetic of one policy) because it names every job kind and so imports their owners: the worker,
which imports `service.retry`, stays free of the push pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from service.alert_index import INDEX_KIND
from service.late_records import HISTORIC_KIND
from service.notifications import NOTIFY_JOB_KIND
from service.outbox import PUSH_KIND
from service.purge import PURGE_KIND
from service.queue import ALERT_JOB_KIND, PRUNE_KIND
from service.repush import RepushPolicy
from service.retry import RetryPolicy
from service.schedules import SCHEDULE_KIND
from service.schedules import SWEEP_KIND as SCHEDULE_SWEEP_KIND
from service.tracking import POLL_KIND, SWEEP_KIND, SYNC_KIND, PollPolicy

if TYPE_CHECKING:
    from service.settings import Settings

JOB_BASE_S = 1.0
JOB_CAP_S = 300.0
NOTIFY_BASE_S = 5.0
NOTIFY_CAP_S = 900.0
# Codat disables a webhook endpoint that has failed for 5 days: a notification is as patient as that.
NOTIFY_GIVE_UP_S = 5 * 86_400.0
NOTIFY_MAX_ATTEMPTS = 1_000_000  # bounded by age, not by count: about 480 attempts fit in 5 days
REPUSH_CAP_S = 900.0  # however many re-pushes, none waits longer than 15 minutes


def job_policy(settings: Settings) -> RetryPolicy:
    """A job of any kind without a policy of its own: `RELAY_MAX_ATTEMPTS` attempts, then `dead`."""
    return RetryPolicy(base_s=JOB_BASE_S, cap_s=JOB_CAP_S, max_attempts=settings.max_attempts)


def retry_policies(settings: Settings) -> Mapping[str, RetryPolicy]:
    """Each job kind codat-relay runs → how its failures are tried again. The worker applies, never amends."""
    jobs = job_policy(settings)
    notify = RetryPolicy(
        base_s=NOTIFY_BASE_S, cap_s=NOTIFY_CAP_S, max_attempts=NOTIFY_MAX_ATTEMPTS, give_up_after_s=NOTIFY_GIVE_UP_S
    )
    return MappingProxyType({
        ALERT_JOB_KIND: jobs,  # a handler failing; when dead, the alert is `dead` and staff hear `alert_dead`
        PUSH_KIND: jobs,  # a push Codat did not take; the open push is resent under its key
        POLL_KIND: jobs,  # a dataset read that failed; the sweep re-polls a dataset whose poll died
        SYNC_KIND: jobs,
        HISTORIC_KIND: jobs,  # a historic sync of late records Codat did not start; retried, then dead (logged)
        SWEEP_KIND: jobs,
        PRUNE_KIND: jobs,
        SCHEDULE_KIND: jobs,  # a schedule read or step that failed; the sweep reads a stale schedule again
        SCHEDULE_SWEEP_KIND: jobs,
        INDEX_KIND: jobs,  # an indexer run that failed; the next run starts from the watermark anyway
        PURGE_KIND: jobs,  # a purge interrupted is run again: every step deletes what is left
        NOTIFY_JOB_KIND: notify,  # outlives RELAY_MAX_ATTEMPTS: 5 days
    })  # fmt: skip


def poll_policy(settings: Settings) -> PollPolicy:
    """Polls of a pushed dataset: 1 s doubling to 2 minutes, `RELAY_DATASET_POLLS` of them, then the sweep's."""
    return PollPolicy(max_polls=settings.dataset_polls)


def repush_policy(settings: Settings) -> RepushPolicy:
    """Re-pushes of a failed dataset: `RELAY_REPUSH_MAX_ATTEMPTS`, from `RELAY_REPUSH_BACKOFF_SECONDS` doubling."""
    return RepushPolicy(
        max_attempts=settings.repush_max_attempts, base_s=settings.repush_backoff_seconds, cap_s=REPUSH_CAP_S
    )
