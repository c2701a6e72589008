"""The one module that moves a record between states: the transitions written down as data.

Every write of the `records` table is here (a test holds it); the other modules say what happened —
an intake, a claim, a dataset's end, a sync — and this module moves the rows the table allows, checking
the facts each transition depends on. Each row carries those facts:

    C  content_hash   the latest version the merchant's platform sent
    P  pushed_hash    the version last sent (in flight while `inflight`)
    A  accepted_hash  the version Codat holds (its dataset ended Complete)
    B  synced_hash    the version the books hold: set once, by the sync that took it (Codat rule 7: never
                      changed after), and never erased by a later `accepted`

"May this version be sent?" is ONE decision, `SETTLE` below, used by intake, a dataset's end, the
re-push policy, a sync learnt of, and (through the claim's guard) every push: a version other than the
books' is a conflict (kept, never sent); the same content as the books' is never one, so a conflict
resolves when the books' content comes back; a version Codat already holds is not sent again; a version
held back behind another in flight waits for that flight's end and is decided again then.

Every transition takes `lock_outbox` of its company and data type first, as intake and the pusher's
claim do, so a claim never meets rows another transaction is moving (PostgreSQL; SQLite has one writer).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from service import keys
from service.db import datasets, push_records, pushes, records

LOOKUP_CHUNK = 1000  # ids per `IN (...)` on SQLite: well under its bound-parameter limit


class State(enum.StrEnum):
    PENDING = "pending"  # waits to be pushed (or, while `inflight`, held back behind the version in flight)
    PUSHED = "pushed"  # in a push whose dataset has not ended
    ACCEPTED = "accepted"  # Codat holds it
    SYNCED = "synced"  # the books hold it
    FAILED = "failed"  # its dataset failed; the re-push policy decides when it goes again
    CONFLICT = "conflict"  # differs from what the books hold: kept, never pushed (rule 7)


class Event(enum.StrEnum):
    INTAKE = "intake"  # a new version arrived (content differs from the stored one)
    CLAIM = "claim"  # taken into a push
    COMPLETE = "complete"  # the push's dataset ended Complete: Codat holds the pushed version
    FAIL = "fail"  # the push's dataset ended in an error, or Codat refused the push
    ABANDON = "abandon"  # Codat never took the push (404, key refused), or it was dropped unsent
    REQUEUE = "requeue"  # the re-push policy sends a failed dataset's records again
    FULL_REPUSH = "full_repush"  # an operator's full re-push
    SYNC = "sync"  # a successful sync took what Codat held: the books' version is now known


# -- facts ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Facts:
    """One record's facts, in Python (intake) — `Columns` is the same in SQL."""

    content: str
    pushed: str | None = None
    codat: str | None = None
    books: str | None = None
    in_flight: bool = False


@dataclass(frozen=True)
class Columns:
    content: Any = records.c.content_hash
    pushed: Any = records.c.pushed_hash
    codat: Any = records.c.accepted_hash
    books: Any = records.c.synced_hash
    in_flight: Any = records.c.inflight


@dataclass(frozen=True)
class Fact:
    """A named predicate over a record's facts, spelt once for Python and once for SQL (a test checks they agree)."""

    name: str
    py: Callable[[Facts], bool]
    sql: Callable[[Columns], sa.ColumnElement[bool]]


IN_FLIGHT = Fact("in flight", lambda f: f.in_flight, lambda c: c.in_flight == sa.true())
NOT_IN_FLIGHT = Fact("not in flight", lambda f: not f.in_flight, lambda c: c.in_flight == sa.false())
IN_BOOKS = Fact("the books hold a version", lambda f: f.books is not None, lambda c: c.books.is_not(None))
NOT_IN_BOOKS = Fact("the books hold no version", lambda f: f.books is None, lambda c: c.books.is_(None))
BOOKS_DIFFER = Fact(
    "the books hold other content", lambda f: f.books is not None and f.books != f.content,
    lambda c: sa.and_(c.books.is_not(None), c.books != c.content),
)  # fmt: skip
BOOKS_ALLOW = Fact(
    "the books hold nothing or this content", lambda f: f.books is None or f.books == f.content,
    lambda c: sa.or_(c.books.is_(None), c.books == c.content),
)  # fmt: skip
AS_IN_FLIGHT = Fact("the content in flight", lambda f: f.pushed == f.content, lambda c: c.pushed == c.content)
AS_CODAT = Fact("the content Codat holds", lambda f: f.codat == f.content, lambda c: c.codat == c.content)

