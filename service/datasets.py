"""What a dataset's status means for its records, applied once, whoever learns it first.

The poll job and the alert handlers (dataset-status webhooks) both call `apply_dataset_status`; it is
monotonic, so a late or repeated report never moves a dataset back: a terminal status is final, and
records move only if they still carry the version that went into that dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from service import coverage, record_states
from service.codat.models import ERROR_STATUSES, REPUSHABLE, TERMINAL_STATUSES
from service.db import datasets
from service.record_states import Event, lock_outbox

COMPLETE = "Complete"
# Not one of Codat's 21 statuses: ours for a dataset Codat answers 404 for, long after it gave us its id
# (the company, its data or the dataset is gone). Terminal and failed: its records wait no more.
GONE = "NotFound"


@dataclass(frozen=True)
class Applied:
    """What `apply_dataset_status` did; `changed` is False when the dataset was already terminal."""

    dataset_id: str
    company_id: str
    data_type: str
    status: str
    terminal: bool
    changed: bool
    records: int = 0  # records whose state this call moved
    waiting: int = 0  # records of this dataset with a newer version now free to push
    repush_may_clear: bool = False  # the hook for the re-push policy: see `repush_may_clear`

    @property
    def failed(self) -> bool:
        return self.terminal and self.status != COMPLETE


def repush_may_clear(status: str) -> bool:
    """Whether pushing the same records again may clear this error (FACTS §2): the re-push policy's
    question. `AuthError`/`PermissionsError` need the merchant, `PrerequisiteNotMet` configuration,
    `NotSupported` never clears; a re-push handler decides what to do with a True."""
    return status in REPUSHABLE


_LOAD = sa.select(datasets).where(datasets.c.id == sa.bindparam("dataset_id"))  # built once: it runs per alert


async def load(conn: AsyncConnection, dataset_id: str) -> sa.RowMapping | None:
    return (await conn.execute(_LOAD, {"dataset_id": dataset_id})).mappings().first()


async def mark_checked(conn: AsyncConnection, dataset_id: str, asked_at: float) -> None:
    """Codat answered a question about this dataset sent at `asked_at` (only ever moves forward)."""
    await conn.execute(
        datasets.update()
        .where(datasets.c.id == dataset_id, sa.or_(datasets.c.checked_at.is_(None), datasets.c.checked_at < asked_at))
        .values(checked_at=asked_at)
    )


async def apply_dataset_status(
    conn: AsyncConnection, dataset: sa.RowMapping, status: str, error_message: str | None, *,
    now: float, completed_at: float | None = None,
) -> Applied:  # fmt: skip
    """Record `status` for `dataset` (a `datasets` row) and move its records accordingly.

    Complete → the pushed versions are Codat's (and the books', when a sync that started after the
    dataset completed has already succeeded); an error, `Cancelled` or `NotSupported` → `failed`. Each
    record of the push is then decided again (service.record_states). A dataset already terminal is
    left as it is.
    """
    base = {"dataset_id": dataset["id"], "company_id": dataset["company_id"], "data_type": dataset["data_type"]}
    if dataset["terminal"]:
        return Applied(**base, status=dataset["status"], terminal=True, changed=False)
    if status in TERMINAL_STATUSES or status == GONE:
        # Its records move: first the lock the pusher's claim and intake take, so none of them is
        # between reading its rows and writing them (a held-back row freed here must not join a push
        # whose payload does not hold it).
        await lock_outbox(conn, dataset["company_id"], dataset["data_type"])
    terminal = status in TERMINAL_STATUSES or status == GONE
    when = completed_at if completed_at is not None else now
    flipped = await conn.execute(
        datasets.update()
        .where(datasets.c.id == dataset["id"], datasets.c.terminal.is_(False))
        .values(status=status, error_message=error_message, terminal=terminal, updated_at=now,
                completed_at=when if terminal else None, next_poll_at=None if terminal else dataset["next_poll_at"])
    )  # fmt: skip
    if not flipped.rowcount:
        # Another transaction made it terminal after `dataset` was read: the first report wins, once.
        return Applied(**base, status=dataset["status"], terminal=True, changed=False)
    if not terminal:
        return Applied(**base, status=status, terminal=False, changed=status != dataset["status"])
    if dataset["push_id"] is None:
        moved = 0  # not one of our pushes (a row written by hand): there are no records to move
    elif status == COMPLETE:
        moved = await _accept(conn, dataset, when, now)
    else:
        moved = await record_states.end_flight(conn, str(dataset["push_id"]), Event.FAIL, now,
                                               dataset_id=dataset["id"])  # fmt: skip
    waiting = await record_states.count_waiting(conn, str(dataset["push_id"])) if dataset["push_id"] is not None else 0
    return Applied(**base, status=status, terminal=True, changed=True, records=moved, waiting=waiting,
                   repush_may_clear=status in ERROR_STATUSES and repush_may_clear(status))  # fmt: skip


async def _accept(conn: AsyncConnection, dataset: sa.RowMapping, completed_at: float, now: float) -> int:
    # A sync that started after this dataset completed has already put in the books the records its
    # range covers (service/coverage.py); the others wait for a sync that covers them.
    later = await coverage.since(conn, dataset["company_id"], completed_at)
    return await record_states.end_flight(
        conn, str(dataset["push_id"]), Event.COMPLETE, now, dataset_id=dataset["id"], completed_at=completed_at,
        books_since=min(c.at for c in later) if later else None,
        books_cover=sa.or_(*(c.covers_sql() for c in later)) if later else None,
    )


async def recent(conn: AsyncConnection, company_id: str, limit: int = 20) -> list[sa.RowMapping]:
    query = (
        sa.select(datasets)
        .where(datasets.c.company_id == company_id)
        .order_by(datasets.c.requested_at.desc())
        .limit(limit)
    )
    return list((await conn.execute(query)).mappings())
