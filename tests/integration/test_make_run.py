"""`make run`'s launcher: generated secrets (kept and reused), the sandbox beside it, wired both ways."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from service.alerts import SUBSCRIBED_EVENT_TYPES
from service.dev.local_run import LOCAL_COMPANY_ID
from service.testing import read_completed_body, signed_headers
from tests.integration.harness import ROOT, free_port, stop, wait_http

BANNER_DEADLINE_S = 120.0


def launch(tmp_path: Path, port: int, sandbox_port: int) -> subprocess.Popen[bytes]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "CODAT_SANDBOX_"))}
    env.update(RELAY_LOCAL_ENV_FILE=str(tmp_path / "local.env"), RELAY_PORT=str(port),
               RELAY_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/relay.db", RELAY_LOG_LEVEL="warning")
    with (tmp_path / "out.log").open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "service.dev.local_run", "--sandbox-port", str(sandbox_port)],
                                env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


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
        signed = httpx.post(f"http://127.0.0.1:{port}/webhooks/codat", content=body,
                            headers=signed_headers(body, secret, msg_id="msg-1"))
        portal = httpx.get(f"http://127.0.0.1:{sandbox_port}/_sandbox/consumers").json()["results"]
        tests = [httpx.post(f"http://127.0.0.1:{sandbox_port}/_sandbox/consumers/{c['id']}/test", timeout=20).json()
                 for c in portal]  # fmt: skip
        companies = httpx.get(f"http://127.0.0.1:{sandbox_port}/_sandbox/companies").json()["results"]
    finally:
        assert stop(proc, signal.SIGTERM) is not None
    output = (tmp_path / "out.log").read_text()
    assert unsigned.status_code == 401 and signed.status_code == 202
    # Wired by `codat-relay subscribe`: one consumer per needed type at the relay, each one's secret accepted.
    assert sorted(t for c in portal for t in c["eventTypes"]) == sorted(SUBSCRIBED_EVENT_TYPES)
    assert {c["url"] for c in portal} == {f"http://127.0.0.1:{port}/webhooks/codat"}
    assert all(t["status"] in (200, 202) for t in tests), tests
    assert secret in output and "LOCAL CODAT SANDBOX" in output
    assert [c["id"] for c in companies] == [LOCAL_COMPANY_ID] and LOCAL_COMPANY_ID in output  # Codat needs it made

    port = free_port()
    proc = launch(tmp_path, port, free_port())  # the second start reuses the same secrets
    try:
        # Its banner, not its /readyz: make run prints the banner a moment after the relay answers.
        deadline = time.monotonic() + BANNER_DEADLINE_S
        while (tmp_path / "out.log").read_text().count(secret) < 2 and proc.poll() is None:
            assert time.monotonic() < deadline, "the second start printed no banner"
            time.sleep(0.2)
    finally:
        stop(proc, signal.SIGTERM)
    assert (tmp_path / "out.log").read_text().count(secret) >= 2


def test_a_port_someone_else_holds_stops_make_run_loudly(tmp_path: Path) -> None:
    """The sandbox's port taken: exit 1 naming it, before serving (pushes would go to whatever holds it)."""
    import socket

    port, holder = free_port(), socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    try:
        proc = launch(tmp_path, port, taken)
        code = proc.wait(60)
    finally:
        holder.close()
    output = (tmp_path / "out.log").read_text()
    assert code == 1
    assert f"make run: FAILED: the sandbox's port {taken} is in use" in output and "CODAT_SANDBOX_PORT" in output
    assert "codat-relay local instance at" not in output  # no banner for what does not run


def test_the_file_tells_the_cli_where_the_instance_is(tmp_path: Path) -> None:
    """After start-up the file holds the absolute database, the sandbox's URL and key, and the relay's URL."""
    port, sandbox_port = free_port(), free_port()
    proc = launch(tmp_path, port, sandbox_port)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc)
        deadline = time.monotonic() + 30
        while "CODAT_RELAY_URL" not in (tmp_path / "local.env").read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        values = dict(line.split("=", 1) for line in (tmp_path / "local.env").read_text().splitlines()
                      if "=" in line and not line.startswith("#"))
    finally:
        stop(proc, signal.SIGTERM)
    assert values["CODAT_RELAY_URL"] == f"http://127.0.0.1:{port}"
    assert values["RELAY_CODAT_BASE_URL"] == f"http://127.0.0.1:{sandbox_port}"
    assert values["RELAY_CODAT_API_KEY"] == "sandbox-key"
    assert values["RELAY_DATABASE_URL"] == f"sqlite+aiosqlite:///{tmp_path}/relay.db"
    output = (tmp_path / "out.log").read_text()
    assert f"sandbox serving at http://127.0.0.1:{sandbox_port}" in output and "/docs" in output
