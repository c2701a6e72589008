"""The real sandbox process sends its webhooks to the real codat-relay process, in all three shapes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.testing import SANDBOX_AUTH, sandbox_company
from tests.conftest import ADMIN_TOKEN, TEST_AUTH_HEADER, TEST_SECRET
from tests.integration.harness import free_port, relay, relay_env, start, stop, wait_http

COMPANY = "co-sandbox-it"
ORDER = {"id": "order-1", "orderNumber": "1", "currency": "GBP", "totalAmount": 10.0,
         "createdDate": "2024-01-01T00:00:00Z", "sourceModifiedDate": "2024-01-01T00:00:00Z"}


def poll(fetch: Any, done: Any, deadline_s: float = 20.0) -> Any:
    deadline = time.monotonic() + deadline_s
    while True:
        value = fetch()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("shape", "svix_headers", "expected_kind"),
    [("legacy", False, "dataset_status"), ("legacy_signed", True, "dataset_status"),
     ("envelope", False, "dataset_status")],
)
def test_sandbox_webhooks_are_accepted_in_every_shape(
    tmp_path: Path, sqlite_template: Path, shape: str, svix_headers: bool, expected_kind: str
) -> None:
    """A scripted FetchError makes the sandbox send an error webhook; codat-relay answers 202 and stores it."""
    db = tmp_path / "relay.db"
    db.write_bytes(sqlite_template.read_bytes())
    relay_port, sandbox_port = free_port(), free_port()
    env = relay_env(f"sqlite+aiosqlite:///{db}", relay_port)
    sandbox_env = {k: v for k, v in env.items() if not k.startswith("RELAY_")}
    sandbox = start(["sandbox", "--port", str(sandbox_port), "--pace-seconds", "0"], sandbox_env,
                    tmp_path / "sandbox.log")
    base = f"http://127.0.0.1:{sandbox_port}"
    try:
        wait_http(f"{base}/_sandbox/config", sandbox)
        sandbox_company(base, COMPANY)
        with relay(["serve"], env, tmp_path / "relay.log"), \
                httpx.Client(base_url=base, timeout=5, headers=SANDBOX_AUTH) as sb:
            sb.post("/_sandbox/config", json={
                "webhookUrl": f"http://127.0.0.1:{relay_port}/webhooks/codat", "webhookShape": shape,
                "webhookSecret": TEST_SECRET, "legacyAuthHeader": TEST_AUTH_HEADER, "svixHeaders": svix_headers,
            }).raise_for_status()
            sb.post("/_sandbox/script/dataset", json={
                "companyId": COMPANY, "dataType": "commerce-orders", "status": "FetchError"}).raise_for_status()
            pushed = sb.post(f"/data/companies/{COMPANY}/sync/commerce-orders", json={"orders": [ORDER]})
            assert pushed.status_code == 200, pushed.text
            deliveries = poll(lambda: sb.post("/_sandbox/tick") and sb.get("/_sandbox/webhooks").json()["results"],
                              lambda ws: any(w["outcome"] != "pending" for w in ws))
            admin = httpx.get(f"http://127.0.0.1:{relay_port}/v1/alerts?companyId={COMPANY}",
                              headers={"authorization": f"Bearer {ADMIN_TOKEN}"}).json()["results"]
    finally:
        stop(sandbox)
    assert deliveries, "the sandbox sent no webhook"
    assert {w["outcome"] for w in deliveries} == {"delivered"}
    assert all(a["status"] == 202 for w in deliveries for a in w["attempts"])
    assert {a["kind"] for a in admin} == {expected_kind} and len(admin) == len(deliveries)
