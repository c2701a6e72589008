"""Alert search (issue 17): `GET /v1/alerts` filters by company, dataset, delivery id, event type and text
in the body, newest first with a cursor; the text is found through each backend's index (migration 0013)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from service.alert_search import AlertSearch, bytea_escape, search_alerts, statement
from service.clock import FixedClock
from service.db import alerts, create_engine
from service.testing import legacy_body, running_app
from tests.conftest import ADMIN_TOKEN, TEST_AUTH_HEADER, make_settings

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


async def deliver(client: httpx.AsyncClient, payload: dict[str, Any]) -> str:
    response = await client.post(
        "/webhooks/codat", content=json.dumps(payload, ensure_ascii=False).encode(),
        headers={"authorization": TEST_AUTH_HEADER},
    )
    assert response.status_code in (200, 202), response.text
    return str(response.json()["id"])


def other(company: str, message: str) -> dict[str, Any]:
    """An alert no handler acts on (stored `ignored`): nothing runs behind the test's back."""
    return legacy_body("Rate Limit Reached", CompanyId=company, Message=message, Data={})


async def ids(client: httpx.AsyncClient, query: str) -> list[str]:
    response = await client.get(f"/v1/alerts?{query}", headers=ADMIN)
    assert response.status_code == 200, response.text
    return [a["id"] for a in response.json()["results"]]


async def test_each_filter_finds_its_alerts(database_url: str) -> None:
    clock = FixedClock()
    async with running_app(make_settings(database_url), clock=clock) as (_, client):
        dataset = await deliver(client, legacy_body(CompanyId="co-a", Data={
            "dataType": "commerce-orders", "datasetStatus": "ValidationError", "datasetId": "ds-7781"}))
        clock.advance(1)
        limit = await deliver(client, other("co-b", "Rate limit of 1000/min reached for order-55_x%"))
        clock.advance(1)
        cafe = await deliver(client, other("co-b", "Café Nørd: back\\slash"))
        clock.advance(1)
        short = await deliver(client, other("co-c", "ok"))

        assert await ids(client, "companyId=co-b") == [cafe, limit]
        assert await ids(client, "datasetId=ds-7781") == [dataset]
        assert await ids(client, f"deliveryId={limit}") == [limit]
        assert await ids(client, "type=Rate%20Limit%20Reached") == [short, cafe, limit]
        assert await ids(client, "type=Data%20Sync%20Status%20Changed%20To%20Error") == [dataset]
        # Text in the body: a substring, any case; LIKE's wildcards and the escape character are plain text.
        assert await ids(client, "q=7781") == [dataset]
        assert await ids(client, "q=validationerror") == [dataset]
        assert await ids(client, "q=ORDER-55_X%25") == [limit]
        assert await ids(client, "q=55%25") == []  # "%" is a character, not "anything"
        assert await ids(client, "q=r-55_") == [limit]
        assert await ids(client, "q=back%5C%5Cslash") == [cafe]  # the body holds JSON's escaped backslash
        assert await ids(client, "q=Caf%C3%A9%20N%C3%B8rd") == [cafe]  # non-ASCII text finds itself
        assert await ids(client, "q=%22ok") == [short]  # shorter than a trigram on SQLite: scanned
        assert await ids(client, "q=ok") == [short]
        assert await ids(client, "q=co-b&companyId=co-b&type=Rate%20Limit%20Reached") == [cafe, limit]
        assert await ids(client, "q=co-b&companyId=co-a") == []
        assert await ids(client, "q=no-such-text-anywhere") == []


async def test_the_cursor_walks_every_alert_once_newest_first(database_url: str) -> None:
    """Alerts received in the same instant are ordered by id; a page boundary between them loses none."""
    clock = FixedClock()
    delivered: list[tuple[float, str]] = []
    async with running_app(make_settings(database_url), clock=clock) as (_, client):
        for n in range(7):
            delivered.append((clock.now(), await deliver(client, other("co-page", f"page alert {n}"))))
            if n % 3 == 2:
                clock.advance(1)  # three alerts share each instant
        await deliver(client, other("co-else", "page alert, another company"))
        seen: list[str] = []
        pages = 0
        query = "companyId=co-page&q=page%20alert&limit=2"
        cursor: str | None = None
        while True:
            response = await client.get(f"/v1/alerts?{query}" + (f"&cursor={cursor}" if cursor else ""),
                                        headers=ADMIN)  # fmt: skip
            body = response.json()
            seen += [a["id"] for a in body["results"]]
            pages += 1
            cursor = body["nextCursor"]
            if cursor is None:
                break
    expected = [alert_id for _, alert_id in sorted(delivered, reverse=True)]  # newest first, then id descending
    assert seen == expected
    assert pages == 4


