"""One valid sample of each record codat-relay takes: the README's quickstart, `make run`'s banner and the
OpenAPI document's examples all show these, and a test validates them against service/records.py's models.
"""

from __future__ import annotations

from typing import Any

SAMPLE_COMPANY = "quickstart-co"
SAMPLES: dict[str, dict[str, Any]] = {
    "orders": {
        "id": "order-1001", "orderNumber": "1001", "currency": "GBP", "totalAmount": 24.5, "totalTaxAmount": 4.08,
        "createdDate": "2025-06-02T09:15:00Z",
        "orderLineItems": [{"id": "line-1", "quantity": 2.0, "unitPrice": 12.25, "totalAmount": 24.5,
                            "productRef": {"id": "sku-latte", "name": "Latte"}}],
    },
    "payments": {
        "id": "payment-1001", "amount": 24.5, "currency": "GBP", "type": "Card", "status": "Paid",
        "createdDate": "2025-06-02T09:15:30Z", "dueDate": "2025-06-02T09:15:30Z",
    },
    "transactions": {
        "id": "txn-1001", "totalAmount": 24.5, "currency": "GBP", "type": "Payment",
        "transactionSourceRef": {"id": "payment-1001", "type": "Payment"}, "createdDate": "2025-06-02T09:16:00Z",
    },
}  # fmt: skip
# An order the quickstart sends after asking the sandbox to fail its dataset.
FAILING_ORDER: dict[str, Any] = {
    "id": "order-1002", "orderNumber": "1002", "currency": "GBP", "totalAmount": 3.2,
    "createdDate": "2025-06-02T09:20:00Z",
}  # fmt: skip