# "May this version be sent?" — the first row whose facts all hold names the state.
SETTLE_RULES: tuple[tuple[tuple[Fact, ...], State], ...] = (
    ((BOOKS_DIFFER,), State.CONFLICT),  # rule 7: never update what the books hold
    ((IN_FLIGHT, AS_IN_FLIGHT), State.PUSHED),  # back to the version in flight: it rejoins that push
    ((IN_FLIGHT,), State.PENDING),  # held back: decided again when the flight ends
    ((IN_BOOKS, AS_CODAT), State.SYNCED),  # the books and Codat hold exactly this
    ((AS_CODAT,), State.ACCEPTED),  # Codat holds it: nothing to send (never a duplicate)
    ((), State.PENDING),  # to be sent
)


def settle(facts: Facts) -> State:
    return next(state for needs, state in SETTLE_RULES if all(fact.py(facts) for fact in needs))


def settle_sql(cols: Columns) -> sa.ColumnElement[Any]:
    whens = [(sa.and_(*(fact.sql(cols) for fact in needs)), state.value) for needs, state in SETTLE_RULES if needs]
    return sa.case(*whens, else_=SETTLE_RULES[-1][1].value)


# -- the transitions -------------------------------------------------------------------------------------

SETTLE = "settle"  # the target is `settle`'s answer
SETTLE_FAILED = "settle, failed for pending"  # as SETTLE, but a version to be sent again is `failed`:
# the re-push policy, not the next push, decides when (with backoff, and telling staff when it gives up)


@dataclass(frozen=True)
class Rule:
    to: State | str
    requires: tuple[Fact, ...] = ()


_FLIGHT_STATES = (State.PUSHED, State.PENDING, State.CONFLICT)  # the states a row in flight can be in

TRANSITIONS: dict[tuple[State, Event], Rule] = {
    **{(state, Event.INTAKE): Rule(SETTLE) for state in State},
    (State.PENDING, Event.CLAIM): Rule(State.PUSHED, (NOT_IN_FLIGHT, BOOKS_ALLOW)),
    **{(state, Event.COMPLETE): Rule(SETTLE, (IN_FLIGHT,)) for state in _FLIGHT_STATES},
    (State.PUSHED, Event.FAIL): Rule(SETTLE_FAILED, (IN_FLIGHT,)),
    (State.PENDING, Event.FAIL): Rule(SETTLE, (IN_FLIGHT,)),
    (State.CONFLICT, Event.FAIL): Rule(SETTLE, (IN_FLIGHT,)),
    **{(state, Event.ABANDON): Rule(SETTLE, (IN_FLIGHT,)) for state in _FLIGHT_STATES},
    (State.FAILED, Event.REQUEUE): Rule(SETTLE, (NOT_IN_FLIGHT,)),
    (State.ACCEPTED, Event.FULL_REPUSH): Rule(State.PENDING, (NOT_IN_FLIGHT, NOT_IN_BOOKS)),
    (State.FAILED, Event.FULL_REPUSH): Rule(State.PENDING, (NOT_IN_FLIGHT, NOT_IN_BOOKS)),
    **{(state, Event.SYNC): Rule(SETTLE, (IN_BOOKS,)) for state in State},
}


def _target_sql(rule: Rule, cols: Columns) -> sa.ColumnElement[Any]:
    if rule.to == SETTLE:
        return settle_sql(cols)
    if rule.to == SETTLE_FAILED:
        settled = settle_sql(cols)
        return sa.case((settled == State.PENDING.value, State.FAILED.value), else_=settled)
    return sa.literal(str(rule.to))


def _move(event: Event, cols: Columns | None = None) -> tuple[sa.ColumnElement[bool], sa.ColumnElement[Any]]:
    """(the rows `event` may move, their new state), generated from TRANSITIONS: no other moves exist.

    `cols` gives the facts as they are once the event happened (a dataset's end clears `inflight`; a
    Complete makes the pushed version Codat's); the guards read the row as it was.
    """
    cols = cols or Columns()
    rules = [(state, rule) for (state, ev), rule in TRANSITIONS.items() if ev == event]
    allowed = sa.or_(*(sa.and_(records.c.state == state.value, *(f.sql(Columns()) for f in rule.requires))
                       for state, rule in rules))  # fmt: skip
    target = sa.case(*((records.c.state == state.value, _target_sql(rule, cols)) for state, rule in rules),
                     else_=records.c.state)  # fmt: skip
    return allowed, target


