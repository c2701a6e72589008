"""Knowing what became of every push: dataset polls, sync checks, and the periodic sweep.

Every pushed dataset is polled, with backoff and a bounded number of polls, until it is terminal, so a
missed webhook never leaves it unknown (webhooks only make it faster). A dataset still unfinished after
the last poll (`RELAY_DATASET_POLLS`; none when 0) is left to the sweep, which polls it again every
`RELAY_PUSH_INTERVAL_SECONDS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from service import coverage, keys, late_records, problems, queue, repush
from service.codat.client import CodatNotFound, SyncStatus, is_failure, is_success
from service.codat.models import SYNC_STATUS_MEANINGS
from service.coverage import HISTORIC
from service.datasets import GONE, Applied, apply_dataset_status, load
from service.db import companies, datasets, pushes, records, writer
from service.notifications import Kind, Notification
from service.outbox import IS_PENDING, record_sync_check, schedule_push
from service.queue import Job
from service.record_states import lock_outbox, mark_synced
from service.records import MODELS
from service.repush import RepushPolicy
from service.types import Deps

POLL_KIND = "poll_dataset"
SYNC_KIND = "check_sync"
SWEEP_KIND = "push_sweep"
SYNC_CHECK_AFTER_S = 86_400.0  # a company with data in Codat and no sync status seen for a day gets a check
OVERDUE_S = 60.0  # a poll this late was lost (its job died): the sweep schedules another
NOT_FOUND_GRACE_S = 600.0  # a dataset Codat answers 404 for this long after its push is gone
# After the relay starts a sync, its status is read at +5 s, +10 s, +20 s, … (at most a minute apart) until
# it ends: `synced` and "last sync" are right within a minute of the sync ending, webhook or none (Codat
# sends none for Sync for Commerce today: FACTS §6).
FOLLOW_FIRST_S = 5.0
FOLLOW_MAX_S = 60.0
FOLLOW_MAX_POLLS = 60  # about an hour; a sync still running then is left to the daily check
IN_PROGRESS_CODES = frozenset({1000, 1010})
CONFLICT_IDS_TOLD = 50  # record ids listed in one notification; the count is always complete
log = structlog.get_logger("service.tracking")


TrackingDeps = Deps  # the push pipeline needs what every job needs


@dataclass(frozen=True)
class PollPolicy:
    """Poll n waits `first_s * factor**n`, at most `max_delay_s`; `max_polls` before the sweep takes over."""

    first_s: float = 1.0
    factor: float = 2.0
    max_delay_s: float = 120.0
    max_polls: int = 20  # about 30 minutes of polling with the defaults

    def delay(self, polls: int) -> float:
        return min(self.max_delay_s, self.first_s * self.factor ** min(polls, 64))

    def first_poll_at(self, now: float) -> float | None:
        """When a new dataset is first polled; None when polling is off (RELAY_DATASET_POLLS=0): the sweep's."""
        return now + self.delay(0) if self.max_polls > 0 else None


def _latest(syncs: list[SyncStatus]) -> SyncStatus | None:
    """The company's newest sync Codat dates (`syncUtc`)."""
    dated = [s for s in syncs if s.sync_utc is not None]
    return max(dated, key=lambda s: _ts(s.sync_utc) or 0.0, default=None)  # `or`: for mypy, never None here


def sync_failed(company_id: str, status: SyncStatus) -> Notification:
    """Staff are told of a failed sync with the meaning of its code (never its text, FACTS §3)."""
    code = status.sync_status_code
    meaning = SYNC_STATUS_MEANINGS.get(code, "unknown code") if code is not None else "unknown code"
    sync_id = status.commerce_sync_id or status.sync_id
    return Notification(
        Kind.SYNC_FAILED, f"Codat sync failed with {code}: {meaning}", company_id=company_id,
        subject=str(sync_id or code),
        details={"syncStatusCode": code, "meaning": meaning, "errorMessage": status.error_message, "syncId": sync_id},
    )  # fmt: skip


