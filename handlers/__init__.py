"""The handler table: "what do we handle?" is answered by reading this one dict."""

from __future__ import annotations

from handlers.company import on_company_deleted
from handlers.connection import on_connection_deleted, on_connection_status
from handlers.dataset_status import on_dataset_status
from handlers.push_operation import on_push_operation
from handlers.rate_limit import on_rate_limit
from handlers.sync import on_sync_completed
from service.types import AlertKind, Handler

REGISTRY: dict[AlertKind, Handler] = {
    AlertKind.DATASET_STATUS: on_dataset_status,
    AlertKind.CONNECTION_DELETED: on_connection_deleted,
    AlertKind.CONNECTION_STATUS: on_connection_status,
    AlertKind.SYNC_COMPLETED: on_sync_completed,
    AlertKind.PUSH_OPERATION: on_push_operation,
    AlertKind.COMPANY_DELETED: on_company_deleted,
    AlertKind.RATE_LIMIT: on_rate_limit,
}