def intake_state(prev: sa.RowMapping | None, content_hash: str) -> State:
    """The state of a new version (Event.INTAKE), from the stored row's facts."""
    if prev is None:
        return State.PENDING
    rule = TRANSITIONS[(State(prev["state"]), Event.INTAKE)]
    assert rule.to == SETTLE
    return settle(Facts(content_hash, prev["pushed_hash"], prev["accepted_hash"], prev["synced_hash"],
                        bool(prev["inflight"])))  # fmt: skip


# -- the lock every transition takes -------------------------------------------------------------------


async def lock_outbox(conn: AsyncConnection, company_id: str, data_type: str) -> None:
    """Serialise every move of one company's records of one data type (SQLite's writer lock already does)."""
    if conn.dialect.name == "postgresql":
        key = keys.outbox_lock(company_id, data_type)
        await conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key})


# -- writes ----------------------------------------------------------------------------------------------

# `state = 'pending'` written as a literal: a bound parameter would hide from both planners that the
# query matches the partial index `ix_records_pending`.
IS_PENDING = records.c.state == sa.literal_column("'pending'")
_VALUES: dict[str, Any] = {
    "version": sa.bindparam("n_version"), "content_hash": sa.bindparam("n_hash"), "body": sa.bindparam("n_body"),
    "is_delete": sa.bindparam("n_delete"), "state": sa.bindparam("n_state"), "record_date": sa.bindparam("n_date"),
}  # fmt: skip


async def write_versions(
    conn: AsyncConnection, company_id: str, data_type: str, now: float,
    inserts: list[dict[str, Any]], updates: list[dict[str, Any]],
) -> None:  # fmt: skip
    """Event.INTAKE: store new versions; each row's `n_state` comes from `intake_state` (under the lock)."""
    common = {"company_id": company_id, "data_type": data_type, "updated_at": now}
    if inserts:
        insert = records.insert().values(
            record_id=sa.bindparam("b_id"), inflight=False, created_at=now, **common, **_VALUES
        )
        await conn.execute(insert, inserts)
    if updates:
        stmt = (
            records.update()
            .where(records.c.company_id == company_id, records.c.data_type == data_type,
                   records.c.record_id == sa.bindparam("b_id"))
            .values(updated_at=now, **_VALUES)
        )  # fmt: skip
        await conn.execute(stmt, updates)


@dataclass(frozen=True)
class Claimed:
    record_id: str
    version: int
    content_hash: str
    body: bytes


async def claim(
    conn: AsyncConnection, company_id: str, data_type: str, push_id: str, after: str, limit: int, now: float
) -> tuple[list[Claimed], str]:
    """Event.CLAIM: the next pending records (ids after `after`) into push `push_id`; caller holds the lock.

    The rows are moved by id list and the bytes come back from that same UPDATE, so the push's record
    set is exactly the rows whose bytes are in its payload: no key range another transaction could
    move a row into. Returns the claimed rows and the last id looked at (the next claim's `after`).
    """
    allowed, target = _move(Event.CLAIM)
    mine = sa.and_(records.c.company_id == company_id, records.c.data_type == data_type, IS_PENDING,
                   records.c.inflight.is_(False))  # fmt: skip
    pick = sa.select(records.c.record_id).where(mine, records.c.record_id > after)
    ids = list((await conn.execute(pick.order_by(records.c.record_id).limit(limit))).scalars())
    if not ids:
        return [], after
    values = {"state": target, "inflight": True, "push_id": push_id, "pushed_version": records.c.version,
              "pushed_hash": records.c.content_hash, "updated_at": now}  # fmt: skip
    returning = (records.c.record_id, records.c.version, records.c.content_hash, records.c.body)
    # The picked ids lie in (after, ids[-1]]: that range is the index condition, so the UPDATE reads those
    # rows only, on any plan. Without it, on a table whose statistics lagged a bulk intake (autovacuum had not
    # analysed it), PostgreSQL scanned every pending record of the company and tested each against the ids:
    # a million-record push went from 138 s to over 20 minutes (bench_push, 2026-12-07).
    in_range = sa.and_(records.c.record_id > after, records.c.record_id <= ids[-1])
    if conn.dialect.name == "postgresql":
        # A custom plan each time: the ids' array is then a constant, which PostgreSQL searches by hash, not
        # element by element as a generic plan's parameter (0.5 s against 9 ms a claim of 5,000).
        await conn.execute(sa.text("SET LOCAL plan_cache_mode = force_custom_plan"))
    claimed: list[Claimed] = []
    for chunk in _id_chunks(conn, ids):
        stmt = records.update().where(mine, allowed, in_range, chunk).values(values).returning(*returning)
        claimed.extend(Claimed(*row) for row in await conn.execute(stmt))
    claimed.sort(key=lambda c: c.record_id)
    if claimed:
        await conn.execute(push_records.insert(), [
            {"push_id": push_id, "record_id": c.record_id, "version": c.version, "content_hash": c.content_hash}
            for c in claimed])  # fmt: skip
    return claimed, ids[-1]