def _ts(value: Any) -> float | None:
    return value.timestamp() if value is not None else None


@dataclass(frozen=True)
class Found:
    """What Codat says of one dataset."""

    status: str
    message: str | None
    completed_at: float | None


async def ask_codat(codat: Any, dataset: sa.RowMapping, now: float) -> Found | None:
    """Codat's status of one of our datasets (a `datasets` row); None when it cannot be known yet.

    A 404 for a dataset Codat gave us its id for means the company, its data or the dataset is gone:
    once `NOT_FOUND_GRACE_S` have passed since the push it ends the dataset as `NotFound` (failed, and
    staff told once) instead of failing the job until it dies. Sooner, it may be Codat catching up with
    itself, so the caller asks again later. A 429 or 503 raises the client's `RetryLater`: the job waits
    as long as Codat said.
    """
    try:
        found = await codat.get_dataset(dataset["company_id"], dataset["id"])
    except CodatNotFound as exc:
        if now - dataset["requested_at"] < NOT_FOUND_GRACE_S:
            return None
        return Found(GONE, f"Codat answers 404 for this dataset: {exc}", None)
    return Found(found.status, found.error_message, _ts(found.completed))


class Tracker:
    def __init__(self, deps: TrackingDeps, poll: PollPolicy, repush: RepushPolicy) -> None:
        self._deps = deps
        self.poll = poll
        self.repush = repush

    # -- datasets ------------------------------------------------------------------------------------

    async def poll_dataset(self, job: Job, attempt: int) -> None:
        """`poll_dataset` job: read the dataset from Codat and apply its status; poll again if unfinished."""
        dataset_id = str(job.payload["dataset_id"])
        engine, now = self._deps.engine, self._deps.clock.now()
        async with engine.connect() as conn:
            row = await load(conn, dataset_id)
        if row is None or row["terminal"]:
            return
        found = await ask_codat(self._deps.codat, row, now)
        async with writer(engine).begin() as conn:
            row = await load(conn, dataset_id)
            if row is None:
                return
            if found is None:  # a 404 too soon after the push to mean anything: ask again later
                await self._poll_again(conn, row, now)
                return
            applied = await apply_dataset_status(conn, row, found.status, found.message, now=now,
                                                 completed_at=found.completed_at)  # fmt: skip
            if applied.terminal:
                await self.after_terminal(conn, applied, now)
            else:
                await self._poll_again(conn, row, now)

    async def _poll_again(self, conn: AsyncConnection, row: sa.RowMapping, now: float) -> None:
        polls = row["polls"] + 1
        more = polls < self.poll.max_polls
        next_at = now + self.poll.delay(polls) if more else None
        await conn.execute(
            datasets.update().where(datasets.c.id == row["id"]).values(polls=polls, next_poll_at=next_at)
        )
        if next_at is not None:
            payload = {"dataset_id": row["id"], "company_id": row["company_id"]}
            lock = keys.poll_lock(row["id"])
            await queue.enqueue(conn, POLL_KIND, payload, now=now, queueing_lock=lock, run_at=next_at)
        else:
            log.warning("dataset_poll_exhausted", dataset_id=row["id"], company_id=row["company_id"], polls=polls)

    async def after_terminal(self, conn: AsyncConnection, applied: Applied, now: float) -> None:
        """What follows a dataset's end, whoever saw it: held-back changes go, failures are told."""
        if applied.waiting:
            await schedule_push(conn, applied.company_id, applied.data_type, now=now)
        if applied.failed and applied.changed:
            await repush.after_failure(conn, applied, self._deps.notifier, self.repush, now)
        elif applied.changed:
            await repush.after_complete(conn, applied)
            # Records dated before where the syncs reach are in no future `latest` sync: told now, not a day later.
            await late_records.notice(conn, self._deps.notifier, applied.company_id, [applied.data_type], now,
                                      auto=self._deps.settings.auto_historic_sync)  # fmt: skip
            await repush.resolve_failures(conn, applied, self._deps.notifier)
        log.info("dataset_finished", dataset_id=applied.dataset_id, company_id=applied.company_id,
                 data_type=applied.data_type, status=applied.status, records=applied.records)  # fmt: skip

    # -- syncs ---------------------------------------------------------------------------------------

    async def check_sync_job(self, job: Job, attempt: int) -> None:
        """`check_sync` job: what has Codat synced for this company? Accepted records become synced.

        A job with `follow` (a sync the relay started) asks again, with backoff, while the sync runs.
        """
        company_id = str(job.payload["company_id"])
        follow = job.payload.get("follow")
        if follow is None:
            await self.check_sync(company_id)
            return
        syncs = await self._sync_statuses(company_id)
        await self.check_sync(company_id, syncs)
        latest = _latest(syncs)
        since = job.payload.get("since")
        if latest is not None and since is not None and (_ts(latest.sync_utc) or 0.0) < float(since):
            latest = None  # the sync before the scheduled one we wait for
        code = latest.sync_status_code if latest is not None else None
        polls = int(follow) + 1
        # None: Codat shows no sync yet (it may be catching up with the one just started).
        if (code is None or code in IN_PROGRESS_CODES) and polls < FOLLOW_MAX_POLLS:
            await follow_sync(self._deps.engine, company_id, self._deps.clock.now(), polls=polls,
                              since=None if since is None else float(since))  # fmt: skip
        elif latest is not None and is_failure(code):
            # No webhook tells a failed Sync for Commerce sync (FACTS §6): the poll is what tells staff.
            await self._deps.notifier.notify(sync_failed(company_id, latest))

    async def _sync_statuses(self, company_id: str) -> list[SyncStatus]:
        try:
            statuses: list[SyncStatus] = await self._deps.codat.get_sync_status(company_id)
        except CodatNotFound:
            return []  # no sync has ever run
        return statuses

    async def guard_synced(self, company_id: str) -> None:
        """Before pushing: if Codat holds records of this company, learn whether a sync took them."""
        async with self._deps.engine.connect() as conn:
            held = await conn.scalar(
                sa.select(datasets.c.id)
                .where(datasets.c.company_id == company_id, datasets.c.status == "Complete")
                .limit(1)
            )
        if held is not None:
            await self.check_sync(company_id)

    async def check_sync(self, company_id: str, syncs: list[SyncStatus] | None = None) -> dict[str, list[str]]:
        """Read the company's syncs (unless given) and apply each success not yet applied, with its range
        (service/coverage.py); then tell staff of records too late for any `latest` sync. Returns new
        conflicts by data type."""
        if syncs is None:
            syncs = await self._sync_statuses(company_id)
        now = self._deps.clock.now()
        latest = _latest(syncs)
        successes = sorted((s for s in syncs if s.sync_utc is not None and is_success(s.sync_status_code)),
                           key=lambda s: _ts(s.sync_utc) or 0.0)  # fmt: skip
        success_at = max((_ts(s.sync_utc) or 0.0 for s in successes), default=None)
        conflicts: dict[str, list[str]] = {}
        data_types = sorted(MODELS)
        async with writer(self._deps.engine).begin() as conn:
            # The outbox locks first, in one order, then the company row: intake and the pusher's claim
            # take the same locks, so none of them reads "not synced" while this marks the rows they
            # replace; and a push closing (outbox lock, then the company's pause) cannot deadlock with this.
            for data_type in data_types:
                await lock_outbox(conn, company_id, data_type)
            if latest is not None and is_success(latest.sync_status_code):
                # The company's latest sync succeeded: its failed syncs are over (staff hear so).
                await self._deps.notifier.resolve(
                    conn, f"a sync succeeded ({latest.sync_status_code})", kinds=[Kind.SYNC_FAILED],
                    company_id=company_id,
                )  # fmt: skip
            before, known = await record_sync_check(
                conn, company_id, code=latest.sync_status_code if latest else None,
                at=_ts(latest.sync_utc) if latest else None, success_at=success_at, now=now,
            )  # fmt: skip
            applied = 0
            for status in successes:
                cover = await coverage.learn_success(conn, company_id, status, before=before, now=now)
                if cover is None:
                    continue  # applied before (or older than what was)
                for data_type in data_types:
                    ids = await mark_synced(conn, company_id, data_type, cover.at, now, cover.covers_sql())
                    conflicts.setdefault(data_type, []).extend(ids)
                await coverage.applied(conn, cover, company_id, now)
                applied += 1
            if not applied:
                return {}  # nothing new in the books since the last check
            conflicts = {data_type: sorted(ids) for data_type, ids in conflicts.items() if ids}
            for data_type, ids in conflicts.items():
                await tell_conflicts(self._deps.notifier, conn, company_id, data_type, ids)
            await late_records.notice(conn, self._deps.notifier, company_id, data_types, now,
                                      auto=self._deps.settings.auto_historic_sync)  # fmt: skip
        log.info("sync_checked", company_id=company_id, synced_at=known, syncs_applied=applied,
                 conflicts=sum(map(len, conflicts.values())))  # fmt: skip
        return conflicts

    async def historic_sync_job(self, job: Job, attempt: int) -> None:
        """`historic_sync` job: late records' range (service/late_records.py) synced, then followed to its end."""
        company_id = str(job.payload["company_id"])
        start, finish = (datetime.fromtimestamp(float(job.payload[k]), UTC) for k in ("start", "finish"))
        summary = await self._deps.codat.sync_historic(company_id, start, finish)
        await follow_sync(self._deps.engine, company_id, self._deps.clock.now(), started=(HISTORIC, summary))

    # -- the sweep -----------------------------------------------------------------------------------

    async def sweep(self, job: Job, attempt: int) -> None:
        """`push_sweep` (periodic): push what is pending, resend open pushes, poll forgotten datasets."""
        now = self._deps.clock.now()
        async with self._deps.engine.connect() as conn:
            due = await _pending(conn) | await _open(conn)
            stale = (await conn.execute(
                sa.select(datasets.c.id, datasets.c.company_id).where(
                    datasets.c.terminal.is_(False),
                    sa.or_(datasets.c.next_poll_at.is_(None), datasets.c.next_poll_at < now - OVERDUE_S))
            )).all()  # fmt: skip
            unchecked = await _sync_unchecked(conn, now)
        async with writer(self._deps.engine).begin() as conn:
            for company_id, data_type in sorted(due):
                await schedule_push(conn, company_id, data_type, now=now)
            for dataset_id, company_id in stale:
                payload = {"dataset_id": dataset_id, "company_id": company_id}
                await queue.enqueue(conn, POLL_KIND, payload, now=now, queueing_lock=keys.poll_lock(dataset_id))
            for company_id in unchecked:
                await queue.enqueue(conn, SYNC_KIND, {"company_id": company_id}, now=now,
                                    queueing_lock=keys.sync_check_lock(company_id))  # fmt: skip
        log.info("push_sweep", pushes=len(due), polls=len(stale), sync_checks=len(unchecked))


