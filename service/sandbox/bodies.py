"""Webhook bodies in Codat's shapes (FACTS §4): legacy PascalCase alerts and new-style envelopes.

Syncs and envelopes: Codat's new event catalogue has no Sync for Commerce "sync finished" event
(`SyncCompleted`/`SyncFailed` are the legacy names, `expenses.sync.*` belong to Sync for Expenses), so in
the `envelope` shape the sandbox sends nothing when a sync finishes; receivers poll sync status instead.
Likewise a dataset ending `Cancelled`/`NotSupported` is not an "error" by Codat's definition, so legacy
shapes send no alert for it, while `read.completed` reports it like any other final status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.sandbox.model import ERROR_STATUSES, Company, Dataset, Sync, iso, stable_id
from service.sandbox.state import Event, SandboxState


@dataclass(frozen=True)
class Outgoing:
    message_id: str  # webhook-id: the envelope's id, or the legacy AlertId
    event_type: str  # as Codat's event catalogue names it (DataSyncCompleted, read.completed, …)
    body: dict[str, Any]


def build(event: Event, state: SandboxState) -> Outgoing | None:
    """The body Codat would send for `event` in the configured shape, or None when it sends nothing."""
    if state.config.webhook_shape == "envelope":
        return _envelope(event, state)
    return _legacy(event, state)


def _legacy(event: Event, state: SandboxState) -> Outgoing | None:
    company_id = event.company_id
    company = state.company(company_id)
    if event.dataset is not None:
        found = _dataset_alert(event.dataset, state.now())
    elif event.sync is not None:
        found = _sync_alert(event.sync)
    elif event.connection is not None and event.kind == "connection_reconnected":
        conn = event.connection
        data = {"dataConnectionId": conn.id, "platformKey": conn.integration_key, "newStatus": "Linked",
                "oldStatus": "Deauthorized"}
        found = ("DataConnectionStatusChanged", "DataConnectionStatusChanged",
                 f"Data connection {conn.id} for company {company_id} is Linked", data)
    elif event.connection is not None:
        found = (
            "SyncConnectionDeleted",
            "Sync Connection Deleted",
            f"Sync connection for company {company_id} deleted",
            {},
        )
    else:
        return None
    if found is None:
        return None
    event_type, rule_type, message, data = found
    alert_id = state.new_id()
    connection_id = event.connection.id if event.connection is not None else company.commerce.id
    body = {
        "ClientId": state.config.client_id,
        "ClientName": state.config.client_name,
        "CompanyId": company_id,
        "DataConnectionId": connection_id,
        # Codat's rule ids are per client and rule type: stable across alerts, like the real ones.
        "RuleId": stable_id(rule_type),
        "RuleType": rule_type,
        "AlertId": alert_id,
        "Message": message,
        "Data": data,
    }
    return Outgoing(alert_id, event_type, body)


def _dataset_alert(dataset: Dataset, now: float) -> tuple[str, str, str, dict[str, Any]] | None:
    status = dataset.final_status
    plural = dataset.data_type.removeprefix("commerce-")
    if status in ERROR_STATUSES:
        message = f"ERROR: syncing {plural} triggered a {status} notification at {iso(now)}."
        data = {"dataType": dataset.data_type, "datasetStatus": status, "datasetId": dataset.id}
        return "DataSyncStatusChangedToError", "Data Sync Status Changed To Error", message, data
    if status == "Complete":
        message = f"Data sync of type {dataset.data_type} completed for company {dataset.company_id}"
        data = {"dataType": dataset.data_type, "datasetId": dataset.id}
        return "DataSyncCompleted", "Data sync completed", message, data
    return None


def _sync_alert(sync: Sync) -> tuple[str, str, str, dict[str, Any]]:
    prefix = f"Sync {sync.id} for company {sync.company_id} of type Commerce"
    if sync.final_code >= 4000:
        message = f"{prefix} has failed at step Pushing ({sync.final_code})."
        data = {"syncId": sync.id, "syncType": "Commerce", "FailureStage": "Pushing"}
        return "SyncFailed", "Sync Failed", message, data
    message = f"{prefix} completed successfully ({sync.final_code})."
    return "SyncCompleted", "Sync Completed", message, {"syncId": sync.id, "syncType": "Commerce"}


def _envelope(event: Event, state: SandboxState) -> Outgoing | None:
    company = state.company(event.company_id)
    if event.dataset is not None:
        dataset = event.dataset
        event_type = "read.completed"
        payload: dict[str, Any] = {
            "referenceCompany": _reference(company),
            "modifiedFromDate": None,
            # read.completed names the data type and status, never the dataset: receivers must look it up.
            "dataTypes": [
                {
                    "connectionId": dataset.connection_id,
                    "dataType": dataset.data_type,
                    "recordsModified": dataset.records_modified,
                    "status": dataset.final_status,
                    "issues": [],
                }
            ],
        }
    elif event.connection is not None:
        event_type = "connection.reconnected" if event.kind == "connection_reconnected" else "connection.deleted"
        conn = event.connection
        payload = {
            "referenceCompany": _reference(company),
            "connection": conn.to_json(stable_id(conn.integration_key), stable_id(conn.platform_name), None),
        }
    else:
        return None
    envelope_id = state.new_id()
    body = {"id": envelope_id, "eventType": event_type, "generatedDate": iso(state.now()), "payload": payload}
    return Outgoing(envelope_id, event_type, body)


def _reference(company: Company) -> dict[str, Any]:
    return {"id": company.id, "name": f"Sandbox company {company.id[:8]}", "tags": {}}
