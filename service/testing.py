"""Test doubles shipped with the service: an in-process app with its lifespan, sample deliveries, signing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
from starlette.applications import Starlette

if TYPE_CHECKING:
    from service.web.app import AppOptions

from service.clock import Clock
from service.settings import Settings


def signed_headers(
    body: bytes, secret: str, *, msg_id: str | None = None, at: float | None = None, prefix: str = "webhook-"
) -> dict[str, str]:
    """Standard Webhooks headers for `body`, signed with `secret` (`whsec_…`) at `at` (default now).

    The signature comes from the `standardwebhooks` library (a dev dependency), an oracle we did not
    write, not from the verifier under test. The library signs text; a body that is not UTF-8 (the
    fuzzers send such) is signed as the spec says for raw bytes: HMAC-SHA256 over `id.timestamp.body`.
    """
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    stamp = int(time.time() if at is None else at)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        key = base64.b64decode(secret.removeprefix("whsec_"))
        digest = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
        signature = "v1," + base64.b64encode(digest).decode()
    else:
        from standardwebhooks.webhooks import Webhook  # late: a dev dependency, for tests only

        signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(stamp, UTC), text)
    return {f"{prefix}id": msg_id, f"{prefix}timestamp": str(stamp), f"{prefix}signature": signature}


COMPANY_ID = "8a210b68-6988-11ed-a1eb-0242ac120002"
CONNECTION_ID = "2e9d2c44-1c4b-4a62-8a53-5d4e0a4f2f1c"
# The Codat API key tests give codat-relay; a sandbox without `--api-key` takes any key, but needs one.
SANDBOX_API_KEY = "sandbox-test-key-5e0c"
SANDBOX_AUTH = {"Authorization": "Basic " + base64.b64encode(SANDBOX_API_KEY.encode()).decode()}


@asynccontextmanager
async def running_app(
    settings: Settings, *, clock: Clock | None = None, options: AppOptions | None = None
) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    """The real app with its lifespan, reached in-process through `httpx.ASGITransport`."""
    from service.web.app import create_app  # late: the sample factories below need no app

    app = create_app(settings, clock=clock, options=options)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://relay") as client:
            yield app, client


def legacy_body(rule_type: str = "Data Sync Status Changed To Error", **overrides: Any) -> dict[str, Any]:
    """A PascalCase alert-rule body (FACTS.md §4a)."""
    body: dict[str, Any] = {
        "ClientId": "bae71d36-ff47-420a-b4a6-f8c9ddf41140",
        "ClientName": "Acme",
        "CompanyId": COMPANY_ID,
        "DataConnectionId": CONNECTION_ID,
        "RuleId": "70af3071-65d9-4ec3-b3cb-5283e8d55dac",
        "RuleType": rule_type,
        "AlertId": str(uuid.uuid4()),
        "Message": "ERROR: syncing payments triggered a ProcessingError notification.",
        "Data": {
            "dataType": "commerce-payments",
            "datasetStatus": "ProcessingError",
            "datasetId": "6586f21b-2f5a-4d1c-9b1e-3f6e8a0d4c11",
        },
    }
    body.update(overrides)
    return body


def read_completed_body(*data_types: tuple[str, str], event_key: str = "eventType") -> dict[str, Any]:
    """A `read.completed` envelope (FACTS.md §4c) with one entry per (dataType, status)."""
    return {
        "id": str(uuid.uuid4()),
        event_key: "read.completed",
        "generatedDate": "2024-09-29T20:26:10.344522Z",
        "payload": {
            "referenceCompany": {"id": COMPANY_ID, "name": "Toft stores", "tags": {}},
            "modifiedFromDate": None,
            "dataTypes": [
                {"connectionId": CONNECTION_ID, "dataType": dt, "recordsModified": True, "status": st, "issues": []}
                for dt, st in data_types
            ],
        },
    }


def connection_deleted_body() -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "eventType": "connection.deleted",
        "generatedDate": "2024-08-08T17:10:34.015Z",
        "payload": {
            "referenceCompany": {"id": COMPANY_ID, "name": "Toft stores"},
            "connection": {
                "id": CONNECTION_ID,
                "integrationKey": "gbol",
                "sourceType": "Accounting",
                "platformName": "Xero",
                "status": "Deauthorized",
                "dataConnectionErrors": [],
            },
        },
    }


def sandbox_company(sandbox_url: str, company_id: str | None = None, *, sync_start: str | None = None) -> str:
    """Create a company in a sandbox process (Codat knows none until created); returns its id.

    The one way tests and benchmarks get companies into a sandbox they reach over HTTP (an in-process one
    takes `running_sandbox(companies=…)`). An id given is kept; none gets a uuid, as Codat would issue.
    `sync_start`: the company's configured sync start date (ISO-8601; the sandbox's default is a month back).
    """
    company_id = company_id or str(uuid.uuid4())
    body = {"id": company_id, **({"syncStartDate": sync_start} if sync_start else {})}
    answer = httpx.post(f"{sandbox_url}/_sandbox/companies", json=body, timeout=10)
    answer.raise_for_status()
    return company_id


@asynccontextmanager
async def running_sandbox(
    *, companies: Iterable[str] = (), clock: Clock | None = None, **config: Any
) -> AsyncIterator[tuple[Starlette, httpx.AsyncBaseTransport]]:
    """The Codat sandbox in-process with its lifespan; pass the transport to codat-relay's Codat client.

    Codat knows no company until it is created: `companies` are created (linked) before it is handed over.
    """
    from service.sandbox import SandboxConfig, create_sandbox_app

    config.setdefault("pace_seconds", 0.0)
    config.setdefault("push_processing_seconds", 0.0)
    app = create_sandbox_app(SandboxConfig(**config), clock=clock)
    async with app.router.lifespan_context(app):
        for company_id in companies:
            app.state.sandbox.state.create_company(company_id)
        yield app, httpx.ASGITransport(app=app)