async def follow_sync(
    engine: Any, company_id: str, now: float, *, polls: int = 0, started: tuple[str, Any] | None = None,
    since: float | None = None,
) -> None:
    """Read a sync's status until it ends: queued after the relay starts one (and by each in-progress read).

    `started`: (kind, Codat's `SyncSummary`) of a sync just started, whose range is kept to apply it with.
    `since`: a sync Codat starts by itself at that time (its schedule, service/schedules.py): a latest sync
    dated before it is the previous one, so the reads go on until Codat shows the new one ended.
    """
    delay = min(FOLLOW_MAX_S, FOLLOW_FIRST_S * 2.0**polls)
    payload: dict[str, Any] = {"company_id": company_id, "follow": polls}
    if since is not None:
        payload["since"] = since
    async with writer(engine).begin() as conn:
        if started is not None:
            await coverage.record_started(conn, company_id, started[0], started[1], now)
        await queue.enqueue(conn, SYNC_KIND, payload, now=now,
                            queueing_lock=keys.sync_follow_lock(company_id), run_at=now + delay)  # fmt: skip


async def _sync_unchecked(conn: AsyncConnection, now: float) -> list[str]:
    """Companies holding data in Codat whose sync status nobody has seen for a day (a missed sync webhook)."""
    holds_data = sa.exists().where(datasets.c.company_id == companies.c.id, datasets.c.status == "Complete")
    query = sa.select(companies.c.id).where(
        holds_data,
        sa.or_(companies.c.last_sync_checked_at.is_(None), companies.c.last_sync_checked_at < now - SYNC_CHECK_AFTER_S),
    )
    return list((await conn.execute(query)).scalars())