def _id_chunks(conn: AsyncConnection, ids: Sequence[str]) -> list[sa.ColumnElement[bool]]:
    if conn.dialect.name == "postgresql":
        # One array parameter (`= ANY`), whatever the batch's size.
        array = sa.bindparam("claim_ids", list(ids), type_=postgresql.ARRAY(sa.String))
        return [records.c.record_id == sa.func.any(array)]
    return [records.c.record_id.in_(ids[i : i + LOOKUP_CHUNK]) for i in range(0, len(ids), LOOKUP_CHUNK)]


async def end_flight(
    conn: AsyncConnection, push_id: str, event: Event, now: float, *, dataset_id: str | None = None,
    completed_at: float | None = None, books_since: float | None = None,
    books_cover: sa.ColumnElement[bool] | None = None,
) -> int:  # fmt: skip
    """COMPLETE / FAIL / ABANDON for the records of one push still in flight in it; returns rows moved.

    COMPLETE makes the pushed version Codat's (`accepted_*`); with `books_since` (a sync that started
    after this dataset completed has succeeded) the books hold it too — of the records that sync's range
    `books_cover`s (None: all). Every row is then decided again: a version held back behind this flight
    may go, or is already what Codat holds, or is a conflict.
    """
    assert event in (Event.COMPLETE, Event.FAIL, Event.ABANDON)
    values: dict[str, Any] = {"inflight": False, "updated_at": now}
    cols = Columns(in_flight=sa.false())
    if dataset_id is not None:
        values["dataset_id"] = dataset_id
    if event is Event.COMPLETE:
        values.update(accepted_version=records.c.pushed_version, accepted_hash=records.c.pushed_hash,
                      accepted_at=completed_at)  # fmt: skip
        cols = Columns(in_flight=sa.false(), codat=records.c.pushed_hash)
        if books_since is not None:
            # Set once: a version the books already hold stays the books' version.
            cover = sa.true() if books_cover is None else books_cover

            def if_covered(taken: Any, kept: Any) -> sa.ColumnElement[Any]:
                return sa.case((cover, taken), else_=kept)

            books = if_covered(sa.func.coalesce(records.c.synced_hash, records.c.pushed_hash), records.c.synced_hash)
            values.update(
                synced_hash=books,
                synced_at=if_covered(sa.func.coalesce(records.c.synced_at, books_since), records.c.synced_at),
                synced_version=if_covered(sa.func.coalesce(records.c.synced_version, records.c.pushed_version),
                                          records.c.synced_version),
            )  # fmt: skip
            cols = Columns(in_flight=sa.false(), codat=records.c.pushed_hash, books=books)
    allowed, target = _move(event, cols)
    # By push id alone, on purpose: it has its own index, and adding the company's columns let a planner
    # with stale statistics prefer the primary key and filter every record of the company instead.
    stmt = records.update().where(records.c.push_id == push_id, allowed).values(state=target, **values)
    return int((await conn.execute(stmt)).rowcount)


async def count_waiting(conn: AsyncConnection, push_id: str) -> int:
    """Records of this push now free to be pushed (a newer version held back behind it)."""
    count = await conn.scalar(
        sa.select(sa.func.count()).select_from(records)
        .where(records.c.push_id == push_id, records.c.state == State.PENDING, records.c.inflight.is_(False))
    )  # fmt: skip
    return int(count or 0)


async def flight_blocked(conn: AsyncConnection, push_id: str) -> bool:
    """Whether an open push holds a version the books now hold another of (it must never be sent)."""
    found = await conn.scalar(
        sa.select(records.c.record_id).where(
            records.c.push_id == push_id, records.c.inflight.is_(True), records.c.synced_hash.is_not(None),
            records.c.synced_hash != records.c.pushed_hash,
        ).limit(1)
    )  # fmt: skip
    return found is not None


