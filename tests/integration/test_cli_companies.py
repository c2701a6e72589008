"""`codat-relay companies show/pause/resume/repush` and `alerts replay --dead`, run as an operator runs them.

State is set up by writing rows straight into a migrated SQLite file; the last test runs a whole stack
to show that a full re-push never sends a synced record to Codat again.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from service.keys import alert_lock
from tests.integration.e2e import stack, until
from tests.integration.harness import ROOT, free_port, relay_env

COMPANY = "co-cli"


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


@pytest.fixture
def db(tmp_path: Path, sqlite_template: Path) -> Path:
    path = tmp_path / "relay.db"
    path.write_bytes(sqlite_template.read_bytes())
    return path


@pytest.fixture
def env(db: Path) -> dict[str, str]:
    return relay_env(f"sqlite+aiosqlite:///{db}", free_port())


def sql(db: Path, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(statement, params).fetchall()


def add_company(db: Path, company: str = COMPANY, **states: str) -> None:
    """A company with one order per (record id → state); `synced` ones carry synced_at as a sync leaves them."""
    now = time.time()
    sql(db, "INSERT INTO companies (id, paused, created_at, updated_at) VALUES (?, 0, ?, ?)", company, now, now)
    for record_id, state in states.items():
        sql(db, "INSERT INTO records (company_id, data_type, record_id, version, content_hash, body, is_delete, state,"
                " inflight, synced_at, created_at, updated_at) VALUES (?, 'commerce-orders', ?, 1, 'h', ?, 0, ?, ?, ?,"
                " ?, ?)", company, record_id, json.dumps({"id": record_id}).encode(), state, state == "pushed",
            now if state == "synced" else None, now, now)  # fmt: skip


def states(db: Path) -> dict[str, str]:
    return dict(sql(db, "SELECT record_id, state FROM records"))  # type: ignore[arg-type]


def test_show_pause_resume(env: dict[str, str], db: Path) -> None:
    """show is readable and --json is the API's view; pause and resume change it; resume schedules pushes."""
    add_company(db, a="accepted", b="pending", c="synced")
    table = run(env, "companies", "show", COMPANY)
    assert table.returncode == 0, table.stderr
    assert "Records by state:" in table.stdout and "Recent datasets:" in table.stdout
    assert "commerce-orders" in table.stdout and "paused" in table.stdout and "no" in table.stdout
    view = json.loads(run(env, "companies", "show", COMPANY, "--json").stdout)
    assert view["records"]["commerce-orders"] == {"pending": 1, "pushed": 0, "accepted": 1, "synced": 1,
                                                  "failed": 0, "conflict": 0}  # fmt: skip
    assert view["paused"] is False and view["connection"]["id"] is None
    paused = run(env, "companies", "pause", COMPANY, "--json")
    assert paused.returncode == 0 and json.loads(paused.stdout) == {"id": COMPANY, "paused": True,
                                                                    "pauseReason": "manual"}  # fmt: skip
    assert json.loads(run(env, "companies", "show", COMPANY, "--json").stdout)["pauseReason"] == "manual"
    resumed = run(env, "companies", "resume", COMPANY)
    assert resumed.returncode == 0 and "paused" in resumed.stdout and "no" in resumed.stdout.split()
    assert sql(db, "SELECT paused FROM companies") == [(0,)]
    waiting = {key for (key,) in sql(db, "SELECT lock_key FROM jobs WHERE kind = 'push' AND status = 'waiting'")}
    assert waiting == {f"push:{COMPANY}:commerce-{t}" for t in ("orders", "payments", "transactions")}


@pytest.mark.parametrize("action", ["show", "pause", "resume", "repush"])
def test_unknown_company_exits_1_with_one_line(env: dict[str, str], db: Path, action: str) -> None:
    """An unknown company: exit 1 and one line naming it; nothing is created (pause used to invent it)."""
    result = run(env, "companies", action, "nope")
    assert result.returncode == 1 and result.stderr.strip().splitlines() == ["codat-relay: no company nope"]
    assert sql(db, "SELECT count(*) FROM companies") == [(0,)]


@pytest.mark.parametrize(
    "args",
    [("companies",), ("companies", "show"), ("companies", "explode", "x"), ("companies", "repush", "x", "--data-type",
     "invoices"), ("alerts", "replay"), ("alerts", "replay", "id", "--dead"), ("alerts", "replay", "id", "--yes")],
)  # fmt: skip
def test_bad_usage_exits_2(env: dict[str, str], args: tuple[str, ...]) -> None:
    """Missing or wrong arguments: exit 2 with the usage."""
    result = run(env, *args)
    assert result.returncode == 2 and "usage:" in result.stderr


