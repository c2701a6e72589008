"""How a stored alert is shown, the same in the admin API and the CLI."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import RowMapping

from service.clock import iso

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def alert_json(row: RowMapping, *, detail: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row["id"],
        "kind": row["kind"],
        "type": row["type"],
        "companyId": row["company_id"],
        "status": row["status"],
        "attempts": row["attempts"],
        "receivedAt": iso(row["received_at"]),
        "lastError": row["last_error"],
    }
    if detail:
        out.update(
            shape=row["shape"],
            connectionId=row["connection_id"],
            datasetId=row["dataset_id"],
            datasetStatus=row["dataset_status"],
            dataTypes=row["data_types"],
            generatedAt=iso(row["generated_at"]),
            updatedAt=iso(row["updated_at"]),
            body=row["body"].decode("utf-8", errors="replace"),
        )
    return out
