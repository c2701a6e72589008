"""Alert search (issue 17): `GET /v1/alerts` filters by company, dataset, delivery id, event type and text
in the body, newest first with a cursor; the text is found through each backend's index (migration 0013),
filled after the acknowledgement by the indexer job (service/alert_index.py), and in the tail after it."""

from __future__ import annotations

import json
import shutil
import sqlite3
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service import metrics
from service.alert_index import INDEX_EVERY_S, INDEX_KIND, SETTLE_S, SQLITE_FTS, AlertIndexer, index_batch
from service.alert_search import PG_TRGM_INDEX, AlertSearch, bytea_escape, search_alerts, statement
from service.clock import FixedClock
from service.db import alert_text_watermark, alert_texts, alerts, bookkeeper, create_engine, jobs
from service.purge import purge_company
from service.retention import Pace, Pruner, Retention
from service.testing import legacy_body, running_app
from service.web.app import AppOptions
from tests import ui_factories as make
from tests.conftest import ADMIN_TOKEN, TEST_AUTH_HEADER, make_settings
from tests.queue_helpers import eventually

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
INTEGRITY_CHECK = f"INSERT INTO {SQLITE_FTS}({SQLITE_FTS}, rank) VALUES ('integrity-check', 1)"


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


@pytest.mark.parametrize("indexed", [False, True], ids=["in-the-tail", "indexed"])
async def test_each_filter_finds_its_alerts(database_url: str, indexed: bool) -> None:
    """Every filter finds the same alerts whether the text is read from the tail after the indexer's
    watermark (just received) or from the index (once the indexer job has run)."""
    clock = FixedClock()
    async with running_app(make_settings(database_url), clock=clock) as (app, client):
        dataset = await deliver(client, legacy_body(CompanyId="co-a", Data={
            "dataType": "commerce-orders", "datasetStatus": "ValidationError", "datasetId": "ds-7781"}))
        clock.advance(1)
        limit = await deliver(client, other("co-b", "Rate limit of 1000/min reached for order-55_x%"))
        clock.advance(1)
        cafe = await deliver(client, other("co-b", "Café Nørd: back\\slash"))
        clock.advance(1)
        short = await deliver(client, other("co-c", "ok"))
        if indexed:
            clock.advance(SETTLE_S)
            assert await AlertIndexer(app.state.runtime.engine, clock).run() == 4

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
    """Once indexed, PostgreSQL answers `q` from the pg_trgm GIN index on `alert_texts`; SQLite from the FTS5
    trigram table, which migration 0013's delete trigger keeps in step when alerts are deleted."""
    clock = FixedClock()
    async with running_app(make_settings(database_url), clock=clock) as (_, client):
        gone = await deliver(client, other("co-del", "needle-4412 first"))
        clock.advance(1)
        second = other("co-del", "needle-4412 second")
        kept = await deliver(client, second)
        assert await deliver(client, second) == kept  # a duplicate delivery: stored once, indexed once
    engine = create_engine(make_settings(database_url))
    try:
        clock.advance(SETTLE_S)
        assert await AlertIndexer(engine, clock).run() == 2
        assert await text_rows(engine) == {gone, kept}
        async with engine.begin() as conn:
            await conn.execute(alerts.delete().where(alerts.c.id == gone))
        assert await text_rows(engine) == {kept}
        page = await search_alerts(engine, AlertSearch(q="NEEDLE-4412"))
        assert [row["id"] for row in page.rows] == [kept]
        query = statement(engine.dialect.name, AlertSearch(q="needle-4412"))
        async with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                # A tiny table is read whole or in received_at order: leave the planner only bitmap scans.
                await conn.exec_driver_sql("SET enable_seqscan = off")
                await conn.exec_driver_sql("SET enable_indexscan = off")
                plan = "\n".join((await conn.execute(sa.text("EXPLAIN " + _sql(conn, query)))).scalars())
                assert PG_TRGM_INDEX in plan, plan
                assert "ix_alerts_received_at" in plan, plan  # the tail after the watermark, as a range
            else:
                plan = "\n".join(str(r[-1]) for r in await conn.execute(sa.text("EXPLAIN QUERY PLAN "
                                                                               + _sql(conn, query))))  # fmt: skip
                assert "VIRTUAL TABLE INDEX" in plan and SQLITE_FTS in plan, plan
                assert "ix_alerts_received_at (received_at>?)" in plan, plan
                # The contentless index was told exactly what it had indexed when the alert went.
                await conn.exec_driver_sql(INTEGRITY_CHECK)
                fts = (await conn.exec_driver_sql(
                    f"SELECT rowid FROM {SQLITE_FTS} WHERE {SQLITE_FTS} MATCH '\"needle\"'")).scalars().all()
                assert len(fts) == 1
    finally:
        await engine.dispose()


