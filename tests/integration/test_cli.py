"""The `codat-relay` command line as an operator runs it: tables, --json, and exit codes 0 / 1 / 2."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from service.testing import legacy_body, sandbox_company
from tests.conftest import TEST_AUTH_HEADER
from tests.integration.harness import ROOT, free_port, relay, relay_env, start, stop, wait_http


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def env(tmp_path: Path, sqlite_template: Path) -> dict[str, str]:
    db = tmp_path / "relay.db"
    db.write_bytes(sqlite_template.read_bytes())
    return relay_env(f"sqlite+aiosqlite:///{db}", free_port())


def test_alert_commands_list_show_replay(env: dict[str, str], tmp_path: Path) -> None:
    """Alerts received by the server are listed, shown and replayed from the CLI."""
    import httpx

    payload = legacy_body()
    with relay(["web"], env, tmp_path / "relay.log"):
        answer = httpx.post(f"http://127.0.0.1:{env['RELAY_PORT']}/webhooks/codat", json=payload,
                            headers={"authorization": TEST_AUTH_HEADER})
        assert answer.status_code == 202
    table = run(env, "alerts", "list")
    listed = run(env, "alerts", "list", "--json", "--kind", "dataset_status")
    shown = run(env, "alerts", "show", payload["AlertId"], "--json")
    replayed = run(env, "alerts", "replay", payload["AlertId"])
    missing = run(env, "alerts", "show", "no-such-alert")
    assert table.returncode == 0 and "KIND" in table.stdout and payload["AlertId"] in table.stdout
    assert [a["id"] for a in json.loads(listed.stdout)] == [payload["AlertId"]]
    assert json.loads(json.loads(shown.stdout)["body"]) == payload
    assert replayed.returncode == 0 and "queued" in replayed.stdout
    assert missing.returncode == 1 and missing.stderr.strip() == "codat-relay: no alert no-such-alert"


@pytest.mark.parametrize(
    "args",
    [("alerts", "list", "--status", "weird"), ("alerts", "show"), ("no-such-command",), ("sync", "historic", "co"),
     *(("alerts", "list", "--limit", bad) for bad in ("0", "-1", "1001", "ten", "5.0"))],
)  # fmt: skip
def test_bad_usage_exits_2(env: dict[str, str], args: tuple[str, ...]) -> None:
    """Wrong arguments, and an alerts --limit outside the API's 1-1000: exit 2 with the usage."""
    result = run(env, *args)
    assert result.returncode == 2 and "usage:" in result.stderr
    if "--limit" in args:
        assert "--limit: must be a whole number from 1 to 1000" in result.stderr


def test_every_command_has_help(env: dict[str, str]) -> None:
    for args in [(), ("alerts",), ("alerts", "list"), ("sync",), ("sync", "latest"), ("sandbox",), ("serve",)]:
        result = run(env, *args, "--help")
        assert result.returncode == 0 and "usage: codat-relay" in result.stdout, args


def test_invalid_settings_exit_1_naming_the_variable(env: dict[str, str]) -> None:
    result = run({**env, "RELAY_PORT": "eighty"}, "alerts", "list")
    assert result.returncode == 1 and "RELAY_PORT" in result.stderr
    refused = run({k: v for k, v in env.items() if k not in ("RELAY_WEBHOOK_SECRETS", "RELAY_WEBHOOK_AUTH_HEADER")},
                  "serve")
    assert refused.returncode == 1
    assert "RELAY_WEBHOOK_SECRETS" in refused.stderr and "RELAY_WEBHOOK_AUTH_HEADER" in refused.stderr


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_an_unreachable_database_is_one_line_not_a_traceback(env: dict[str, str], command: str) -> None:
    """serve's start-up migration and migrate, with PostgreSQL unreachable: exit 1 and one line saying why."""
    result = run({**env, "RELAY_DATABASE_URL": "postgresql+asyncpg://relay@127.0.0.1:1/relay"}, command)
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("codat-relay: migration failed: ConnectionRefusedError: ") and "127.0.0.1" in line


