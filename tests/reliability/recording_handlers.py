"""A test-only handler that records every processing run durably, in the relay's own database.

`record` replaces the `dataset_status` handler in a relay started by `tests.reliability.relay_proc`.
Each run that reaches its effect commits, in ONE transaction, a row in `runs` (every run counts) and an
idempotent row in `processed` keyed by alert id (`ON CONFLICT DO NOTHING`). So after a crash test:
`processed` holds the effect — exactly one row per alert, whatever re-ran — and `runs` shows how often
the effect was applied (more than once only when a SIGKILL fell between the handler's commit and the
job's completion, the window that makes idempotent handlers necessary).
"""

from __future__ import annotations

import os
import time

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from service.db import writer
from service.types import Alert, Context, Outcome
from tests.pgbouncer import engine_for

FAIL_PREFIX = "explode-"  # alerts whose id starts so fail every run (to reach `dead` and notifications)

metadata = sa.MetaData()
processed = sa.Table(
    "processed",
    metadata,
    sa.Column("alert_id", sa.String(255), primary_key=True),
    sa.Column("status", sa.String(255)),  # the dataset status the alert carried: the "final state"
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("at", sa.Double, nullable=False),
)
runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("alert_id", sa.String(255), nullable=False, index=True),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("at", sa.Double, nullable=False),
)


async def create_tables(database_url: str) -> None:
    engine = engine_for(database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
    finally:
        await engine.dispose()


async def record(alert: Alert, ctx: Context) -> Outcome:
    if alert.delivery_id.startswith(FAIL_PREFIX):
        raise RuntimeError("the recording handler was told to fail this alert")
    now, pid = time.time(), os.getpid()
    insert = postgresql.insert if ctx.store.dialect.name == "postgresql" else sqlite.insert
    effect = insert(processed).values(alert_id=alert.delivery_id, status=alert.dataset_status, pid=pid, at=now)
    async with writer(ctx.store).begin() as conn:
        await conn.execute(sa.insert(runs).values(alert_id=alert.delivery_id, pid=pid, at=now))
        await conn.execute(effect.on_conflict_do_nothing(index_elements=["alert_id"]))
    return Outcome.DONE
