"""Bearer tokens and the legacy webhook `Authorization`: an empty value never authenticates anything."""

from __future__ import annotations

import json

import httpx
import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from service.db import alerts, create_engine
from service.settings import Settings
from service.testing import legacy_body, running_app
from tests.conftest import make_settings

ORDERS = "/v1/companies/co-1/records/orders"
EMPTY_AUTHORIZATIONS = ["", "Bearer", "Bearer ", "Bearer    "]


async def _answers(client: httpx.AsyncClient, authorization: str) -> list[int]:
    headers = {"authorization": authorization}
    return [
        (await client.get("/v1/alerts", headers=headers)).status_code,
        (await client.get("/ui", headers=headers)).status_code,
        (await client.put(ORDERS, json={"records": [{"id": "o1"}]}, headers=headers)).status_code,
    ]


async def _alert_count(settings: Settings) -> int:
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            return int(await conn.scalar(sa.select(sa.func.count()).select_from(alerts)) or 0)
    finally:
        await engine.dispose()


@pytest.mark.parametrize("authorization", EMPTY_AUTHORIZATIONS)
async def test_an_empty_bearer_token_is_refused(authorization: str) -> None:
    """`Authorization: Bearer` with no token (or an empty header) is a 401 on the admin API, UI and intake."""
    async with running_app(make_settings()) as (_, client):
        assert await _answers(client, authorization) == [401, 401, 401]


@pytest.mark.parametrize("authorization", EMPTY_AUTHORIZATIONS)
async def test_empty_configured_tokens_refuse_an_empty_bearer(authorization: str) -> None:
    """Defence in depth: even settings built around validation with empty tokens do not let an empty token in."""
    settings = make_settings().model_copy(update={"admin_token": SecretStr(""), "api_token": SecretStr("")})
    async with running_app(settings) as (_, client):
        assert await _answers(client, authorization) == [401, 401, 401]


async def test_an_empty_legacy_header_accepts_no_unsigned_delivery(database_url: str) -> None:
    """With an empty RELAY_WEBHOOK_AUTH_HEADER (bypassing validation), an empty Authorization is 401, not stored."""
    settings = make_settings(database_url).model_copy(update={"webhook_auth_header": SecretStr("")})
    body = json.dumps(legacy_body()).encode()
    async with running_app(settings) as (_, client):
        answer = await client.post("/webhooks/codat", content=body, headers={"authorization": ""})
    assert (answer.status_code, answer.json()) == (401, {"error": "invalid_credentials"})
    assert await _alert_count(settings) == 0
