"""The record state machine: one module writes `records`, and its decision is the same in Python and SQL."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import sqlalchemy as sa

from service.db import create_engine
from service.record_states import TRANSITIONS, Columns, Event, Facts, State, settle, settle_sql
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[1]
OWNER = ROOT / "service" / "record_states.py"


def _writes_records(path: Path) -> list[int]:
    """Lines where `records.update()`, `records.insert()`, `records.delete()` or raw SQL writing records appear."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value
            if node.func.attr in {"update", "insert", "delete"} and isinstance(target, ast.Name) \
                    and target.id == "records":
                found.append(node.lineno)
            if node.func.attr in {"update", "insert", "delete"} and isinstance(target, ast.Name) \
                    and target.id == "sa" and node.args and isinstance(node.args[0], ast.Name) \
                    and node.args[0].id == "records":
                found.append(node.lineno)
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = " ".join(node.value.upper().split())
            if any(f"{verb} RECORDS" in text for verb in ("UPDATE", "INSERT INTO", "DELETE FROM")):
                found.append(node.lineno)
    return found


def test_only_record_states_writes_the_records_table() -> None:
    """No module but service/record_states.py writes `records` (its state above all): pattern 13."""
    offenders = {
        str(path.relative_to(ROOT)): lines
        for folder in ("service", "handlers")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path != OWNER and "migrations" not in path.parts and "sandbox" not in path.parts
        and (lines := _writes_records(path))
    }  # fmt: skip
    assert offenders == {}
    assert _writes_records(OWNER)  # the scan does see writes where they are


def test_every_event_has_rules_and_claims_check_the_books() -> None:
    """Each event moves some states; a claim needs a row not in flight whose content the books allow."""
    assert {event for _, event in TRANSITIONS} == set(Event)
    claim = TRANSITIONS[(State.PENDING, Event.CLAIM)]
    assert claim.to == State.PUSHED and {f.name for f in claim.requires} == {
        "not in flight", "the books hold nothing or this content"}
    assert [s for s, e in TRANSITIONS if e is Event.CLAIM] == [State.PENDING]


def test_settle_answers() -> None:
    """May this version be sent? Conflicts only for content other than the books'; what Codat holds is not resent."""
    assert settle(Facts("v2", books="v1", codat="v1")) == State.CONFLICT
    assert settle(Facts("v1", books="v1", codat="v1")) == State.SYNCED
    assert settle(Facts("v1", books="v1", codat="v2")) == State.PENDING  # the books' own content: never a conflict
    assert settle(Facts("v1", codat="v1")) == State.ACCEPTED
    assert settle(Facts("v2", codat="v1")) == State.PENDING
    assert settle(Facts("v3", pushed="v2", codat="v1", in_flight=True)) == State.PENDING
    assert settle(Facts("v2", pushed="v2", codat="v1", in_flight=True)) == State.PUSHED
    assert settle(Facts("v2", pushed="v2", books="v1", in_flight=True)) == State.CONFLICT


async def test_settle_is_the_same_decision_in_sql(database_url: str) -> None:
    """Every combination of facts gets the same state from the SQL spelling as from the Python one."""
    values = (None, "h1", "h2")
    combos = [(c, p, a, b, f) for c in ("h1", "h2") for p, a, b in itertools.product(values, repeat=3)
              for f in (False, True)]  # fmt: skip
    engine = create_engine(make_settings(database_url))
    try:
        async with engine.connect() as conn:
            for content, pushed, codat, books, flight in combos:
                cols = Columns(sa.literal(content), sa.literal(pushed, sa.String), sa.literal(codat, sa.String),
                               sa.literal(books, sa.String), sa.literal(flight, sa.Boolean))  # fmt: skip
                got = await conn.scalar(sa.select(settle_sql(cols)))
                facts = Facts(content, pushed, codat, books, flight)
                assert got == settle(facts).value, facts
    finally:
        await engine.dispose()
