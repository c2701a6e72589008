"""All sandbox state, in memory, on one object that lives on the app (never at module level)."""

from __future__ import annotations

import random
import uuid
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from service.clock import Clock
from service.sandbox import rules
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

# A company's "configured start date" for its first sync: the sandbox has none, so a month back.
FIRST_SYNC_LOOKBACK_S = 30 * 24 * 3600
RecordKey = tuple[str, str, str]


@dataclass(frozen=True)
class Scripted:
    outcome: str | int  # a dataset status, or a sync status code
    error_message: str | None


@dataclass(frozen=True)
class Event:
    """Something Codat would send a webhook about; `webhooks.py` turns it into a body per shape."""

    kind: str  # dataset_terminal | sync_finished | connection_deleted | connection_reconnected
    company_id: str
    dataset: Dataset | None = None
    sync: Sync | None = None
    connection: Connection | None = None


class SandboxState:
    def __init__(self, config: SandboxConfig, clock: Clock) -> None:
        self.clock = clock
        self.reset(config)

    def reset(self, config: SandboxConfig | None = None) -> None:
        if config is not None:
            self.config = config
        self.ids = random.Random(self.config.seed)
        # Faults draw from their own generator, so turning a fault on never changes the ids handed out.
        self.fault_rng = random.Random(self.config.seed + 1)
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
        self.in_flight: Counter[tuple[str, str]] = Counter()

    def count_request(self, endpoint: str, status: int, company_id: str | None) -> None:
        self.request_counts[(endpoint, status, company_id)] += 1

    def new_id(self) -> str:
        return str(uuid.UUID(int=self.ids.getrandbits(128), version=4))

    def now(self) -> float:
        return self.clock.now()

    # -- companies and connections ----------------------------------------------------------------

    def company(self, company_id: str) -> Company:
        """Any company id exists on first use: the sandbox has no onboarding to go through."""
        found = self.companies.get(company_id)
        if found is None:
            now = self.now()
            found = Company(
                id=company_id,
                created=now,
                commerce=Connection(self.new_id(), company_id, now),
                accounting=Connection(
                    self.new_id(), company_id, now, "Sandbox Accounting", "sbxa", "Accounting"
                ),
            )
            self.companies[company_id] = found
        return found

    def connections_json(self, company: Company) -> list[dict[str, Any]]:
        last = company.last_successful_finish
        return [
            c.to_json(stable_id(c.integration_key), stable_id(c.platform_name), last)
            for c in (company.commerce, company.accounting)
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

    def reconnect(self, company_id: str) -> Event:
        company = self.company(company_id)
        company.commerce = Connection(self.new_id(), company_id, self.now())
        return Event("connection_reconnected", company_id, connection=company.commerce)

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

    def start_sync(self, company_id: str, start: float | None, finish: float) -> Sync:
        company = self.company(company_id)
        now = self.now()
        due = [
            key
            for key, rec in self.records.items()
            if rec.company_id == company_id
            and self.datasets[rec.dataset_id].status(now) == "Complete"
            and (not rec.synced or rec.data != rec.synced_data)
        ]
        queue = self.scripted_syncs.get(company_id) or self.scripted_syncs.get("*")
        if queue:
            scripted = queue.popleft()
            code, message = int(scripted.outcome), scripted.error_message
        elif company.commerce.deleted:
            code, message = 4220, "The commerce connection has been deleted"
        else:
            code, message = (2000 if due else 2040), None
        if start is None:
            start = company.last_successful_finish or company.created - FIRST_SYNC_LOOKBACK_S
        sync = Sync(
            self.new_id(), company_id, now, self.config.pace_seconds, start, finish, code, message, due,
            record_data={key: self.records[key].data for key in due},
        )
        self.syncs.append(sync)
        return sync

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
        for sync in self.syncs:
            if not sync.notified and sync.is_terminal(now):
                sync.notified = True
                self._finish_sync(sync)
                events.append(Event("sync_finished", sync.company_id, sync=sync))
        return events

    def _finish_sync(self, sync: Sync) -> None:
        if sync.final_code >= 4000:
            return
        for key in sync.record_keys:
            # The version the sync started with reached the books, not one pushed while it ran (that one
            # is a change after the sync, and pushing it again is an update of synced data).
            held = self.records[key]
            held.synced, held.synced_data = True, sync.record_data[key]
        self.companies[sync.company_id].last_successful_finish = sync.range_finish


def data_key(data_type: str) -> str:
    return DATA_TYPES[data_type]