def test_sync_commands_talk_to_codat(env: dict[str, str], tmp_path: Path) -> None:
    """sync latest / historic / status against the real sandbox process; bad dates exit 2; Codat errors exit 1.

    A sync started from the CLI is followed: a `check_sync` job that follows it waits in the database for the
    workers (one per company at a time: the historic sync's follow-up joins the one already waiting).
    """
    port = free_port()
    sandbox = start(["sandbox", "--port", str(port), "--pace-seconds", "0"], env, tmp_path / "sandbox.log")
    env = {**env, "RELAY_CODAT_BASE_URL": f"http://127.0.0.1:{port}", "RELAY_CODAT_API_KEY": "k"}
    try:
        wait_http(f"http://127.0.0.1:{port}/_sandbox/config", sandbox)
        unknown = run(env, "sync", "status", "co-cli")
        sandbox_company(f"http://127.0.0.1:{port}", "co-cli")
        none_yet = run(env, "sync", "status", "co-cli")
        latest = run(env, "sync", "latest", "co-cli", "--to", "2030-11-01T00:00:00Z", "--json")
        historic = run(env, "sync", "historic", "co-cli", "--start", "2026-01-01T00:00:00Z",
                       "--end", "2026-02-01T00:00:00Z")
        status = run(env, "sync", "status", "co-cli", "--json")
        backwards = run(env, "sync", "historic", "co-cli", "--start", "2026-02-01T00:00:00Z",
                        "--end", "2026-01-01T00:00:00Z")
    finally:
        stop(sandbox)
    assert unknown.returncode == 1 and "CodatNotFound" in unknown.stderr  # Codat knows no such company
    assert none_yet.returncode == 1 and "CodatNotFound" in none_yet.stderr  # nor a sync of it yet
    assert latest.returncode == 0 and "commerceSyncId" in json.loads(latest.stdout)
    assert historic.returncode == 0 and "syncDateRangeUtc" in historic.stdout
    assert status.returncode == 0 and json.loads(status.stdout)[0]["companyId"] == "co-cli"
    assert backwards.returncode == 2 and "end: must be after start" in backwards.stderr
    followed = sqlite3.connect(env["RELAY_DATABASE_URL"].removeprefix("sqlite+aiosqlite:///")).execute(
        "SELECT payload FROM jobs WHERE kind = 'check_sync'").fetchall()  # fmt: skip
    assert [json.loads(p) for (p,) in followed] == [{"company_id": "co-cli", "follow": 0}]


def test_a_fresh_shell_beside_make_run_just_works(tmp_path: Path, sqlite_template: Path) -> None:
    """No RELAY_* at all, run from a sub-folder: the file `make run` keeps gives the database; a missing
    database is named, never created; `--json | head` ends quietly."""
    db = tmp_path / "relay.db"
    db.write_bytes(sqlite_template.read_bytes())
    (tmp_path / ".relay-local.env").write_text(f"RELAY_DATABASE_URL=sqlite+aiosqlite:///{db}\n")
    (tmp_path / "sub").mkdir()
    bare = {k: v for k, v in relay_env("unused", 1).items() if not k.startswith("RELAY_")}
    listed = subprocess.run([sys.executable, "-m", "service.cli", "companies", "list"], env=bare,
                            cwd=tmp_path / "sub", capture_output=True, text=True, timeout=60)  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert "showing 0 of 0" in listed.stdout
    elsewhere = subprocess.run([sys.executable, "-m", "service.cli", "alerts", "list"], env=bare,
                               cwd=tmp_path.parent, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert elsewhere.returncode == 1 and "no database at sqlite+aiosqlite:///./codat-relay.db" in elsewhere.stderr
    assert not (tmp_path.parent / "codat-relay.db").exists()
    piped = subprocess.Popen([sys.executable, "-m", "service.cli", "alerts", "list", "--json"], env=bare,
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert piped.stdout is not None and piped.stderr is not None
    piped.stdout.close()  # the reader is gone before anything is written, like `| head -0`
    assert piped.wait(60) == 0
    assert piped.stderr.read() == b""
    piped.stderr.close()
