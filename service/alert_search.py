"""Alert search: by company, dataset id, delivery id, event type, kind, status and text in the body.

One query for the admin API (`GET /v1/alerts`), the CLI (`alerts list` / `alerts search`) and the Sync
Health page (`/ui/alerts`). Newest first, keyset-paginated on (received_at, id): a page costs what its
rows cost, however deep, and alerts arriving meanwhile never shift a page.

The exact filters use btree indexes (company, dataset and type each with received_at; the delivery id
is the primary key). The text filter `q` is a case-insensitive substring of the body as received
(a dataset or record id, an error message, …). Its index is filled after the acknowledgement, by the
indexer job (service/alert_index.py), up to a watermark; a text search is one statement of two parts:
the index for the alerts at or before the watermark, and a scan of the bodies of the few alerts after it
(the last half minute or so, read by `received_at`), so an alert is found as soon as it is acknowledged.

- PostgreSQL: `alert_texts.text` (`encode(body, 'escape')`) ILIKE '%q%' over a pg_trgm GIN index, and
  the same test on `encode(alerts.body, 'escape')` for the tail. `q` is escaped the way `encode` escapes
  the body (a backslash doubled, non-ASCII bytes as `\\nnn`), so any text matches itself; case folding is
  ASCII only. Without pg_trgm the index part scans `alert_texts`.
- SQLite: an FTS5 trigram table (`alert_texts_fts`); a phrase of `q`'s trigrams is exactly a substring.
  The tail is matched with LIKE (ASCII case folding only: FTS5 also folds other letters, so for about
  half a minute `q` "É" finds "é" only once indexed). FTS5 cannot look up fewer than three characters: a
  shorter `q` scans every body with LIKE, in one query.
"""

from __future__ import annotations

import base64
import unicodedata
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine

from service.alert_index import SQLITE_FTS, WATERMARK_ID, after
from service.db import alert_text_watermark, alert_texts, alerts, reader

MAX_QUERY_CHARS = 200
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
PG_TRGM_INDEX = "ix_alert_texts_text_trgm"  # migration 0013
SQLITE_TRIGRAM = 3  # FTS5's trigram tokenizer finds nothing shorter


class BadSearch(ValueError):
    """A filter no alert could match as given: the message starts with the parameter's name."""


@dataclass(frozen=True)
class AlertSearch:
    """The filters, all optional, combined with AND."""

    q: str | None = None
    company: str | None = None
    dataset: str | None = None
    delivery: str | None = None
    type: str | None = None
    kind: str | None = None
    status: str | None = None
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None  # a previous page's next_cursor


@dataclass
class AlertPage:
    rows: list[RowMapping]
    next_cursor: str | None


def check_text(q: str) -> str:
    """`q` if it can be searched for: 1 to 200 characters, no control characters."""
    if not q or len(q) > MAX_QUERY_CHARS:
        raise BadSearch(f"q: 1 to {MAX_QUERY_CHARS} characters")
    if "\ufffd" in q or any(unicodedata.category(ch) == "Cc" for ch in q):
        raise BadSearch("q: may not hold control characters or undecodable bytes")
    return q


