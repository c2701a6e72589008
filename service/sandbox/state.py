"""All sandbox state, in memory, on one object that lives on the app (never at module level)."""

from __future__ import annotations

import random
import uuid
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from service.clock import Clock
from service.sandbox import rules, schedule
from service.sandbox.config import SandboxConfig
from service.sandbox.faults import EndpointFaults, WebhookFaults
from service.sandbox.idempotency import IdempotencyStore
from service.sandbox.model import (
    DATA_TYPES,
    ERROR_STATUSES,
    Breach,
    Company,
    Connection,
    Dataset,
    HeldRecord,
    PushLog,
    Sync,
    stable_id,
)
from service.sandbox.ratelimit import Concurrency, DailyQuota, codat_quota

# A company's "configured start date" when none is given: the sandbox has no sync flow, so a month back.
FIRST_SYNC_LOOKBACK_S = 30 * 24 * 3600
RecordKey = tuple[str, str, str]


@dataclass(frozen=True)
class Scripted:
    outcome: str | int  # a dataset status, or a sync status code
    error_message: str | None


@dataclass(frozen=True)
class Event:
    """Something Codat would send a webhook about; `bodies.py` turns it into a body per shape.

    kind: dataset_terminal | connection_deleted | connection_created | connection_connected | company_created |
    client.rateLimit.reached | client.rateLimit.reset.
    A finished sync is no event: Codat sends no Sync for Commerce sync webhook (FACTS §6).
    """

    kind: str
    company_id: str  # "" for the client's own events (rate limits)
    dataset: Dataset | None = None
    connection: Connection | None = None


class ShiftedClock:
    """The sandbox's clock: the one it was given, moved by `/_sandbox/clock` (a process has no other seam)."""

    def __init__(self, inner: Clock) -> None:
        self.inner, self.offset = inner, 0.0

    def now(self) -> float:
        return self.inner.now() + self.offset

    def set(self, value: float) -> None:
        self.offset = value - self.inner.now()


