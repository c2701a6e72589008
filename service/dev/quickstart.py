"""The quickstart: copy-paste shell commands against `make run`, printed in its banner and kept in the README.

tests/integration/test_quickstart.py runs the README's blocks verbatim against a `make run` process, and
tests/test_quickstart_text.py checks that the README holds exactly these.
"""

from __future__ import annotations

import json
from typing import Any

from service.samples import FAILING_ORDER, SAMPLE_COMPANY, SAMPLES

FAILURE_MESSAGE = "Order order-1002: location till-9 does not exist in the accounting platform"
CURL = "curl -sS --fail-with-body -w '\\n'"  # fail loudly on 4xx/5xx, showing the body; one answer a line
JSON_HEADER = "-H 'Content-Type: application/json'"


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "))


def _put(data_type: str, record: dict[str, Any]) -> str:
    url = f'"$RELAY/v1/companies/{SAMPLE_COMPANY}/records/{data_type}"'
    return "\n".join([
        f"{CURL} -X PUT {url} \\",
        f'  -H "Authorization: Bearer $TOKEN" {JSON_HEADER} \\',
        f"  -d '{_compact({'records': [record]})}'",
    ])  # fmt: skip


def push_block() -> str:
    """Three records, one of each data type; each answers 202 {"accepted": 1, …}."""
    return "\n".join([
        "# in the folder where `make run` runs: it keeps the tokens and URLs in .relay-local.env",
        "RELAY=$(grep '^CODAT_RELAY_URL=' .relay-local.env | cut -d= -f2-)",
        "TOKEN=$(grep '^RELAY_API_TOKEN=' .relay-local.env | cut -d= -f2-)",
        '# an order, a payment and a transaction: each answers {"accepted": 1, …}',
        _put("orders", SAMPLES["orders"]),
        _put("payments", SAMPLES["payments"]),
        _put("transactions", SAMPLES["transactions"]),
    ])  # fmt: skip


def failure_block() -> str:
    """The sandbox fails the next orders dataset and deletes the connection; the CLI shows the outcome."""
    script = {"companyId": SAMPLE_COMPANY, "dataType": "commerce-orders", "status": "ValidationError",
              "errorMessage": FAILURE_MESSAGE}  # fmt: skip
    return "\n".join([
        "SANDBOX=$(grep '^RELAY_CODAT_BASE_URL=' .relay-local.env | cut -d= -f2-)",
        "# the sandbox will fail the next orders dataset with a ValidationError (a person must fix the data)",
        f'{CURL} -X POST "$SANDBOX/_sandbox/script/dataset" {JSON_HEADER} \\',
        f"  -d '{_compact(script)}'",
        "# ... and the next order lands in it",
        _put("orders", FAILING_ORDER),
        "# the merchant's connection is deleted: codat-relay pauses the company and tells staff",
        f'{CURL} -X POST "$SANDBOX/_sandbox/companies/{SAMPLE_COMPANY}/delete-connection"',
        "# a few seconds later: what codat-relay made of it (or open the page: $RELAY/ui)",
        f".venv/bin/codat-relay companies show {SAMPLE_COMPANY}",
    ])  # fmt: skip


def quickstart_text(*, sandbox: bool) -> str:
    """The banner's part: the three records to push (the README's Quickstart has the rest)."""
    lines = ["Quickstart (the README's Quickstart has the same, then how to make the sandbox fail):", "",
             push_block()]  # fmt: skip
    if not sandbox:
        lines += ["", "(with a real Codat key these push to Codat itself: use a test company)"]
    return "\n".join(lines)
