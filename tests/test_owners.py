"""Every table has one owner (STYLE.md rule 13): only service/queue.py writes `jobs`."""

from __future__ import annotations

from tests.owners import table_writes

JOBS_OWNER = "service/queue.py"


def test_only_the_queue_writes_jobs() -> None:
    """No module but service/queue.py inserts, updates or deletes jobs, through SQLAlchemy or raw SQL:
    everyone else calls a named queue function."""
    assert [write for write in table_writes("jobs") if not write.startswith(f"{JOBS_OWNER}:")] == []


def test_the_queue_is_seen_writing_jobs() -> None:
    """The scan finds the queue's own writes, so an empty list above is not a scan that sees nothing."""
    writes = " ".join(table_writes("jobs"))
    for form in ("jobs.update()", "jobs.delete()", "jobs.insert()", "insert(jobs)", "raw SQL 'INSERT INTO jobs'",
                 "raw SQL 'UPDATE jobs'"):  # fmt: skip
        assert f"{JOBS_OWNER}:" in writes and form in writes, form


def test_the_scan_finds_every_form_of_write() -> None:
    """Each way one could write the table is caught, an aliased import included."""
    source = '''
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from service.db import jobs as jobs_table
from service import db

async def writes(conn):
    await conn.execute(jobs_table.update().values(status="done"))
    await conn.execute(sa.delete(db.jobs))
    await conn.execute(postgresql.insert(jobs_table).values({}))
    await conn.execute(sa.text("delete from jobs where id = 1"))
    cursor.executemany(f"INSERT INTO jobs ({columns}) VALUES (?)", rows)
    await conn.execute(sa.select(jobs_table))  # a read: not a write
'''
    found = [write.split(": ", 1)[1] for write in table_writes("jobs", {"example.py": source})]
    assert sorted(found) == sorted([
        "jobs.update()", "delete(jobs)", "insert(jobs)", "raw SQL 'delete from jobs'", "raw SQL 'INSERT INTO jobs'",
    ])  # fmt: skip


def test_only_the_problems_module_writes_problems() -> None:
    """`problems` opens, counts, reopens, acknowledges and resolves in service/problems.py alone."""
    writes = table_writes("problems")
    assert writes and all(write.startswith("service/problems.py:") for write in writes), writes


def test_only_the_replays_module_writes_replay_runs() -> None:
    """A bulk replay's run and cursor move in service/replays.py alone."""
    writes = table_writes("replay_runs")
    assert writes and all(write.startswith("service/replays.py:") for write in writes), writes


def test_only_the_budget_writes_its_tables() -> None:
    """Codat's rate-limit budget (codat_slots, codat_quota, codat_company_waits) has one writer, service/budget.py,
    which the scan does see writing each."""
    for table in ("codat_slots", "codat_quota", "codat_company_waits"):
        writes = table_writes(table)
        assert [w for w in writes if not w.startswith("service/budget.py:")] == [], table
        assert any(w.startswith("service/budget.py:") for w in writes), table
