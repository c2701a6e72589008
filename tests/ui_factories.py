"""Rows written straight into the tables, to build the companies the Sync Health pages and the jobs API show.

The factories take a *sync* SQLAlchemy connection: async tests call them through `conn.run_sync`, and the
browser test, which has no event loop, through a plain `sa.create_engine("sqlite:///…")`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import sqlalchemy as sa

from service.db import alerts, companies, datasets, jobs, notifications, pushes, records
from service.keys import alert_lock
from service.queue import ALERT_JOB_KIND

FAILING = "co-failing"
HEALTHY = "co-healthy"
DEAD_ALERT = "alert-dead-1"
HOUR = 3600.0


def company(conn: sa.Connection, company_id: str, now: float, **values: Any) -> None:
    row = {"id": company_id, "paused": False, "connection_id": f"conn-{company_id}", "connection_status": "Linked",
           "created_at": now, "updated_at": now, **values}  # fmt: skip
    conn.execute(companies.insert().values(row))


def record(conn: sa.Connection, company_id: str, record_id: str, state: str, now: float,
           data_type: str = "orders") -> None:  # fmt: skip
    body = json.dumps({"id": record_id}).encode()
    conn.execute(records.insert().values(
        company_id=company_id, data_type=data_type, record_id=record_id, version=1,
        content_hash=hashlib.sha256(body).hexdigest()[:32], body=body, is_delete=False, state=state,
        created_at=now, updated_at=now,
    ))  # fmt: skip


def dataset(conn: sa.Connection, dataset_id: str, company_id: str, status: str, at: float, *,
            data_type: str = "orders", error: str | None = None) -> None:  # fmt: skip
    terminal = status not in ("Initial", "Processing")
    conn.execute(datasets.insert().values(
        id=dataset_id, company_id=company_id, data_type=data_type, record_count=2, status=status,
        error_message=error, terminal=terminal, requested_at=at, updated_at=at,
    ))  # fmt: skip


def alert(conn: sa.Connection, alert_id: str, company_id: str | None, status: str, at: float, *,
          kind: str = "other", type_: str = "Rate Limit Reached", error: str | None = None) -> None:  # fmt: skip
    conn.execute(alerts.insert().values(
        id=alert_id, kind=kind, type=type_, shape="legacy", company_id=company_id, data_types=[],
        received_at=at, status=status, attempts=3 if status == "dead" else 1, last_error=error, updated_at=at,
        body=json.dumps({"AlertId": alert_id, "CompanyId": company_id, "RuleType": type_}).encode(),
    ))  # fmt: skip


def job(conn: sa.Connection, kind: str, payload: dict[str, Any], status: str, at: float, *,
        lock_key: str | None = None, queueing_lock: str | None = None, error: str | None = None) -> int:  # fmt: skip
    dead = status == "dead"
    result = conn.execute(jobs.insert().values(
        kind=kind, payload=payload, lock_key=lock_key, queueing_lock=queueing_lock, status=status,
        attempts=10 if dead else 0, run_at=at, created_at=at, finished_at=at if dead else None, last_error=error,
    ).returning(jobs.c.id))  # fmt: skip
    return int(result.scalar_one())


def dead_alert(conn: sa.Connection, alert_id: str, company_id: str | None, at: float) -> int:
    """An alert whose job died: both rows `dead`, as the worker leaves them. Returns the job id."""
    error = "RuntimeError: the handler kept failing"
    alert(conn, alert_id, company_id, "dead", at, error=error)
    return job(conn, ALERT_JOB_KIND, {"alert_id": alert_id}, "dead", at, lock_key=alert_lock(company_id), error=error)


HEALTHY_NAME = "Harbour Bakery"  # the healthy company's name in Codat (searchable)


def world(conn: sa.Connection, now: float) -> dict[str, int]:
    """A failing and a healthy company with everything the pages show; returns the dead jobs' ids."""
    company(conn, FAILING, now - 5 * HOUR, last_sync_code=5130, last_sync_at=now - HOUR)
    company(conn, HEALTHY, now - 5 * HOUR, last_sync_code=2000, last_sync_at=now - HOUR,
            last_sync_success_at=now - HOUR, name=HEALTHY_NAME, sync_frequency="Daily", sync_hour=2,
            sync_time_zone="America/New_York", schedule_fetched_at=now - HOUR, next_sync_at=now + 3 * HOUR)  # fmt: skip
    for i, state in enumerate(["pending", "pending", "conflict", "synced"]):
        record(conn, FAILING, f"f{i}", state, now)
    for i in range(3):
        record(conn, HEALTHY, f"h{i}", "synced", now)
    dataset(conn, "ds-old-ok", FAILING, "Complete", now - 4 * HOUR)
    dataset(conn, "ds-fetch-error", FAILING, "FetchError", now - 3 * HOUR, error="Codat could not fetch <orders>")
    # A payments error since cleared by a newer Complete dataset: no longer a reason to fail.
    dataset(conn, "ds-pay-error", FAILING, "ProcessingError", now - 4 * HOUR, data_type="payments")
    dataset(conn, "ds-pay-ok", FAILING, "Complete", now - 2 * HOUR, data_type="payments")
    dataset(conn, "ds-healthy", HEALTHY, "Complete", now - 2 * HOUR)
    conn.execute(pushes.insert().values(
        id="push-1", company_id=FAILING, data_type="orders", record_count=2, reason="push",
        started_at=now - 3.5 * HOUR, finished_at=now - 3.5 * HOUR, outcome="rejected", error="CodatRejected: 400",
    ))  # fmt: skip
    conn.execute(notifications.insert().values(
        id="n-1", kind="dataset_failed", severity="warning", company_id=FAILING, data_type="orders",
        dataset_id="ds-fetch-error", dedupe_key="dataset_failed|co-failing|ds-fetch-error",
        summary="Dataset ds-fetch-error ended FetchError", details={}, occurred_at=now - 2.5 * HOUR,
    ))  # fmt: skip
    alert(conn, "alert-done-1", HEALTHY, "done", now - 1.5 * HOUR, kind="dataset_status",
          type_="Data sync completed")  # fmt: skip
    alert_job = dead_alert(conn, DEAD_ALERT, FAILING, now - HOUR)
    push_job = job(conn, "push", {"company_id": FAILING, "data_type": "orders"}, "dead", now - 0.5 * HOUR,
                   lock_key=f"push:{FAILING}:orders", queueing_lock=f"push:{FAILING}:orders",
                   error="CodatAuthError: 401")  # fmt: skip
    return {"alert_job": alert_job, "push_job": push_job}
