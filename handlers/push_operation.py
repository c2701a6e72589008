"""Push-operation alerts (*Push Operation Status Changed()*, *Timed Out*, `{dataType}.write.*`).

Sync for Commerce pushes are tracked through their datasets; push operations belong to Codat's write
APIs, which codat-relay does not use. They are kept (visible in /v1/alerts) and a failure is told to
staff, since only a person can tell what wrote to that company — once per push operation, however many
alerts (rules, retries) report it.
"""

from __future__ import annotations

import json

from service.notifications import Kind, Notification
from service.types import Alert, Context, Outcome

FAILED = ("failed", "timedout", "timed out", "unsuccessful")


def operation_key(alert: Alert) -> str | None:
    """The push operation (write request) an alert speaks of: legacy `Data.pushOperationKey`, new `payload.id`."""
    try:
        body = json.loads(alert.body)
    except ValueError:
        return None
    holder: object = (body.get("Data") or body.get("payload")) if isinstance(body, dict) else None
    if not isinstance(holder, dict):
        return None
    key = holder.get("pushOperationKey") or holder.get("id")
    return key.strip() or None if isinstance(key, str) else None


async def on_push_operation(alert: Alert, ctx: Context) -> Outcome:
    status = (alert.dataset_status or "").lower()
    failed = any(word in status or word in alert.type.lower() for word in FAILED)
    if not failed or not alert.company_id:
        return Outcome.IGNORED
    operation = operation_key(alert)
    await ctx.notifier.notify(Notification(
        Kind.DATASET_FAILED, f"A Codat push operation failed ({alert.type})", company_id=alert.company_id,
        data_type=alert.data_type, subject=f"push_operation:{operation or alert.delivery_id}",
        details={"event": alert.type, "status": alert.dataset_status, "operation": operation,
                 "alertId": alert.delivery_id},
    ))  # fmt: skip
    return Outcome.DONE