def test_every_new_command_has_help(env: dict[str, str]) -> None:
    """--help on each new command and action."""
    for args in [("companies",), *(("companies", a) for a in ("show", "pause", "resume", "repush")),
                 ("alerts", "replay")]:  # fmt: skip
        result = run(env, *args, "--help")
        assert result.returncode == 0 and "usage: codat-relay" in result.stdout, args


def test_repush_requeues_all_but_synced_and_conflicts(env: dict[str, str], db: Path) -> None:
    """accepted/failed go back to pending; synced, conflict and in-flight stay; counts and progress shown."""
    add_company(db, a="accepted", f="failed", s="synced", c="conflict", p="pushed", w="pending")
    result = run(env, "companies", "repush", COMPANY, "--data-type", "orders", "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert {k: answer[k] for k in ("requeued", "alreadyPending", "skippedSynced", "skippedConflicts", "inFlight")} \
        == {"requeued": 2, "alreadyPending": 1, "skippedSynced": 1, "skippedConflicts": 1, "inFlight": 1}  # fmt: skip
    assert f"re-push {COMPANY}: 2/2 (100%)" in result.stderr  # not a TTY: plain progress lines
    assert states(db) == {"a": "pending", "f": "pending", "s": "synced", "c": "conflict", "p": "pushed",
                          "w": "pending"}  # fmt: skip
    again = run(env, "companies", "repush", COMPANY)
    assert again.returncode == 0 and "1 synced records skipped" in again.stdout and "DATATYPE" in again.stdout


def add_alert(db: Path, alert_id: str, company: str, status: str, dead_job: bool) -> None:
    now = time.time()
    sql(db, "INSERT INTO alerts (id, kind, type, shape, company_id, data_types, received_at, status, attempts,"
            " updated_at, body) VALUES (?, 'other', 't', 'envelope', ?, '[]', ?, ?, 10, ?, x'7b7d')",
        alert_id, company, now, status, now)  # fmt: skip
    if dead_job:
        sql(db, "INSERT INTO jobs (kind, payload, lock_key, status, attempts, run_at, created_at, finished_at,"
                " last_error) VALUES ('alert', ?, ?, 'dead', 10, ?, ?, ?, 'boom')",
            json.dumps({"alert_id": alert_id}), alert_lock(company), now, now, now)  # fmt: skip


def test_bulk_replay_of_dead_alerts(env: dict[str, str], db: Path) -> None:
    """--dead needs --yes off a terminal; --company narrows it; each gets one new job, its dead job superseded."""
    add_alert(db, "a1", "co-a", "dead", dead_job=True)
    add_alert(db, "a2", "co-a", "dead", dead_job=False)
    add_alert(db, "b1", "co-b", "dead", dead_job=True)
    add_alert(db, "ok", "co-a", "done", dead_job=False)
    refused = run(env, "alerts", "replay", "--dead")
    assert refused.returncode == 1 and "pass --yes" in refused.stderr
    assert {s for (s,) in sql(db, "SELECT status FROM alerts WHERE id != 'ok'")} == {"dead"}
    only_a = run(env, "alerts", "replay", "--dead", "--company", "co-a", "--yes", "--json")
    assert only_a.returncode == 0, only_a.stderr
    answer = json.loads(only_a.stdout)
    assert {k: answer[k] for k in ("status", "replayed", "done")} == {"status": "queued", "replayed": 2, "done": 2}
    assert answer["filter"]["companyId"] == "co-a" and answer["filter"]["status"] == "dead"
    assert f"run {answer['runId']} (2 to go" in only_a.stderr
    assert "replaying dead alerts: 2/2 (100%)" in only_a.stderr
    assert dict(sql(db, "SELECT id, status FROM alerts")) == {"a1": "pending", "a2": "pending", "b1": "dead",
                                                              "ok": "done"}  # fmt: skip
    jobs = sql(db, "SELECT json_extract(payload, '$.alert_id'), status, attempts FROM jobs ORDER BY id")
    assert jobs == [("a1", "done", 10), ("b1", "dead", 10), ("a1", "waiting", 0), ("a2", "waiting", 0)]
    rest = run(env, "alerts", "replay", "--dead", "--yes")
    assert rest.returncode == 0 and "1 dead alerts queued" in rest.stdout
    none_left = run(env, "alerts", "replay", "--dead")
    assert none_left.returncode == 0 and "0 dead alerts queued" in none_left.stdout


def test_full_repush_never_sends_a_synced_record_again(tmp_path: Path, db: Path) -> None:
    """A whole stack: after a sync took one order, `companies repush` sends only the other one to Codat."""
    url = f"sqlite+aiosqlite:///{db}"
    with stack(url, tmp_path) as s:
        s.new_company()
        s.put("orders", [{"id": i, "currency": "GBP", "totalAmount": 1.0} for i in ("in-books", "not-yet")])
        until(lambda: s.record_states("commerce-orders"), lambda c: c == {"accepted": 2}, "orders accepted")
        # As a successful sync leaves it (service/outbox.py mark_synced): Codat's books hold this one.
        sql(db, "UPDATE records SET state = 'synced', synced_at = accepted_at WHERE record_id = 'in-books'")
        cli_env = relay_env(url, free_port())
        result = run(cli_env, "companies", "repush", s.company)
        assert result.returncode == 0, result.stderr
        assert "1 records will be pushed again; 1 synced records skipped" in result.stdout
        pushes = until(lambda: s.pushes("commerce-orders"), lambda p: len(p) == 2, "the re-push")
        until(lambda: s.record_states("commerce-orders"), lambda c: c == {"accepted": 1, "synced": 1}, "settled")
    assert pushes[1]["recordIds"] == ["not-yet"]


def test_list_searches_by_name_and_both_commands_show_the_name_and_next_sync(env: dict[str, str], db: Path) -> None:
    """`companies list --search` matches Codat's name (any case); list and show print it with the next sync
    and the schedule it comes from (issues 14 and 15)."""
    add_company(db)
    add_company(db, "co-other")
    sql(db, "UPDATE companies SET name = 'Corner Deli', sync_frequency = 'Daily', sync_hour = 2, "
            "sync_time_zone = 'America/New_York', schedule_fetched_at = 1800000000, next_sync_at = 1800021600 "
            "WHERE id = ?", COMPANY)  # fmt: skip
    listed = run(env, "companies", "list", "--search", "corner DELI")
    assert listed.returncode == 0, listed.stderr
    assert "co-cli" in listed.stdout and "co-other" not in listed.stdout
    assert "Corner Deli" in listed.stdout and "2027-01-15T14:00:00Z" in listed.stdout
    assert "showing 1 of 1" in listed.stdout
    as_json = json.loads(run(env, "companies", "list", "--search", "deli", "--json").stdout)
    assert [(c["id"], c["name"], c["nextSyncAt"]) for c in as_json["results"]] == [
        (COMPANY, "Corner Deli", "2027-01-15T14:00:00Z")]
    shown = run(env, "companies", "show", COMPANY)
    assert shown.returncode == 0, shown.stderr
    assert "Corner Deli" in shown.stdout and "Daily at 02:00 America/New_York" in shown.stdout
    assert "2027-01-15T14:00:00Z" in shown.stdout
    unread = run(env, "companies", "show", "co-other")
    assert "not read from Codat yet" in unread.stdout


def test_purge_asks_counts_with_dry_run_and_needs_yes_off_a_terminal(db: Path, env: dict[str, str]) -> None:
    """`companies purge ID --dry-run` prints rows per table and deletes nothing; without `--yes` off a terminal it
    exits 1 deleting nothing; with `--yes` the company's rows go and one audit line names the operator."""
    add_company(db, **{"o-1": "pending", "o-2": "synced"})
    add_company(db, "co-other", **{"x-1": "pending"})
    dry = run(env, "companies", "purge", COMPANY, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    answer = json.loads(dry.stdout)
    assert answer["dryRun"] is True and answer["counts"]["records"] == 2 and answer["counts"]["companies"] == 1
    assert len(sql(db, "SELECT 1 FROM records WHERE company_id = ?", COMPANY)) == 2

    refused = run(env, "companies", "purge", COMPANY)
    assert refused.returncode == 1 and "pass --yes to confirm" in refused.stderr
    assert len(sql(db, "SELECT 1 FROM records WHERE company_id = ?", COMPANY)) == 2

    done = run(env, "companies", "purge", COMPANY, "--yes")
    assert done.returncode == 0, done.stderr
    assert "rows of company co-cli deleted; audit line 1" in done.stdout
    assert sql(db, "SELECT company_id FROM records") == [("co-other",)]
    assert sql(db, "SELECT id FROM companies") == [("co-other",)]
    [(company, who, counts)] = sql(db, "SELECT company_id, requested_by, counts FROM purges")
    assert company == COMPANY and who.startswith("cli ") and json.loads(counts)["records"] == 2

    unknown = run(env, "companies", "purge", "co-nobody", "--yes")
    assert unknown.returncode == 1 and "no company co-nobody" in unknown.stderr
