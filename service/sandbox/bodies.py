"""Webhook bodies exactly as Codat documents them (`specs/webhooks-2024-10.yaml`, FACTS §4 and §6).

Legacy shapes (PascalCase alert rules) send only documented Sync for Commerce rules:
- *Data Sync Status Changed To Error* (`DatasetStatusChangedErrorWebhook`) and *Data sync completed*
  (`DataSyncCompletedWebhook`): `ClientId, ClientName, CompanyId, DataConnectionId, RuleId, RuleType,
  AlertId, Message, Data{dataType, [datasetStatus,] datasetId}`.
- *Sync Connection Deleted* (`SyncConnectionDeletedWebhook`): `ClientId, ClientName, CompanyId, RuleId,
  RuleType, AlertId, Message` — no `DataConnectionId`, no `Data`.
- *DataConnectionStatusChanged* (`ConnectionStatusChangedWebhook`) when a new connection links:
  `Data{dataConnectionId, platformKey, newStatus, oldStatus}`.
*Sync Completed* / *Sync Failed* are Sync for Expenses rules ("Expenses only", core-rules-types.md), so a
Sync for Commerce sync sends nothing in any shape: its outcome is learned by polling sync status.

Envelopes: `read.completed` (no dataset id), `connection.deleted`, `connection.created` then
`connection.connected` for a relink (a NEW connection id: the deleted one never comes back), and
`company.created` (the company is `payload.id`, no `referenceCompany`). A dataset ending
`Cancelled`/`NotSupported` is no "error" by Codat's definition, so legacy shapes send no alert for it,
while `read.completed` reports it like any other final status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.sandbox.model import ERROR_STATUSES, Company, Connection, Dataset, iso, stable_id
from service.sandbox.ratelimit import REACHED, RESET, reset_at
from service.sandbox.state import Event, SandboxState

ENVELOPE_TYPES = {
    "dataset_terminal": "read.completed",
    "connection_deleted": "connection.deleted",
    "connection_created": "connection.created",
    "connection_connected": "connection.connected",
    "company_created": "company.created",
}


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


# -- legacy alert rules ------------------------------------------------------------------------------

Rule = tuple[str, str, str, dict[str, Any] | None]  # event type, RuleType, Message, Data (None: no Data)


def _legacy(event: Event, state: SandboxState) -> Outgoing | None:
    company_id = event.company_id
    rule: Rule | None = None
    if event.dataset is not None:
        rule = _dataset_rule(event.dataset, state.now())
    elif event.kind == "connection_deleted":
        rule = ("SyncConnectionDeleted", "Sync Connection Deleted",
                f"Sync connection for company {company_id} deleted", None)  # fmt: skip
    elif event.kind == "connection_connected" and event.connection is not None:
        rule = _status_changed(event.connection)
    if rule is None:
        return None
    event_type, rule_type, message, data = rule
    alert_id = state.new_id()
    body: dict[str, Any] = {"ClientId": state.config.client_id, "ClientName": state.config.client_name,
                            "CompanyId": company_id}  # fmt: skip
    if data is not None:  # every documented rule with `Data` also names the connection
        connection = event.connection.id if event.connection is not None else _connection_of(event, state)
        body["DataConnectionId"] = connection
    # Codat's rule ids are per client and rule type: stable across alerts, like the real ones.
    body |= {"RuleId": stable_id(rule_type), "RuleType": rule_type, "AlertId": alert_id, "Message": message}
    if data is not None:
        body["Data"] = data
    return Outgoing(alert_id, event_type, body)


def _connection_of(event: Event, state: SandboxState) -> str:
    if event.dataset is not None:
        return event.dataset.connection_id
    return state.company(event.company_id).commerce.id


def _dataset_rule(dataset: Dataset, now: float) -> Rule | None:
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


def _status_changed(conn: Connection) -> Rule:
    data = {"dataConnectionId": conn.id, "newStatus": conn.status, "oldStatus": "PendingAuth",
            "platformKey": conn.integration_key}  # fmt: skip
    message = f"Data connection for {conn.platform_name} status changed from PendingAuth to {conn.status}"
    return "DataConnectionStatusChanged", "DataConnectionStatusChanged", message, data


# -- envelopes ---------------------------------------------------------------------------------------


def _envelope(event: Event, state: SandboxState) -> Outgoing | None:
    if event.kind in (REACHED, RESET):
        return _rate_limit(event.kind, state)
    event_type = ENVELOPE_TYPES.get(event.kind)
    if event_type is None:
        return None
    company = state.company(event.company_id)
    payload: dict[str, Any]
    if event.dataset is not None:
        payload = _read_completed(company, event.dataset)
    elif event.connection is not None:
        conn = event.connection
        payload = {
            "referenceCompany": _reference(company),
            "connection": conn.to_json(stable_id(conn.integration_key), stable_id(conn.platform_name), None),
        }
    else:  # company.created: CompanyWebhook's payload is the company's details, its id `payload.id`
        payload = {key: value for key, value in company.to_json([]).items() if key != "dataConnections"}
    envelope_id = state.new_id()
    body = {"id": envelope_id, "eventType": event_type, "generatedDate": iso(state.now()), "payload": payload}
    return Outgoing(envelope_id, event_type, body)


def _rate_limit(event_type: str, state: SandboxState) -> Outgoing:
    """ClientRateLimitWebhook: `dailyQuota`, `quotaRemaining`, `expiryDate` (when the quota resets)."""
    now, limit = state.now(), state.daily_quota()
    remaining = max(0, limit - state.quota.used)
    payload = {"dailyQuota": limit, "quotaRemaining": remaining, "expiryDate": iso(reset_at(now))}
    envelope_id = state.new_id()
    body = {"id": envelope_id, "eventType": event_type, "generatedDate": iso(now), "payload": payload}
    return Outgoing(envelope_id, event_type, body)


def _read_completed(company: Company, dataset: Dataset) -> dict[str, Any]:
    return {
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


def _reference(company: Company) -> dict[str, Any]:
    return {"id": company.id, "name": company.name, "tags": {}}