async def requeue_failed(conn: AsyncConnection, push_id: str, now: float) -> int:
    """Event.REQUEUE for one push's failed records: each decided again (pending, accepted, conflict…)."""
    allowed, target = _move(Event.REQUEUE)
    await conn.execute(
        records.update().where(records.c.push_id == push_id, allowed).values(repush_count=records.c.repush_count + 1)
    )
    result = await conn.execute(
        records.update().where(records.c.push_id == push_id, allowed).values(state=target, updated_at=now)
    )
    return int(result.rowcount)


async def reset_repush_counts(conn: AsyncConnection, push_id: str) -> None:
    """A push reached Codat: its records' re-push counts start again."""
    await conn.execute(
        records.update().where(records.c.push_id == push_id, records.c.repush_count > 0).values(repush_count=0)
    )


# What a full re-push sends again (the rows Event.FULL_REPUSH may move).
REQUEUABLE = _move(Event.FULL_REPUSH)[0]


async def full_repush_chunk(
    conn: AsyncConnection, company_id: str, data_type: str, after: str, limit: int, now: float
) -> tuple[str, int] | None:
    """Event.FULL_REPUSH for the next chunk (ids after `after`): (its last id, rows moved), None when done."""
    allowed, target = _move(Event.FULL_REPUSH)
    mine = sa.and_(records.c.company_id == company_id, records.c.data_type == data_type, allowed)
    pick = sa.select(records.c.record_id).where(mine, records.c.record_id > after)
    ids = list((await conn.execute(pick.order_by(records.c.record_id).limit(limit))).scalars())
    if not ids:
        return None
    moved = 0
    for chunk in _id_chunks(conn, ids):
        result = await conn.execute(records.update().where(mine, chunk).values(state=target, updated_at=now))
        moved += int(result.rowcount)
    return ids[-1], moved


async def mark_synced(
    conn: AsyncConnection, company_id: str, data_type: str, synced_at: float, now: float,
    covers: sa.ColumnElement[bool] | None = None,
) -> list[str]:  # fmt: skip
    """Event.SYNC: a sync that started at `synced_at` succeeded; returns the ids of new conflicts.

    The books now hold, of each record the books held nothing of and the sync's range `covers`
    (service/coverage.py: by `record_date`; None: every record), the version Codat held at `synced_at`:
    the accepted one if it was accepted by then, else the one the latest dataset Complete by then carried
    (a newer one accepted while the sync ran must not hide it). Each such record is then decided again:
    content other than the books' is a conflict, the books' own content never is. Every query reads the
    partial index of records not in the books (`ix_records_unbooked`), never all of a company's.
    """
    await lock_outbox(conn, company_id, data_type)
    mine = sa.and_(records.c.company_id == company_id, records.c.data_type == data_type,
                   records.c.synced_hash.is_(None), sa.true() if covers is None else covers)  # fmt: skip
    marked = list((await conn.execute(
        records.update().where(mine, records.c.accepted_at <= synced_at)
        .values(synced_hash=records.c.accepted_hash, synced_version=records.c.accepted_version,
                synced_at=synced_at, updated_at=now)
        .returning(records.c.record_id)
    )).scalars())  # fmt: skip
    for record_id, version, content in await _held_at(conn, mine, company_id, data_type, synced_at):
        result = await conn.execute(
            records.update().where(mine, records.c.record_id == record_id)
            .values(synced_hash=content, synced_version=version, synced_at=synced_at, updated_at=now)
        )  # fmt: skip
        if result.rowcount:
            marked.append(record_id)
    # Only the rows just marked are decided again, found by key: never a scan of the company's records.
    allowed, target = _move(Event.SYNC)
    conflicts: list[str] = []
    for chunk in _id_chunks(conn, sorted(marked)) if marked else []:
        settled = await conn.execute(
            records.update()
            .where(records.c.company_id == company_id, records.c.data_type == data_type, chunk, allowed)
            .values(state=target)
            .returning(records.c.record_id, records.c.state)
        )  # fmt: skip
        conflicts.extend(record_id for record_id, state in settled if state == State.CONFLICT)
    return sorted(conflicts)


