"""SQLite's claim finds a key's active jobs through the active-only index, never the key's done history."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from service import migrate
from service.queue import CLAIM_SQL

PARAMS = {"worker_id": "w", "now": 1.0, "lease_until": 2.0, "lease_lost": "-", "limit": 10, "keyed_limit": 10}


def test_sqlite_claim_probes_keys_through_the_active_index(tmp_path: Path) -> None:
    """Both per-key probes of the claim (the oldest active job of the key; a later one running) search
    `ix_jobs_active_lock_key`: through the full (lock_key, id) index SQLite walked every done job of the
    key, a claim costing ten times as much with ~240 done jobs a key (the end-to-end benchmark's 20 s)."""
    path = tmp_path / "relay.db"
    migrate.upgrade(f"sqlite+aiosqlite:///{path}")
    with sqlite3.connect(path) as conn:
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {CLAIM_SQL['sqlite']}", PARAMS)]
    probes = [step for step in plan if step.startswith("SEARCH k ")]
    assert len(probes) == 2, plan
    assert all("USING INDEX ix_jobs_active_lock_key " in step for step in probes), probes