async def text_rows(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set((await conn.execute(sa.select(alert_texts.c.alert_id))).scalars())


async def test_an_alert_is_found_before_the_indexer_runs(database_url: str) -> None:
    """The webhook's insert indexes nothing: a just-acknowledged alert is found by scanning the tail after
    the watermark, and is found the same way once the indexer has taken it."""
    clock = FixedClock()
    async with running_app(make_settings(database_url), clock=clock) as (app, client):
        engine = app.state.runtime.engine
        fresh = await deliver(client, other("co-new", "Order ord-90210 was rejected"))
        assert await text_rows(engine) == set()
        assert await ids(client, "q=ORD-90210") == [fresh]
        assert await ids(client, "q=ord-90210&companyId=co-new") == [fresh]
        assert await AlertIndexer(engine, clock).run() == 0  # not settled yet: it may still have company
        clock.advance(SETTLE_S)
        before = metrics.ALERTS_INDEXED._value.get()
        assert await AlertIndexer(engine, clock).run() == 1
        assert metrics.ALERTS_INDEXED._value.get() == before + 1
        assert await text_rows(engine) == {fresh}
        assert await ids(client, "q=ORD-90210") == [fresh]  # from the index now, and only once


async def test_the_indexer_catches_up_in_batches_and_search_sees_every_alert_once(database_url: str) -> None:
    """Batches of 3 from the watermark, in (received_at, id) order, alerts sharing an instant included; at
    every step each alert is found exactly once — indexed or in the tail — and the cursor walks them all."""
    clock = FixedClock()
    delivered: list[tuple[float, str]] = []
    async with running_app(make_settings(database_url), clock=clock) as (app, client):
        engine = app.state.runtime.engine
        for n in range(8):
            delivered.append((clock.now(), await deliver(client, other("co-batch", f"batch alert {n}"))))
            if n % 2:
                clock.advance(1)  # two alerts share each instant
        newest_first = [alert_id for _, alert_id in sorted(delivered, reverse=True)]
        clock.advance(SETTLE_S)
        indexer = AlertIndexer(engine, clock, batch_rows=3, pause_s=0)
        steps = []
        for _ in range(4):
            async with bookkeeper(engine).begin() as conn:
                steps.append(await index_batch(conn, clock.now(), 3))
            indexed = await text_rows(engine)
            assert indexed == {alert_id for _, alert_id in sorted(delivered)[: sum(steps)]}
            assert await ids(client, "q=batch%20alert") == newest_first
            assert await walk(client, "q=batch%20alert&limit=3") == newest_first
        assert steps == [3, 3, 2, 0]
        async with engine.connect() as conn:
            mark = (await conn.execute(sa.select(alert_text_watermark.c.received_at,
                                                 alert_text_watermark.c.alert_id))).one()  # fmt: skip
        assert tuple(mark) == max(delivered)
        before = metrics.ALERTS_INDEXED._value.get()
        assert await indexer.run() == 0  # caught up: a run finds nothing more
        assert metrics.ALERTS_INDEXED._value.get() == before
        assert metrics.ALERT_INDEX_LAG._value.get() == clock.now() - max(delivered)[0]


async def walk(client: httpx.AsyncClient, query: str) -> list[str]:
    seen: list[str] = []
    cursor: str | None = None
    while True:
        response = await client.get(f"/v1/alerts?{query}" + (f"&cursor={cursor}" if cursor else ""), headers=ADMIN)
        body = response.json()
        seen += [a["id"] for a in body["results"]]
        cursor = body["nextCursor"]
        if cursor is None:
            return seen


async def test_pruned_and_purged_alerts_leave_nothing_in_the_text_index(database_url: str) -> None:
    """Retention's prune and a company purge delete indexed alerts: their `alert_texts` rows (and on SQLite
    their FTS5 entries) go with them, and search finds only what is left."""
    now = 1_800_000_000.0
    engine = create_engine(make_settings(database_url))
    try:
        old_at = now - Retention().alerts_s - 10  # type: ignore[operator]
        async with engine.begin() as conn:
            await conn.run_sync(lambda sync: [
                make.alert(sync, alert_id, company, "done", at) for alert_id, company, at in
                [("a-old", "co-keep", old_at), ("a-keep", "co-keep", now - 100), ("a-purged", "co-gone", now - 90)]
            ])  # fmt: skip
        assert await AlertIndexer(engine, FixedClock(now)).run() == 3
        assert await text_rows(engine) == {"a-old", "a-keep", "a-purged"}
        pruned = await Pruner(engine, Retention(), FixedClock(now), pace=Pace.fixed(engine.url)).run()
        assert pruned["alerts"] == 1
        assert await text_rows(engine) == {"a-keep", "a-purged"}
        await purge_company(engine, "co-gone", requested_by="test", clock=FixedClock(now))
        assert await text_rows(engine) == {"a-keep"}
        page = await search_alerts(engine, AlertSearch(q="AlertId"))
        assert [row["id"] for row in page.rows] == ["a-keep"]
        if engine.dialect.name == "sqlite":
            async with engine.connect() as conn:
                await conn.exec_driver_sql(INTEGRITY_CHECK)
                left = (await conn.exec_driver_sql(f"SELECT count(*) FROM {SQLITE_FTS} WHERE {SQLITE_FTS} "
                                                   "MATCH '\"AlertId\"'")).scalar()  # fmt: skip
            assert left == 1
    finally:
        await engine.dispose()


async def test_sqlite_vacuum_keeps_the_text_index_in_step(tmp_path: Any, sqlite_template: Any) -> None:
    """VACUUM renumbers the rowids of `alerts` (its key is text) but not `alert_texts.id`, an INTEGER PRIMARY
    KEY, which is the FTS5 rowid: after it (migration 0014 runs one) search and deletes stay right."""
    path = tmp_path / "vacuum.db"
    shutil.copy(sqlite_template, path)
    engine = create_engine(make_settings(f"sqlite+aiosqlite:///{path}"))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda sync: [make.alert(sync, f"a-{n}", f"co-{n}", "done", 1000.0 + n)
                                              for n in range(50)])  # fmt: skip
        assert await AlertIndexer(engine, FixedClock(2000.0)).run() == 50
        async with engine.begin() as conn:  # gaps in both tables' rowids, for VACUUM to close
            await conn.execute(alerts.delete().where(alerts.c.id.in_([f"a-{n}" for n in range(0, 50, 2)])))
        vacuum = sqlite3.connect(path, isolation_level=None)
        vacuum.execute("VACUUM")
        vacuum.close()
        async with engine.begin() as conn:
            await conn.execute(alerts.delete().where(alerts.c.id == "a-7"))
        page = await search_alerts(engine, AlertSearch(q="co-7"))
        assert [row["id"] for row in page.rows] == []
        page = await search_alerts(engine, AlertSearch(q='"CompanyId": "co-9"'))
        assert [row["id"] for row in page.rows] == ["a-9"]
        async with engine.connect() as conn:
            await conn.exec_driver_sql(INTEGRITY_CHECK)
    finally:
        await engine.dispose()


