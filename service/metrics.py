"""Prometheus metrics on one dedicated registry; `/metrics` refreshes the gauges, then renders."""

from __future__ import annotations

import sqlalchemy as sa
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import codat_quota, jobs
from service.queue import count_deferred

CONTENT_TYPE = CONTENT_TYPE_LATEST
JOB_STATUSES = ("waiting", "running", "done", "dead")

REGISTRY = CollectorRegistry(auto_describe=True)

QUEUE_DEPTH = Gauge("relay_jobs", "Jobs in the queue, by status.", ["status"], registry=REGISTRY)
OLDEST_WAITING_AGE = Gauge(
    "relay_jobs_oldest_waiting_seconds",
    "How long the oldest runnable waiting job has been due (0 when none).",
    registry=REGISTRY,
)
JOBS_FINISHED = Counter(
    "relay_jobs_finished", "Job runs finished, by kind and outcome.", ["kind", "outcome"], registry=REGISTRY
)
JOB_DURATION = Histogram(
    "relay_job_duration_seconds",
    "Run time of one job attempt.",
    ["kind"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)

DELIVERIES = Counter(
    "relay_webhook_deliveries", "Webhook deliveries answered, by outcome.", ["outcome"], registry=REGISTRY
)
CODAT_CALLS = Counter(
    "relay_codat_calls", "Calls to Codat by endpoint and HTTP status (0 = no answer).", ["endpoint", "status"],
    registry=REGISTRY,
)
CODAT_RATE_LIMIT_REMAINING = Gauge(
    "relay_codat_rate_limit_remaining", "The latest X-Rate-Limit-Remaining Codat answered.", registry=REGISTRY
)
CODAT_QUOTA_REMAINING = Gauge(
    "relay_codat_quota_remaining",
    "Codat's daily quota left as the shared budget counts it (every process reports the same; -1: not known yet).",
    registry=REGISTRY,
)
CODAT_CALLS_WAITING = Gauge(
    "relay_codat_calls_waiting",
    "Codat calls waiting on the rate-limit budget: `deferred` jobs (every process reports the same), and this "
    "process's calls waiting for a `slot` of their company.",
    ["where"], registry=REGISTRY,
)
PUSHES = Counter(
    "relay_pushes", "Pushes to Codat, by data type and outcome.", ["data_type", "outcome"], registry=REGISTRY
)
REPUSHES = Counter(
    "relay_repushes", "Failed datasets and what the re-push policy did.", ["status", "decision"], registry=REGISTRY
)
NOTIFICATIONS = Counter(
    "relay_notifications", "Staff notifications, by kind; `suppressed` ones were told within the window.",
    ["kind", "outcome"], registry=REGISTRY,
)

ALERTS_INDEXED = Counter(
    "relay_alerts_indexed", "Alerts the indexer job added to alert search's text index.", registry=REGISTRY,
)
ALERT_INDEX_LAG = Gauge(
    "relay_alert_index_lag_seconds",
    "After the indexer job's last run in this process: now minus the newest indexed alert's received time "
    "(the span search scans unindexed; 20 s to 30 s when the index keeps up).",
    registry=REGISTRY,
)
PRUNED_ROWS = Counter(
    "relay_pruned_rows", "Rows deleted by the retention prune, by table (`sqlite_pages`: pages given back).",
    ["table"], registry=REGISTRY,
)


def count_codat_call(endpoint: str, status: int) -> None:
    CODAT_CALLS.labels(endpoint=endpoint, status=str(status)).inc()


async def refresh_queue_gauges(engine: AsyncEngine, now: float) -> None:
    """Read the queue's depth and lag from the database (every process reports the same figures)."""
    async with engine.connect() as conn:
        by_status = sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)
        counts: dict[str, int] = {status: count for status, count in await conn.execute(by_status)}
        # Age since due, not since created: a job scheduled for later is not late.
        oldest_due = (
            await conn.execute(
                sa.select(sa.func.min(jobs.c.run_at)).where(jobs.c.status == "waiting", jobs.c.run_at <= now)
            )
        ).scalar_one_or_none()
        remaining = await conn.scalar(sa.select(codat_quota.c.remaining).where(codat_quota.c.id == 1))
        deferred = await count_deferred(conn)
    CODAT_QUOTA_REMAINING.set(-1 if remaining is None else remaining)
    CODAT_CALLS_WAITING.labels("deferred").set(deferred)
    for status in JOB_STATUSES:
        QUEUE_DEPTH.labels(status).set(counts.get(status, 0))
    OLDEST_WAITING_AGE.set(max(0.0, now - oldest_due) if oldest_due is not None else 0.0)


def render() -> bytes:
    return generate_latest(REGISTRY)
