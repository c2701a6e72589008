"""`make run`'s launcher: generated secrets (kept and reused), the sandbox beside it, wired both ways."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from service.local_run import LOCAL_COMPANY_ID
from service.signatures import decode_secret, sign
from service.testing import read_completed_body
from tests.integration.harness import ROOT, free_port, stop, wait_http


def launch(tmp_path: Path, port: int, sandbox_port: int) -> subprocess.Popen[bytes]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "CODAT_SANDBOX_"))}
    env.update(RELAY_LOCAL_ENV_FILE=str(tmp_path / "local.env"), RELAY_PORT=str(port),
               RELAY_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/relay.db", RELAY_LOG_LEVEL="warning")
    return subprocess.Popen([sys.executable, "-m", "service.local_run", "--sandbox-port", str(sandbox_port)],
                            env=env, cwd=ROOT, stdout=(tmp_path / "out.log").open("ab"), stderr=subprocess.STDOUT)


def test_local_instance_is_authenticated_and_wired_to_the_sandbox(tmp_path: Path) -> None:
    """No configuration: secrets are generated and printed, the sandbox runs with a company made for local use,
    and its webhooks are accepted."""
    port, sandbox_port = free_port(), free_port()
    proc = launch(tmp_path, port, sandbox_port)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc)
        wait_http(f"http://127.0.0.1:{sandbox_port}/_sandbox/config", proc)
        values = dict(line.split("=", 1) for line in (tmp_path / "local.env").read_text().splitlines()
                      if "=" in line and not line.startswith("#"))
        secret = values["RELAY_WEBHOOK_SECRETS"]
        assert secret.startswith("whsec_") and values["RELAY_ADMIN_TOKEN"] and values["RELAY_API_TOKEN"]
        unsigned = httpx.post(f"http://127.0.0.1:{port}/webhooks/codat", json=read_completed_body())
        body = json.dumps(read_completed_body(("commerce-orders", "FetchError"))).encode()
        now = int(time.time())
        signed = httpx.post(f"http://127.0.0.1:{port}/webhooks/codat", content=body, headers={
            "webhook-id": "msg-1", "webhook-timestamp": str(now),
            "webhook-signature": sign(decode_secret(secret), "msg-1", now, body)})
        config = httpx.get(f"http://127.0.0.1:{sandbox_port}/_sandbox/config").json()
        companies = httpx.get(f"http://127.0.0.1:{sandbox_port}/_sandbox/companies").json()["results"]
    finally:
        assert stop(proc, signal.SIGTERM) is not None
    output = (tmp_path / "out.log").read_text()
    assert unsigned.status_code == 401 and signed.status_code == 202
    assert config["webhookUrl"] == f"http://127.0.0.1:{port}/webhooks/codat"
    assert secret in output and "LOCAL CODAT SANDBOX" in output
    assert [c["id"] for c in companies] == [LOCAL_COMPANY_ID] and LOCAL_COMPANY_ID in output  # Codat needs it made

    port = free_port()
    proc = launch(tmp_path, port, free_port())  # the second start reuses the same secrets
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc)
    finally:
        stop(proc, signal.SIGTERM)
    assert (tmp_path / "out.log").read_text().count(secret) >= 2