def _sql(conn: Any, query: sa.Select[Any]) -> str:
    return str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))


NASTY = ['"', "'", '""x"', "\\", "%", "_", "*", "abc*", "NEAR(a b)", "a OR b", "AND", "^abc", "body:abc", "-abc",
         "é", "😀 emoji", "\u2028line", "   ", "x" * 200, "'; DROP TABLE alerts; --", "\\000", "%_%"]


@pytest.mark.parametrize("q", NASTY, ids=[f"nasty-{n}" for n in range(len(NASTY))])
@pytest.mark.parametrize("indexed", [False, True], ids=["in-the-tail", "indexed"])
async def test_any_text_is_a_search_never_an_error(database_url: str, q: str, indexed: bool) -> None:
    """FTS5 query syntax, LIKE wildcards, quotes and SQL are plain text: each finds the alert holding it,
    whether read from the tail or from the index."""
    clock = FixedClock()
    async with running_app(make_settings(database_url), clock=clock) as (app, client):
        holder = await deliver(client, other("co-nasty", f"before {q} after"))
        if indexed:
            clock.advance(SETTLE_S)
            assert await AlertIndexer(app.state.runtime.engine, clock).run() == 1
        response = await client.get("/v1/alerts", params={"q": q}, headers=ADMIN)
    assert response.status_code == 200, response.text
    found = [a["id"] for a in response.json()["results"]]
    if q.strip() and not any(ch in q for ch in '"\\\u2028'):  # JSON escapes these in the body as received
        assert found == [holder]


async def test_the_worker_runs_the_indexer_as_its_periodic_job(database_url: str) -> None:
    """`serve`'s worker schedules `index_alert_texts` when it starts and runs it: a settled alert is indexed,
    one received within SETTLE_S is left to a later run, and the next run waits INDEX_EVERY_S."""
    now = 1_800_000_000.0
    settings = make_settings(database_url)
    setup = create_engine(settings)
    async with setup.begin() as conn:
        await conn.run_sync(lambda sync: (make.alert(sync, "a-settled", "co-1", "done", now - SETTLE_S - 1),
                                          make.alert(sync, "a-fresh", "co-1", "done", now - 1)))  # fmt: skip
    await setup.dispose()
    async with running_app(settings, clock=FixedClock(now), options=AppOptions(run_workers=True)) as (app, _):
        engine = app.state.runtime.engine

        async def indexed() -> bool:
            return await text_rows(engine) == {"a-settled"}

        await eventually(indexed)
        async with engine.connect() as conn:
            waiting = (await conn.execute(sa.select(jobs.c.run_at).where(
                jobs.c.kind == INDEX_KIND, jobs.c.status == "waiting"))).scalars().all()  # fmt: skip
        assert waiting == [now + INDEX_EVERY_S]
        assert await text_rows(engine) == {"a-settled"}