async def _held_at(
    conn: AsyncConnection, mine: sa.ColumnElement[bool], company_id: str, data_type: str, at: float
) -> list[tuple[str, int, str]]:
    """(record, version, content) Codat held at `at`, for records `mine` (not in the books, covered) whose
    latest acceptance came later: the newest push of each whose dataset was Complete by `at`."""
    later = sa.select(records.c.record_id).where(
        mine, sa.or_(records.c.accepted_at.is_(None), records.c.accepted_at > at)
    )
    query = (
        sa.select(push_records.c.record_id, push_records.c.version, push_records.c.content_hash,
                  datasets.c.completed_at)
        .join(pushes, pushes.c.id == push_records.c.push_id)
        .join(datasets, datasets.c.id == pushes.c.dataset_id)
        .where(pushes.c.company_id == company_id, pushes.c.data_type == data_type,
               datasets.c.status == "Complete", datasets.c.completed_at <= at,
               push_records.c.content_hash.is_not(None), push_records.c.record_id.in_(later))
    )  # fmt: skip
    newest: dict[str, tuple[float, int, str]] = {}
    for record_id, version, content, completed in await conn.execute(query):
        if record_id not in newest or (completed, version) > newest[record_id][:2]:
            newest[record_id] = (completed, version, content)
    return [(record_id, version, content) for record_id, (_, version, content) in sorted(newest.items())]


async def mark_late_told(conn: AsyncConnection, company_id: str, ids: dict[str, list[str]], now: float) -> None:
    """Staff were told these records reached Codat too late for any `latest` sync (told once: a fact, no move)."""
    for data_type, record_ids in ids.items():
        await lock_outbox(conn, company_id, data_type)
        mine = sa.and_(records.c.company_id == company_id, records.c.data_type == data_type)
        for chunk in _id_chunks(conn, record_ids):
            await conn.execute(records.update().where(mine, chunk).values(late_told_at=now))


# -- retention and purge (service/retention.py, service/purge.py) -----------------------------------------
# Deletes only: no state moves. `records` holds each record's current version and is never pruned; the
# history of versions sent is `push_records`, written above by `claim`, so this module deletes it too.


async def prune_superseded_versions(conn: AsyncConnection, started_before: float, limit: int) -> int:
    """Delete at most `limit` rows of version history that nothing needs any more; returns how many.

    A row goes when its push started before `started_before` and is finished, its dataset (if any) has
    ended, and its version is older than the record's current one. Kept: a record's current version (the
    one a sync learnt of late asks about), anything in a push or dataset still open.
    """
    finished = sa.or_(pushes.c.dataset_id.is_(None), datasets.c.id.is_(None), datasets.c.terminal.is_(True))
    old = (
        sa.select(push_records.c.push_id, push_records.c.record_id)
        .join(pushes, pushes.c.id == push_records.c.push_id)
        .join(records, sa.and_(records.c.company_id == pushes.c.company_id, records.c.data_type == pushes.c.data_type,
                               records.c.record_id == push_records.c.record_id))
        .outerjoin(datasets, datasets.c.id == pushes.c.dataset_id)
        .where(pushes.c.started_at < started_before, pushes.c.finished_at.is_not(None), finished,
               push_records.c.version < records.c.version)
        .limit(limit)
    )  # fmt: skip
    stmt = push_records.delete().where(sa.tuple_(push_records.c.push_id, push_records.c.record_id).in_(old))
    return int((await conn.execute(stmt)).rowcount)


async def delete_push_versions(conn: AsyncConnection, push_id: str, limit: int) -> int:
    """Delete at most `limit` rows of one push's version history (the push itself is going); returns how many."""
    some = sa.select(push_records.c.record_id).where(push_records.c.push_id == push_id).limit(limit)
    stmt = push_records.delete().where(push_records.c.push_id == push_id, push_records.c.record_id.in_(some))
    return int((await conn.execute(stmt)).rowcount)


async def count_company_records(conn: AsyncConnection, company_id: str) -> int:
    return int(await conn.scalar(sa.select(sa.func.count()).where(records.c.company_id == company_id)) or 0)


async def purge_company_records(conn: AsyncConnection, company_id: str, limit: int) -> int:
    """Delete at most `limit` of a purged company's records, every version; returns how many."""
    some = (
        sa.select(records.c.data_type, records.c.record_id).where(records.c.company_id == company_id).limit(limit)
    )
    stmt = records.delete().where(
        records.c.company_id == company_id, sa.tuple_(records.c.data_type, records.c.record_id).in_(some)
    )
    return int((await conn.execute(stmt)).rowcount)
