"""`GET /v1/alerts`, `GET /v1/alerts/{id}`, `POST /v1/alerts/{id}/replay`: admin token, filters, 401/404/422."""

from __future__ import annotations

import json

import httpx
import pytest
import sqlalchemy as sa

from service.clock import FixedClock
from service.db import create_engine, jobs
from service.testing import connection_deleted_body, legacy_body, running_app
from tests.conftest import ADMIN_TOKEN, API_TOKEN, TEST_AUTH_HEADER, make_settings

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


async def deliver(client: httpx.AsyncClient, payload: dict) -> str:  # type: ignore[type-arg]
    response = await client.post(
        "/webhooks/codat", content=json.dumps(payload).encode(), headers={"authorization": TEST_AUTH_HEADER}
    )
    assert response.status_code in (200, 202), response.text
    return str(response.json()["id"])


async def test_alerts_are_listed_newest_first_and_filtered(database_url: str) -> None:
    """Filters by status, kind and company; newest first; the Alert shape of CONTRACT.md."""
    clock = FixedClock()
    async with running_app(make_settings(database_url), clock=clock) as (_, client):
        first = await deliver(client, legacy_body())
        clock.advance(1)
        second = await deliver(client, legacy_body("Rate Limit Reached", Data={}))
        clock.advance(1)
        third = await deliver(client, {**connection_deleted_body(), "payload": {
            "referenceCompany": {"id": "other-co"}, "connection": {"id": "c1"}}})
        everything = (await client.get("/v1/alerts", headers=ADMIN)).json()["results"]
        ignored = (await client.get("/v1/alerts?status=ignored", headers=ADMIN)).json()["results"]
        deleted = (await client.get("/v1/alerts?kind=connection_deleted", headers=ADMIN)).json()["results"]
        company = (await client.get("/v1/alerts?companyId=other-co&limit=5", headers=ADMIN)).json()["results"]
        one = (await client.get("/v1/alerts?limit=1", headers=ADMIN)).json()["results"]
    assert [a["id"] for a in everything] == [third, second, first]
    assert set(everything[0]) == {"id", "kind", "type", "companyId", "status", "attempts", "receivedAt", "lastError"}
    assert [a["id"] for a in ignored] == [second]
    assert [a["id"] for a in deleted] == [third] == [a["id"] for a in company]
    assert [a["id"] for a in one] == [third]
    assert everything[2]["receivedAt"].endswith("Z")


async def test_one_alert_with_its_raw_body(database_url: str) -> None:
    payload = legacy_body()
    async with running_app(make_settings(database_url)) as (_, client):
        alert_id = await deliver(client, payload)
        shown = (await client.get(f"/v1/alerts/{alert_id}", headers=ADMIN)).json()
        missing = await client.get("/v1/alerts/no-such-alert", headers=ADMIN)
    assert json.loads(shown["body"]) == payload
    assert (shown["kind"], shown["datasetStatus"]) == ("dataset_status", "ProcessingError")
    assert missing.status_code == 404


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"authorization": "Bearer wrong"}, 401), ({"authorization": f"Bearer {API_TOKEN}"}, 401),
     ({"authorization": f"Basic {ADMIN_TOKEN}"}, 401)],
    ids=["missing", "wrong", "api-token-is-not-admin", "not-bearer"],
)
async def test_admin_endpoints_need_the_admin_token(database_url: str, headers: dict[str, str], status: int) -> None:
    async with running_app(make_settings(database_url)) as (_, client):
        assert (await client.get("/v1/alerts", headers=headers)).status_code == status
        assert (await client.post("/v1/alerts/x/replay", headers=headers)).status_code == status


@pytest.mark.parametrize("query", ["status=nope", "kind=weird", "limit=0", "limit=abc", "limit=100000"])
async def test_invalid_queries_are_422_naming_the_field(database_url: str, query: str) -> None:
    async with running_app(make_settings(database_url)) as (_, client):
        response = await client.get(f"/v1/alerts?{query}", headers=ADMIN)
    assert response.status_code == 422
    assert response.json()["detail"].startswith(query.split("=")[0])


async def test_replay_requeues_a_stored_alert(database_url: str) -> None:
    """Replay answers 202 for a stored alert and 404 for an unknown one."""
    async with running_app(make_settings(database_url)) as (_, client):
        alert_id = await deliver(client, legacy_body())
        replayed = await client.post(f"/v1/alerts/{alert_id}/replay", headers=ADMIN)
        unknown = await client.post("/v1/alerts/nope/replay", headers=ADMIN)
    assert replayed.status_code == 202 and unknown.status_code == 404
    engine = create_engine(make_settings(database_url))
    async with engine.connect() as conn:
        kinds = (await conn.execute(sa.select(jobs.c.kind, jobs.c.payload))).all()
    await engine.dispose()
    assert [(k, p["alert_id"]) for k, p in kinds] == [("alert", alert_id)] * 2


async def test_metrics_need_the_admin_token_and_count_deliveries(database_url: str) -> None:
    """/metrics is Prometheus text behind the admin token; deliveries and queue depth appear in it."""
    async with running_app(make_settings(database_url)) as (_, client):
        await deliver(client, legacy_body())
        denied = await client.get("/metrics")
        text = (await client.get("/metrics", headers=ADMIN)).text
    assert denied.status_code == 401
    assert 'relay_webhook_deliveries_total{outcome="accepted"}' in text
    assert 'relay_jobs{status="waiting"} 1.0' in text
