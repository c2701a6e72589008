"""What the sandbox holds: datasets, records, syncs, connections; statuses computed lazily from the clock.

A dataset's status is a pure function of (requested, pace, final status, now), so a test with a fixed
clock sees exactly the status it expects, and nothing needs a timer to move it along.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

DATA_TYPES = {
    "commerce-orders": "orders",
    "commerce-payments": "payments",
    "commerce-transactions": "transactions",
}
# The walk every dataset takes before its final status, spread evenly over `pace_seconds`.
PROGRESSION = ("Initial", "Queued", "Fetching", "MapQueued", "Mapping")
ERROR_STATUSES = frozenset(
    {
        "FetchError", "MapError", "InternalError", "ProcessingError", "ValidationError",
        "AuthError", "RateLimitError", "PermissionsError", "PrerequisiteNotMet",
    }
)  # fmt: skip
# Statuses a dataset can end in (scriptable); the other nine of Codat's 21 are intermediate.
FINAL_STATUSES = ERROR_STATUSES | {"Complete", "Cancelled", "NotSupported"}

SYNC_IN_PROGRESS = 1000
SYNC_SUCCESS = frozenset({2000, 2040})
SYNC_STATUS_TEXT = {
    1000: "InProgress", 1010: "InProgress", 2000: "Complete", 2040: "Complete",
    4000: "ConfigurationError", 4040: "CompanyDeleted", 4200: "MapCoreError", 4220: "Deauthorized",
    4260: "BillingExpired", 5000: "InternalError", 5080: "DuplicationProtection",
    5120: "DataProcessingError", 5130: "PushError",
}  # fmt: skip


def stable_id(name: str) -> str:
    """A uuid that is the same on every run for the same name (rule ids, integration ids)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"sandbox:{name}"))


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(value: str) -> float:
    """Seconds since the epoch of an ISO-8601 string; a date alone or a zoneless time is read as UTC.

    Codat reads a zoneless time as local to the business (the spec's "Date time"); the sandbox knows no
    business's zone, so it takes UTC and says so in the README.
    """
    parsed = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


@dataclass
class Connection:
    id: str
    company_id: str
    created: float
    platform_name: str = "Sandbox Commerce"
    integration_key: str = "sbxc"
    source_type: str = "Commerce"
    status: str = "Linked"  # PendingAuth while a new connection waits for the merchant
    deleted: bool = False

    def to_json(self, integration_id: str, source_id: str, last_sync: float | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "integrationId": integration_id,
            "integrationKey": self.integration_key,
            "sourceId": source_id,
            "platformName": self.platform_name,
            "linkUrl": f"https://link-api.codat.io/companies/{self.company_id}/connections/{self.id}/start",
            "status": "Unlinked" if self.deleted else self.status,
            "lastSync": iso(last_sync) if last_sync is not None else None,
            "created": iso(self.created),
            "sourceType": self.source_type,
            "dataConnectionErrors": [],
        }