class SandboxState:
    def __init__(self, config: SandboxConfig, clock: Clock) -> None:
        self.clock = clock
        self.reset(config)

    def reset(self, config: SandboxConfig | None = None) -> None:
        if config is not None:
            self.config = config
        # Only faults are seeded: ids come from uuid4, so a restarted sandbox never reissues an id a
        # client has stored (a dataset id, a sync id, a connection id) — as Codat never would.
        self.fault_rng = random.Random(self.config.seed)
        self.companies: dict[str, Company] = {}
        self.datasets: dict[str, Dataset] = {}
        self.records: dict[RecordKey, HeldRecord] = {}
        self.pushes: list[PushLog] = []
        self.syncs: list[Sync] = []
        self.breaches: list[Breach] = []
        self.request_counts: Counter[tuple[str, int, str | None]] = Counter()  # (endpoint, status, company)
        self.scripted_datasets: dict[tuple[str, str], deque[Scripted]] = {}
        self.scripted_syncs: dict[str, deque[Scripted]] = {}
        self.faults: dict[str, EndpointFaults] = {}
        self.webhook_faults = WebhookFaults()
        self.idempotency = IdempotencyStore()
        self.quota = DailyQuota()
        self.concurrency = Concurrency()
        self.in_flight: Counter[tuple[str, str]] = Counter()

    def count_request(self, endpoint: str, status: int, company_id: str | None) -> None:
        self.request_counts[(endpoint, status, company_id)] += 1

    def new_id(self) -> str:
        return str(uuid.uuid4())

    def now(self) -> float:
        return self.clock.now()

    def quota_events(self) -> list[Event]:
        """The rate-limit events due (the quota just spent, or whole again), for the webhook sender."""
        return [Event(kind, "") for kind in self.quota.drain()]

    def daily_quota(self) -> int:
        if self.config.daily_quota is not None:
            return self.config.daily_quota
        return codat_quota(sum(1 for c in self.companies.values() if c.active))

    # -- companies and connections ----------------------------------------------------------------

    def create_company(
        self, company_id: str | None = None, name: str | None = None, *, description: str = "",
        sync_start: float | None = None,
    ) -> tuple[Company, list[Event]]:  # fmt: skip
        """A new company, its commerce and accounting connections linked (the sandbox has no Link flow)."""
        company_id = company_id or self.new_id()
        if company_id in self.companies:
            raise ValueError(f"company {company_id} exists already")
        now = self.now()
        company = Company(
            id=company_id,
            name=name or f"Sandbox company {company_id[:8]}",
            created=now,
            commerce=Connection(self.new_id(), company_id, now),
            accounting=Connection(self.new_id(), company_id, now, "Sandbox Accounting", "sbxa", "Accounting"),
            sync_start=now - FIRST_SYNC_LOOKBACK_S if sync_start is None else sync_start,
            description=description,
        )
        self.companies[company_id] = company
        return company, [Event("company_created", company_id)]

    def find_company(self, company_id: str | None) -> Company | None:
        return self.companies.get(company_id) if company_id is not None else None

    def company(self, company_id: str) -> Company:
        """A company the caller has checked exists (Codat endpoints answer 404 before getting here)."""
        return self.companies[company_id]

    def connections_json(self, company: Company) -> list[dict[str, Any]]:
        last = company.last_successful_finish
        return [
            c.to_json(stable_id(c.integration_key), stable_id(c.platform_name), last)
            for c in company.connections
            if not c.deleted
        ]

    def delete_connection(self, company_id: str, connection_id: str | None = None) -> Event | None:
        company = self.company(company_id)
        conn = company.commerce
        if connection_id is not None and connection_id not in {conn.id, company.accounting.id}:
            return None
        if connection_id == company.accounting.id:
            conn = company.accounting
        conn.deleted = True
        return Event("connection_deleted", company_id, connection=conn)

    def reconnect(self, company_id: str) -> list[Event]:
        """The merchant links commerce again: a NEW connection, created (PendingAuth), then connected."""
        company = self.company(company_id)
        created = Connection(self.new_id(), company_id, self.now(), status="PendingAuth")
        pending = Connection(created.id, company_id, created.created, status="PendingAuth")
        created.status = "Linked"
        company.commerce = created
        return [Event("connection_created", company_id, connection=pending),
                Event("connection_connected", company_id, connection=created)]  # fmt: skip

    # -- breaches ---------------------------------------------------------------------------------

    def breach(
        self, kind: str, company_id: str, data_type: str | None, detail: str, **ids: str | None
    ) -> None:
        self.breaches.append(
            Breach(kind, rules.BREACH_KINDS[kind], company_id, data_type, self.now(), detail, **ids)
        )

    # -- datasets ---------------------------------------------------------------------------------

    def script_dataset(
        self, company_id: str, data_type: str, status: str, times: int, message: str | None
    ) -> None:
        queue = self.scripted_datasets.setdefault((company_id, data_type), deque())
        queue.extend(Scripted(status, message) for _ in range(times))

    def _next_outcome(self, company_id: str, data_type: str) -> Scripted:
        for key in ((company_id, data_type), ("*", data_type), (company_id, "*"), ("*", "*")):
            queue = self.scripted_datasets.get(key)
            if queue:
                return queue.popleft()
        return Scripted("Complete", None)

    def record_push(
        self, company_id: str, data_type: str, records: list[dict[str, Any]], idempotency_key: str | None
    ) -> Dataset:
        """A dataset for one accepted push; its records become Codat's only if it will end Complete."""
        company = self.company(company_id)
        outcome = self._next_outcome(company_id, data_type)
        if str(outcome.outcome) in ERROR_STATUSES and outcome.error_message is None:
            message: str | None = f"Sandbox: scripted {outcome.outcome}"
        else:
            message = outcome.error_message
        now = self.now()
        dataset = Dataset(
            id=self.new_id(),
            company_id=company_id,
            connection_id=company.commerce.id,
            data_type=data_type,
            requested=now,
            pace=self.config.pace_seconds,
            final_status=str(outcome.outcome),
            error_message=message,
            record_ids=[str(r["id"]) for r in records],
            records_modified=False,
        )
        findings = rules.check_records(records, lambda rid: self.records.get((company_id, data_type, rid)))
        for f in findings:
            self.breach(f.kind, company_id, data_type, f.detail, dataset_id=dataset.id, record_id=f.record_id)
        if dataset.final_status == "Complete":
            stale = {f.record_id for f in findings if f.kind == "stale_update"}
            dataset.records_modified = self._apply(dataset, [r for r in records if str(r["id"]) not in stale])
        self.datasets[dataset.id] = dataset
        self.pushes.append(
            PushLog(company_id, data_type, dataset.id, dataset.record_ids, now, idempotency_key)
        )
        return dataset

    def _apply(self, dataset: Dataset, records: list[dict[str, Any]]) -> bool:
        modified = False
        for record in records:
            key = (dataset.company_id, dataset.data_type, str(record["id"]))
            held = self.records.get(key)
            if held is None:
                held = HeldRecord(
                    dataset.company_id, dataset.data_type, key[2], record, dataset.id, self.now()
                )
                self.records[key] = held
                modified = True
            elif held.data != record:
                held.data, held.dataset_id, held.pushed_at = record, dataset.id, self.now()
                held.versions += 1
                modified = True
            held.deleted = rules.is_delete(record)
        return modified

    # -- syncs ------------------------------------------------------------------------------------

    def script_sync(self, company_id: str, code: int, times: int, message: str | None) -> None:
        queue = self.scripted_syncs.setdefault(company_id, deque())
        queue.extend(Scripted(code, message) for _ in range(times))

    def latest_range_start(self, company: Company) -> float:
        """`sync/commerce/latest` starts at the last successful sync, else at the configured start date."""
        return company.last_successful_finish if company.last_successful_finish is not None else company.sync_start

    def start_sync(self, company_id: str, start: float, finish: float, *, at: float | None = None) -> Sync:
        """A sync of the records Codat holds (Complete at the start) whose date lies in [start, finish).

        `at`: when it starts, if not now (a scheduled sync the clock has just passed).
        """
        company = self.company(company_id)
        now = self.now() if at is None else at
        due = [
            key
            for key, rec in self.records.items()
            if rec.company_id == company_id
            and self.datasets[rec.dataset_id].status(now) == "Complete"
            and (not rec.synced or rec.data != rec.synced_data)
            and rules.covered(rec.data, start, finish)
        ]
        code, message = self._sync_outcome(company, due)
        sync = Sync(
            self.new_id(), self.new_id(), company_id, now, self.config.pace_seconds, start, finish, code, message,
            due, record_data={key: self.records[key].data for key in due},
        )  # fmt: skip
        self.syncs.append(sync)
        return sync

    def _sync_outcome(self, company: Company, due: list[RecordKey]) -> tuple[int, str | None]:
        queue = self.scripted_syncs.get(company.id) or self.scripted_syncs.get("*")
        if queue:
            scripted = queue.popleft()
            return int(scripted.outcome), scripted.error_message
        if company.commerce.deleted:
            return 4220, "The commerce connection has been deleted"
        return (2000 if due else 2040), None

    def company_syncs(self, company_id: str) -> list[Sync]:
        return [s for s in self.syncs if s.company_id == company_id]

    def latest_sync(self, company_id: str) -> Sync | None:
        return next((s for s in reversed(self.syncs) if s.company_id == company_id), None)

    # -- time passing -----------------------------------------------------------------------------

    def advance(self) -> list[Event]:
        """Settle everything whose time has come; the events are what Codat would send webhooks about."""
        now = self.now()
        events: list[Event] = []
        for dataset in self.datasets.values():
            if not dataset.notified and dataset.is_terminal(now):
                dataset.notified = True
                events.append(Event("dataset_terminal", dataset.company_id, dataset=dataset))
        for company in self.companies.values():
            due = schedule.due_sync(company, now)
            if due is not None:  # Codat's scheduled sync: `latest`, from the last success to the sync time
                company.scheduled_through = due
                self.start_sync(company.id, self.latest_range_start(company), due, at=due)
        for sync in self.syncs:
            if not sync.finished and sync.is_terminal(now):
                sync.finished = True
                self._finish_sync(sync)
        return events

    def _finish_sync(self, sync: Sync) -> None:
        if sync.final_code >= 4000:
            return
        for key in sync.record_keys:
            # The version the sync started with reached the books, not one pushed while it ran (that one
            # is a change after the sync, and pushing it again is an update of synced data).
            held = self.records[key]
            held.synced, held.synced_data = True, sync.record_data[key]
        company = self.companies[sync.company_id]
        # A historic sync of an old range never moves "last sync" back (the next `latest` would re-cover it).
        last = company.last_successful_finish
        company.last_successful_finish = sync.range_finish if last is None else max(last, sync.range_finish)


def data_key(data_type: str) -> str:
    return DATA_TYPES[data_type]