def encode_cursor(received_at: float, alert_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([received_at, alert_id])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The last (received_at, id) of the previous page; BadSearch for anything not handed out."""
    try:
        value = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        value = None
    if (not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], int | float)
            or isinstance(value[0], bool) or not isinstance(value[1], str)):  # fmt: skip
        raise BadSearch("cursor: not one this API handed out (use nextCursor as given)")
    return float(value[0]), value[1]


def like_escape(text: str) -> str:
    """`text` as a LIKE pattern matching itself (escape character `\\`)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def bytea_escape(text: str) -> str:
    """`text` as PostgreSQL's `encode(bytea, 'escape')` renders its UTF-8 bytes."""
    out = []
    for byte in text.encode("utf-8"):
        if byte == 0x5C:
            out.append("\\\\")
        elif byte == 0 or byte >= 0x80:
            out.append(f"\\{byte:03o}")
        else:
            out.append(chr(byte))
    return "".join(out)


def fts_phrase(text: str) -> str:
    """An FTS5 MATCH string: `text` as one phrase (its trigrams in a row, i.e. the substring)."""
    return '"' + text.replace('"', '""') + '"'


def indexed(dialect: str, q: str) -> bool:
    """Whether `q` is looked up in the text index (and the tail after its watermark scanned apart)."""
    return dialect == "postgresql" or len(q) >= SQLITE_TRIGRAM


def _pg_pattern(q: str) -> sa.BindParameter[str]:
    # The pattern is rendered into the statement (quoted by SQLAlchemy), not sent as a parameter: with a
    # parameter, asyncpg's prepared statement soon gets PostgreSQL's generic plan, which cannot see how
    # rare the text is and walks every alert by received_at, filtering (measured: 50 ms at 5,000 alerts,
    # linear in the table). With the literal, the planner picks the trigram index for rare text.
    return sa.bindparam("q_pattern", "%" + like_escape(bytea_escape(q)) + "%", literal_execute=True)


def index_condition(dialect: str, q: str) -> sa.ColumnElement[bool]:
    """Alerts whose indexed text holds `q` (those at or before the indexer's watermark)."""
    if dialect == "postgresql":
        matching = sa.select(alert_texts.c.alert_id).where(alert_texts.c.text.ilike(_pg_pattern(q), escape="\\"))
    else:
        fts = sa.text(f"SELECT rowid FROM {SQLITE_FTS} WHERE {SQLITE_FTS} MATCH :fts_phrase")  # noqa: S608
        matching = sa.select(alert_texts.c.alert_id).where(
            alert_texts.c.id.in_(fts.bindparams(fts_phrase=fts_phrase(q))))
    return alerts.c.id.in_(matching)


def body_condition(dialect: str, q: str) -> sa.ColumnElement[bool]:
    """Alerts whose body holds `q`, read from the body itself: the tail, or a `q` too short for FTS5."""
    if dialect == "postgresql":
        return sa.func.encode(alerts.c.body, "escape").ilike(_pg_pattern(q), escape="\\")
    return sa.cast(alerts.c.body, sa.Text).like("%" + like_escape(q) + "%", escape="\\")


def _conditions(search: AlertSearch) -> list[sa.ColumnElement[bool]]:
    """The exact filters and the cursor: everything but the text."""
    where: list[sa.ColumnElement[bool]] = []
    exact: dict[str, Any] = {"company_id": search.company, "dataset_id": search.dataset, "id": search.delivery,
                             "type": search.type, "kind": search.kind, "status": search.status}  # fmt: skip
    where.extend(alerts.c[column] == value for column, value in exact.items() if value is not None)
    if search.cursor:
        received_at, alert_id = decode_cursor(search.cursor)
        where.append(sa.or_(alerts.c.received_at < received_at,
                            sa.and_(alerts.c.received_at == received_at, alerts.c.id < alert_id)))  # fmt: skip
    return where


def _page(where: list[sa.ColumnElement[bool]], limit: int) -> sa.Select[Any]:
    """One more row than the page, to know whether another follows."""
    return (sa.select(alerts).where(*where).order_by(alerts.c.received_at.desc(), alerts.c.id.desc())
            .limit(limit + 1))  # fmt: skip


def statement(dialect: str, search: AlertSearch) -> sa.Select[Any]:
    """The page's query (BadSearch for a filter that cannot be). Indexed text is two parts in one statement,
    so both see one snapshot: the index's matches (every alert at or before the indexer's watermark, which
    commits with the rows it covers) and the tail's (the alerts after it, their bodies scanned)."""
    where = _conditions(search)
    if search.q is None:
        return _page(where, search.limit)
    q = check_text(search.q)
    if not indexed(dialect, q):
        return _page([*where, body_condition(dialect, q)], search.limit)
    mark = sa.select(alert_text_watermark.c.received_at, alert_text_watermark.c.alert_id).where(
        alert_text_watermark.c.id == WATERMARK_ID)
    tail = after((mark.with_only_columns(alert_text_watermark.c.received_at).scalar_subquery(),
                  mark.with_only_columns(alert_text_watermark.c.alert_id).scalar_subquery()))  # fmt: skip
    parts = sa.union_all(
        sa.select(_page([*where, index_condition(dialect, q)], search.limit).subquery()),
        sa.select(_page([*where, tail, body_condition(dialect, q)], search.limit).subquery()),
    ).subquery("found")
    return sa.select(parts).order_by(parts.c.received_at.desc(), parts.c.id.desc()).limit(search.limit + 1)


async def search_alerts(engine: AsyncEngine, search: AlertSearch) -> AlertPage:
    """One page of the alerts matching `search`, newest first (BadSearch for a filter that cannot be)."""
    query = statement(engine.dialect.name, search)
    async with reader(engine).connect() as conn:
        rows = list((await conn.execute(query)).mappings().all())
    more = len(rows) > search.limit
    rows = rows[: search.limit]
    last = rows[-1] if more and rows else None
    return AlertPage(rows, encode_cursor(last["received_at"], last["id"]) if last is not None else None)