@dataclass
class Company:
    id: str
    name: str
    created: float
    commerce: Connection
    accounting: Connection
    # Codat's "configured start date": a `latest` sync with no successful sync before it starts here.
    sync_start: float
    # The end of the furthest range a successful sync has covered; `latest` syncs start from it.
    last_successful_finish: float | None = None
    description: str = ""
    # Sync for Commerce's schedule (`Configuration.schedule`, schedule.py): not configured until one is set.
    sync_frequency: str = "Daily"
    sync_hour: int = 0
    time_zone: str = "Europe/London"  # the spec's example
    configured: bool = False
    scheduled_through: float | None = None  # scheduled syncs due up to here have run

    @property
    def connections(self) -> tuple[Connection, Connection]:
        return (self.commerce, self.accounting)

    @property
    def active(self) -> bool:
        """An "active connected company" (ACC) of Codat's rate-limit formula: one linked connection at least."""
        return any(not c.deleted for c in self.connections)

    def to_json(self, connections: list[dict[str, Any]]) -> dict[str, Any]:
        """Codat's `Company` (platform-current.json, sync-commerce-current.json)."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "platform": "",
            "redirect": f"https://link.codat.io/company/{self.id}",
            "lastSync": iso(self.last_successful_finish) if self.last_successful_finish is not None else None,
            "created": iso(self.created),
            "createdByUserName": None,
            "products": ["commerce"],
            "tags": {},
            "dataConnections": connections,
        }


@dataclass
class Dataset:
    id: str
    company_id: str
    connection_id: str
    data_type: str
    requested: float
    pace: float
    final_status: str
    error_message: str | None
    record_ids: list[str]
    records_modified: bool
    notified: bool = False

    def is_terminal(self, now: float) -> bool:
        return self.pace <= 0 or now - self.requested >= self.pace

    def status(self, now: float) -> str:
        if self.is_terminal(now):
            return self.final_status
        stage = int((now - self.requested) / self.pace * len(PROGRESSION))
        return PROGRESSION[max(0, min(stage, len(PROGRESSION) - 1))]

    def to_json(self, now: float) -> dict[str, Any]:
        status = self.status(now)
        terminal = self.is_terminal(now)
        progress = 100 if terminal else int(max(0.0, now - self.requested) / self.pace * 100)
        body: dict[str, Any] = {
            "id": self.id,
            "companyId": self.company_id,
            "connectionId": self.connection_id,
            "dataType": self.data_type,
            "status": status,
            "statusDescription": None,
            "errorMessage": self.error_message if status in ERROR_STATUSES else None,
            "requested": iso(self.requested),
            "progress": progress,
            "isCompleted": status == "Complete",
            "isErrored": status in ERROR_STATUSES,
        }
        if terminal:
            body["completed"] = iso(self.requested + max(self.pace, 0.0))
        return body


@dataclass
class HeldRecord:
    """The latest version of one record as Codat holds it (only from datasets that end Complete)."""

    company_id: str
    data_type: str
    id: str
    data: dict[str, Any]
    dataset_id: str
    pushed_at: float
    deleted: bool = False
    synced: bool = False
    synced_data: dict[str, Any] | None = None
    versions: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "companyId": self.company_id,
            "dataType": self.data_type,
            "id": self.id,
            "data": self.data,
            "datasetId": self.dataset_id,
            "pushedAt": iso(self.pushed_at),
            "deleted": self.deleted,
            "synced": self.synced,
            "versions": self.versions,
        }


@dataclass
class Sync:
    # The spec's SyncStatus example carries two different ids: `commerceSyncId` (the only one SyncSummary
    # has) and `syncId` (the only one CompanySyncStatus has, and get-sync-by-id's path parameter).
    commerce_sync_id: str
    sync_id: str
    company_id: str
    started: float
    pace: float
    range_start: float
    range_finish: float
    final_code: int
    error_message: str | None
    record_keys: list[tuple[str, str, str]]
    finished: bool = False
    # What each record held when the sync started: what the books get, whatever is pushed meanwhile.
    record_data: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)

    def is_terminal(self, now: float) -> bool:
        return self.pace <= 0 or now - self.started >= self.pace

    def code(self, now: float) -> int:
        return self.final_code if self.is_terminal(now) else SYNC_IN_PROGRESS

    def succeeded(self, now: float) -> bool:
        return self.is_terminal(now) and self.final_code in SYNC_SUCCESS

    def _outcome(self, now: float) -> dict[str, Any]:
        code = self.code(now)
        failed = code >= 4000
        return {
            "companyId": self.company_id,
            "syncStatusCode": code,
            "syncStatus": SYNC_STATUS_TEXT.get(code, "Unknown"),
            "errorMessage": (self.error_message or "") if failed else "",
            "syncExceptionMessage": (self.error_message or "") if failed else "",
            "syncUtc": iso(self.started),
            "dataPushed": code == 2000,
        }

    def summary(self, now: float, connections: list[dict[str, Any]]) -> dict[str, Any]:
        """Codat's `SyncSummary` (answer of sync latest/historic): the range it covers and `commerceSyncId`."""
        range_utc = {"start": iso(self.range_start), "finish": iso(self.range_finish)}
        return {"syncDateRangeUtc": range_utc, "commerceSyncId": self.commerce_sync_id,
                **self._outcome(now), "dataConnections": connections}  # fmt: skip

    def status(self, now: float, connections: list[dict[str, Any]]) -> dict[str, Any]:
        """Codat's `SyncStatus` (answer of meta/.../sync/commerce/status): both ids, no range."""
        return {"commerceSyncId": self.commerce_sync_id, "syncId": self.sync_id, **self._outcome(now),
                "dataConnections": connections}  # fmt: skip

    def company_status(self, now: float) -> dict[str, Any]:
        """Codat's `CompanySyncStatus` (the `syncs/...` endpoints): `syncId`, no connections, no range."""
        return {"syncId": self.sync_id, **self._outcome(now)}


@dataclass
class Breach:
    kind: str
    severity: str
    company_id: str
    data_type: str | None
    at: float
    detail: str
    dataset_id: str | None = None
    record_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "severity": self.severity,
            "companyId": self.company_id,
            "dataType": self.data_type,
            "datasetId": self.dataset_id,
            "recordId": self.record_id,
            "detail": self.detail,
            "at": iso(self.at),
        }


@dataclass
class PushLog:
    company_id: str
    data_type: str
    dataset_id: str
    record_ids: list[str]
    at: float
    idempotency_key: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "companyId": self.company_id,
            "dataType": self.data_type,
            "datasetId": self.dataset_id,
            "recordIds": self.record_ids,
            "count": len(self.record_ids),
            "at": iso(self.at),
            "idempotencyKey": self.idempotency_key,
        }
