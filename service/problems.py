"""Problems: what staff were told about, from the moment it opens until it resolves by itself.

Every notification is about a problem — its (kind, company, subject), the notification's dedupe key.
The first notification opens it; later ones of the same key count on the open row (`count`,
`last_seen_at`). When the condition clears (the connection is linked again, a dataset of the same data
type completes with none of the failed dataset's records still failed, a sync succeeds, the record in
conflict is sent with the books' content, the dead alert is processed, the lost target delivers again)
the code that sees it calls `Notifier.resolve`, which closes the row here and tells staff "resolved".

A problem that comes back within RELAY_NOTIFY_DEDUPE_SECONDS of its resolution is the same problem:
its row is reopened (count + 1, acknowledgement cleared) and no new message is sent (issue 17). One
that comes back later is a new problem, told at once.

This module is the only writer of `problems` (tests/test_owners.py).
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from service.clock import iso
from service.db import OPEN_PROBLEM, problems

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_SUBJECT_CHARS = 255  # problems.subject


class State(enum.StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class Seen(enum.Enum):
    NEW = "new"  # a new problem: told (unless the notification's own window says otherwise)
    OPEN = "open"  # still open: the dedupe window decides whether it is told again
    REOPENED = "reopened"  # came back within the window after resolving: the same problem, not told again


@dataclass(frozen=True)
class Observed:
    id: str
    seen: Seen


async def observe(
    conn: AsyncConnection, *, kind: str, company_id: str | None, subject: str, key: str, data_type: str | None,
    summary: str, now: float, window_s: float,
) -> Observed:  # fmt: skip
    """Count one occurrence of the problem `key`: open a row, count on the open one, or reopen a recent one."""
    counted = await conn.execute(
        problems.update().where(problems.c.key == key, problems.c.resolved_at.is_(None))
        .values(count=problems.c.count + 1, last_seen_at=now).returning(problems.c.id)
    )  # fmt: skip
    if (found := counted.scalar()) is not None:
        return Observed(found, Seen.OPEN)
    recent = (
        sa.select(problems.c.id).where(problems.c.key == key, problems.c.resolved_at >= now - window_s)
        .order_by(problems.c.resolved_at.desc()).limit(1).scalar_subquery()
    )  # fmt: skip
    reopened = await conn.execute(
        problems.update().where(problems.c.id == recent)
        .values(resolved_at=None, acknowledged_at=None, acknowledged_by=None, count=problems.c.count + 1,
                last_seen_at=now)
        .returning(problems.c.id)
    )  # fmt: skip
    if (found := reopened.scalar()) is not None:
        return Observed(found, Seen.REOPENED)
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    upsert = (
        insert(problems).values(
            id=uuid.uuid4().hex, kind=kind, company_id=company_id, subject=subject[:MAX_SUBJECT_CHARS], key=key,
            data_type=data_type, summary=summary, opened_at=now, last_seen_at=now, count=1,
        )
        # Two transactions opening the same problem at once (PostgreSQL): the second counts on the first's row.
        .on_conflict_do_update(index_elements=["key"], index_where=OPEN_PROBLEM,
                               set_={"count": problems.c.count + 1, "last_seen_at": now})
        .returning(problems.c.id, problems.c.count)
    )  # fmt: skip
    row = (await conn.execute(upsert)).mappings().one()
    return Observed(row["id"], Seen.NEW if row["count"] == 1 else Seen.OPEN)


async def resolve(
    conn: AsyncConnection, now: float, *, kinds: Sequence[str], company_id: str | None = None,
    subjects: Sequence[str] | None = None, data_type: str | None = None, ids: Sequence[str] | None = None,
) -> list[RowMapping]:  # fmt: skip
    """Close the open problems matching every filter given; returns the rows closed (none: nothing was open)."""
    where: list[sa.ColumnElement[bool]] = [problems.c.kind.in_(list(kinds)), problems.c.resolved_at.is_(None)]
    if company_id is not None:
        where.append(problems.c.company_id == company_id)
    if subjects is not None:
        where.append(problems.c.subject.in_([s[:MAX_SUBJECT_CHARS] for s in subjects]))
    if data_type is not None:
        where.append(problems.c.data_type == data_type)
    if ids is not None:
        where.append(problems.c.id.in_(list(ids)))
    closed = await conn.execute(problems.update().where(*where).values(resolved_at=now).returning(*problems.c))
    return list(closed.mappings().all())


async def open_rows(
    conn: AsyncConnection, *, kinds: Sequence[str], company_id: str, data_type: str | None = None
) -> list[RowMapping]:
    """The open problems of some kinds of one company (the resolvers' candidates; indexed by company and kind)."""
    query = sa.select(problems).where(
        problems.c.company_id == company_id, problems.c.kind.in_(list(kinds)), problems.c.resolved_at.is_(None)
    )
    if data_type is not None:
        query = query.where(problems.c.data_type == data_type)
    return list((await conn.execute(query)).mappings().all())


async def any_open(conn: AsyncConnection, kind: str, subjects: Sequence[str]) -> bool:
    """Whether one of these subjects of `kind` is an open problem: a cheap guard for hot paths."""
    if not subjects:
        return False
    query = sa.select(problems.c.id).where(
        problems.c.kind == kind, problems.c.subject.in_(list(subjects)), problems.c.resolved_at.is_(None)
    )
    return (await conn.execute(query.limit(1))).first() is not None


async def acknowledge(conn: AsyncConnection, problem_id: str, by: str, now: float) -> RowMapping | None:
    """Someone is on it: the problem stays open (it resolves only by itself). None: no such problem."""
    await conn.execute(
        problems.update().where(problems.c.id == problem_id, problems.c.acknowledged_at.is_(None))
        .values(acknowledged_at=now, acknowledged_by=by[:255])
    )  # fmt: skip
    return (await conn.execute(sa.select(problems).where(problems.c.id == problem_id))).mappings().first()


def state_of(row: RowMapping) -> State:
    if row["resolved_at"] is not None:
        return State.RESOLVED
    return State.ACKNOWLEDGED if row["acknowledged_at"] is not None else State.OPEN


def listing(*, state: State | None, company_id: str | None, limit: int) -> sa.Select[Any]:
    """Newest first; `open` is every unresolved problem, acknowledged or not; `acknowledged` only those."""
    query = sa.select(problems).order_by(problems.c.opened_at.desc(), problems.c.id.desc()).limit(limit)
    if state is State.RESOLVED:
        query = query.where(problems.c.resolved_at.is_not(None))
    elif state is State.ACKNOWLEDGED:
        query = query.where(problems.c.resolved_at.is_(None), problems.c.acknowledged_at.is_not(None))
    elif state is State.OPEN:
        query = query.where(problems.c.resolved_at.is_(None))
    if company_id is not None:
        query = query.where(problems.c.company_id == company_id)
    return query


def age(seconds: float) -> str:
    """3d 4h, 2h 5m, 7m 12s, 40s: enough to see what is old at a glance."""
    whole = int(seconds)
    days, hours, minutes = whole // 86400, whole % 86400 // 3600, whole % 3600 // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {whole % 60}s" if minutes else f"{whole}s"


def problem_json(row: RowMapping, now: float) -> dict[str, Any]:
    """A problem as the API, the CLI and the page show it; `ageSeconds` runs until it resolved."""
    until = row["resolved_at"] if row["resolved_at"] is not None else now
    return {
        "id": row["id"],
        "kind": row["kind"],
        "state": state_of(row).value,
        "companyId": row["company_id"],
        "subject": row["subject"],
        "dataType": row["data_type"],
        "summary": row["summary"],
        "count": row["count"],
        "openedAt": iso(row["opened_at"]),
        "lastSeenAt": iso(row["last_seen_at"]),
        "acknowledgedAt": iso(row["acknowledged_at"]),
        "acknowledgedBy": row["acknowledged_by"],
        "resolvedAt": iso(row["resolved_at"]),
        "ageSeconds": round(max(0.0, until - row["opened_at"]), 3),
    }


# -- retention and purge (service/retention.py, service/purge.py): deletes only ----------------------------


def unresolved_subjects() -> sa.Select[Any]:
    """Subjects of problems not resolved (an alert id, a dataset id, …): the prune keeps what they name."""
    return sa.select(problems.c.subject).where(problems.c.resolved_at.is_(None))


def unresolved_ids() -> sa.Select[Any]:
    """Ids of problems not resolved: the prune keeps the notifications that told them."""
    return sa.select(problems.c.id).where(problems.c.resolved_at.is_(None))


async def prune_resolved(conn: AsyncConnection, before: float, limit: int) -> int:
    """Delete at most `limit` problems resolved before `before` (past any dedupe window); returns how many."""
    old = sa.select(problems.c.id).where(problems.c.resolved_at < before).limit(limit)
    return int((await conn.execute(problems.delete().where(problems.c.id.in_(old)))).rowcount)


async def count_company(conn: AsyncConnection, company_id: str) -> int:
    query = sa.select(sa.func.count()).select_from(problems).where(problems.c.company_id == company_id)
    return int(await conn.scalar(query) or 0)


async def purge_company(conn: AsyncConnection, company_id: str, limit: int) -> int:
    """Delete at most `limit` of a purged company's problems, open or not; returns how many."""
    some = sa.select(problems.c.id).where(problems.c.company_id == company_id).limit(limit)
    return int((await conn.execute(problems.delete().where(problems.c.id.in_(some)))).rowcount)
