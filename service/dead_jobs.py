"""What the worker tells when a job will not run again: the observer protocol, and a log-only observer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import structlog

if TYPE_CHECKING:
    from service.queue import Job


class DeadJobObserver(Protocol):
    async def job_dead(self, job: Job, error: str) -> None:
        """A job will not run again by itself: someone should look."""
        ...


class LogDeadJobs:
    """Writes one structured log line per notification (the default when nothing is configured)."""

    def __init__(self, log: structlog.stdlib.BoundLogger | None = None) -> None:
        self._log = log or structlog.get_logger("service.dead_jobs")

    async def job_dead(self, job: Job, error: str) -> None:
        self._log.error(
            "job_dead",
            job_id=job.id,
            kind=job.kind,
            lock_key=job.lock_key,
            attempts=job.attempts,
            error=error,
        )
