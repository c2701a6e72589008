"""What a real `codat-relay serve` process writes to its log: JSON lines only, uvicorn's included, no access log,
and a loud warning when webhooks are left unauthenticated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, API_TOKEN, TEST_AUTH_HEADER, TEST_SECRET
from tests.integration.harness import free_port, relay, relay_env

pytestmark = pytest.mark.integration


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of the log as JSON; fails on the first line that is not."""
    parsed = []
    for line in path.read_text().splitlines():
        try:
            parsed.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    return parsed


def test_serve_writes_only_json_lines_including_uvicorns(sqlite_url: str, tmp_path: Path) -> None:
    """uvicorn's own lines come out as JSON through structlog, and a request writes no access line."""
    port, log_path = free_port(), tmp_path / "serve.log"
    env = relay_env(sqlite_url, port, RELAY_LOG_LEVEL="info")
    with relay(["serve"], env, log_path):
        for _ in range(3):
            assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    lines = json_lines(log_path)
    uvicorn_events = {line["event"] for line in lines if line.get("logger", "").startswith("uvicorn")}
    assert "Application startup complete." in uvicorn_events
    assert any(event.startswith("Uvicorn running on") for event in uvicorn_events)
    assert "Finished server process" in " ".join(uvicorn_events)
    assert not [line for line in lines if "/healthz" in json.dumps(line)]  # the access log stays off
    text = log_path.read_text()
    assert not [s for s in (TEST_SECRET, TEST_AUTH_HEADER, API_TOKEN, ADMIN_TOKEN) if s in text]


@pytest.mark.parametrize("command", ["serve", "web"])
def test_unauthenticated_webhooks_are_warned_about_loudly(sqlite_url: str, tmp_path: Path, command: str) -> None:
    """Started with RELAY_ALLOW_UNAUTHENTICATED_WEBHOOKS=true and no secret, the process logs a warning naming it."""
    port, log_path = free_port(), tmp_path / f"{command}.log"
    env = relay_env(sqlite_url, port, RELAY_ALLOW_UNAUTHENTICATED_WEBHOOKS="true")  # at log level warning
    del env["RELAY_WEBHOOK_SECRETS"], env["RELAY_WEBHOOK_AUTH_HEADER"]
    with relay([command], env, log_path):
        pass
    warnings = [line for line in json_lines(log_path) if line["event"] == "webhooks_unauthenticated"]
    assert len(warnings) == 1, log_path.read_text()[-2000:]
    assert warnings[0]["level"] == "warning"
    assert "RELAY_ALLOW_UNAUTHENTICATED_WEBHOOKS=true" in warnings[0]["message"]


def test_no_warning_when_webhooks_are_authenticated(sqlite_url: str, tmp_path: Path) -> None:
    """The control: with signing secrets configured, `serve` logs no unauthenticated-webhooks warning."""
    port, log_path = free_port(), tmp_path / "serve.log"
    with relay(["serve"], relay_env(sqlite_url, port, RELAY_LOG_LEVEL="info"), log_path):
        pass
    events = [line["event"] for line in json_lines(log_path)]
    assert "serving" in events and "webhooks_unauthenticated" not in events


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    db = tmp_path / "relay.db"
    db.write_bytes(sqlite_template.read_bytes())
    return f"sqlite+aiosqlite:///{db}"