@pytest.mark.parametrize(
    "query",
    ["q=" + "x" * 201, "q=a%01b", "cursor=nope", "cursor=WzEsMl0", "datasetId=%00", "deliveryId=" + "d" * 256],
    ids=["q-too-long", "q-control-char", "cursor-garbage", "cursor-wrong-shape", "dataset-nul", "delivery-too-long"],
)
async def test_a_search_that_cannot_be_is_422_naming_the_parameter(database_url: str, query: str) -> None:
    async with running_app(make_settings(database_url)) as (_, client):
        response = await client.get(f"/v1/alerts?{query}", headers=ADMIN)
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(query.split("=")[0])


def test_the_text_is_escaped_as_postgresql_encodes_the_body() -> None:
    assert bytea_escape("a\\b") == "a\\\\b"
    assert bytea_escape("é") == "\\303\\251"
    assert bytea_escape("plain id-1") == "plain id-1"


async def test_text_search_uses_the_backends_index_and_follows_deletes(database_url: str) -> None:
    """PostgreSQL answers `q` from the pg_trgm GIN index; SQLite from the FTS5 trigram table, which the
    triggers keep in step when alerts are deleted (retention, purge)."""
    clock = FixedClock()
    async with running_app(make_settings(database_url), clock=clock) as (_, client):
        gone = await deliver(client, other("co-del", "needle-4412 first"))
        clock.advance(1)
        second = other("co-del", "needle-4412 second")
        kept = await deliver(client, second)
        assert await deliver(client, second) == kept  # a duplicate delivery: stored once, indexed once
    engine = create_engine(make_settings(database_url))
    try:
        async with engine.begin() as conn:
            await conn.execute(alerts.delete().where(alerts.c.id == gone))
        page = await search_alerts(engine, AlertSearch(q="NEEDLE-4412"))
        assert [row["id"] for row in page.rows] == [kept]
        query = statement(engine.dialect.name, AlertSearch(q="needle-4412"))
        async with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                # A tiny table is read whole or in received_at order: leave the planner only bitmap scans.
                await conn.exec_driver_sql("SET enable_seqscan = off")
                await conn.exec_driver_sql("SET enable_indexscan = off")
                plan = "\n".join((await conn.execute(sa.text("EXPLAIN " + _sql(conn, query)))).scalars())
                assert "ix_alerts_body_trgm" in plan, plan
            else:
                plan = "\n".join(str(r[-1]) for r in await conn.execute(sa.text("EXPLAIN QUERY PLAN "
                                                                               + _sql(conn, query))))  # fmt: skip
                assert "VIRTUAL TABLE INDEX" in plan and "alerts_fts" in plan, plan
                # The external-content index agrees with the table row for row.
                await conn.exec_driver_sql("INSERT INTO alerts_fts(alerts_fts, rank) VALUES ('integrity-check', 1)")
    finally:
        await engine.dispose()


def _sql(conn: Any, query: sa.Select[Any]) -> str:
    return str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))


NASTY = ['"', "'", '""x"', "\\", "%", "_", "*", "abc*", "NEAR(a b)", "a OR b", "AND", "^abc", "body:abc", "-abc",
         "é", "😀 emoji", "\u2028line", "   ", "x" * 200, "'; DROP TABLE alerts; --", "\\000", "%_%"]


@pytest.mark.parametrize("q", NASTY, ids=[f"nasty-{n}" for n in range(len(NASTY))])
async def test_any_text_is_a_search_never_an_error(database_url: str, q: str) -> None:
    """FTS5 query syntax, LIKE wildcards, quotes and SQL are plain text: each finds the alert holding it."""
    async with running_app(make_settings(database_url)) as (_, client):
        holder = await deliver(client, other("co-nasty", f"before {q} after"))
        response = await client.get("/v1/alerts", params={"q": q}, headers=ADMIN)
    assert response.status_code == 200, response.text
    found = [a["id"] for a in response.json()["results"]]
    if q.strip() and not any(ch in q for ch in '"\\\u2028'):  # JSON escapes these in the body as received
        assert found == [holder]