async def _pending(conn: AsyncConnection) -> set[tuple[str, str]]:
    """(company, data type) pairs of unpaused companies with records waiting to be pushed."""
    due: set[tuple[str, str]] = set()
    for data_type in MODELS:
        waiting = sa.exists().where(
            records.c.company_id == companies.c.id, records.c.data_type == data_type,
            IS_PENDING, records.c.inflight.is_(False),
        )  # fmt: skip
        found = await conn.execute(sa.select(companies.c.id).where(companies.c.paused.is_(False), waiting))
        due.update((company_id, data_type) for company_id in found.scalars())
    return due


async def _open(conn: AsyncConnection) -> set[tuple[str, str]]:
    """Pushes sent but never recorded (their job died): the push job resends them under the same key."""
    found = await conn.execute(
        sa.select(pushes.c.company_id, pushes.c.data_type).where(pushes.c.finished_at.is_(None)).distinct()
    )
    return {(row.company_id, row.data_type) for row in found}


async def tell_conflicts(
    notifier: Any, conn: AsyncConnection, company_id: str, data_type: str, ids: list[str]
) -> None:
    """Staff hear of changes to synced records: they are kept, never pushed (Codat rule 7).

    Each record is its own problem (staff reconcile it by hand), told once per window; the records newly
    in conflict at one moment (one intake, one sync check) are told in one notification.
    """

    def build(new: list[str]) -> Notification:
        record_ids = [subject.removeprefix(f"{data_type}:") for subject in new]
        return Notification(
            Kind.UPDATE_CONFLICT,
            f"{len(record_ids)} {data_type} record(s) changed after they were synced to the accounting platform; "
            "the changes are kept and not pushed",
            company_id=company_id, data_type=data_type, subject=new[0],
            details={"count": len(record_ids), "recordIds": record_ids[:CONFLICT_IDS_TOLD],
                     "action": "Reconcile these records in the accounting platform by hand"},
        )  # fmt: skip

    await notifier.notify_new(conn, Kind.UPDATE_CONFLICT, company_id, [f"{data_type}:{i}" for i in ids], build)


async def resolve_conflicts(
    notifier: Any, conn: AsyncConnection, company_id: str, data_type: str, sent: set[str], still: set[str]
) -> int:
    """Records in conflict that intake just got again with the books' own content: those conflicts are over.

    `sent` are the ids of the request, `still` those of them that are (still) in conflict after it.
    """
    if not sent:
        return 0
    candidates = await problems.open_rows(conn, kinds=[Kind.UPDATE_CONFLICT.value], company_id=company_id,
                                          data_type=data_type)  # fmt: skip
    prefix = f"{data_type}:"
    settled = [row["id"] for row in candidates
               if (rid := str(row["subject"]).removeprefix(prefix)) in sent and rid not in still]  # fmt: skip
    if not settled:
        return 0
    return int(await notifier.resolve(conn, "the record was sent again with the content the books hold",
                                      kinds=[Kind.UPDATE_CONFLICT], ids=settled))  # fmt: skip
