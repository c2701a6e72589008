"""`codat-relay doctor` against the sandbox: all ✓ when wired as `subscribe` wires it, and each ✗ with its fix
when the key, the secret or the subscription is wrong. The relay is a recording fake that verifies signatures
with the secrets it holds (the svix library as the oracle), so the sandbox's signed test delivery is real."""

from __future__ import annotations

import httpx
import pytest
from svix.webhooks import Webhook, WebhookVerificationError

from service import doctor, subscriptions
from service.codat.client import CodatClient
from service.db import create_engine
from service.sandbox import SandboxConfig, create_sandbox_app
from service.settings import Settings
from tests.conftest import make_settings

PUBLIC = "http://relay.test"
SANDBOX = "http://sandbox.test"


def fake_relay(secrets: list[str]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/healthz":
            return httpx.Response(200)
        for secret in secrets:
            try:
                Webhook(secret).verify(request.content, dict(request.headers))
            except WebhookVerificationError:
                continue
            return httpx.Response(202)
        return httpx.Response(401)

    return httpx.MockTransport(handle)


async def _checks(key: str | None, relay_secrets: str, subscribe: bool) -> dict[str, doctor.Check]:
    holder: list[str] = []
    relay = fake_relay(holder)
    app = create_sandbox_app(SandboxConfig(api_key="right-key-123"), transport=relay)
    sandbox = httpx.ASGITransport(app=app)

    async def route(request: httpx.Request) -> httpx.Response:
        if request.url.host == "sandbox.test":
            return await sandbox.handle_async_request(request)
        return relay.handle_request(request)

    settings = Settings(codat_base_url=SANDBOX, public_url=PUBLIC, allow_unauthenticated_webhooks=True,
                        codat_api_key=key)  # fmt: skip
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=httpx.MockTransport(route)) as http:
        async with CodatClient.from_settings(settings, httpx.MockTransport(route)) as codat:
            if subscribe:
                planned = subscriptions.plan(await codat.list_webhook_consumers(), PUBLIC + "/webhooks/codat")
                await subscriptions.apply(codat, planned)
            portal = (await http.get(f"{SANDBOX}/_sandbox/consumers")).json()["results"]
            holder.extend(c["signingSecret"] for c in portal if relay_secrets == "consumers")
            holder.append("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            return {c.name: c for c in await doctor.codat_checks(codat, settings, http)}


async def test_all_pass_when_subscribed_and_the_relay_holds_every_consumers_secret() -> None:
    checks = await _checks("right-key-123", "consumers", subscribe=True)
    assert [(name, c.ok) for name, c in checks.items()] == [
        ("Codat API key", True), ("subscription", True), ("public URL reachable", True), ("signing secret", True)]


async def test_a_wrong_key_fails_with_its_fix() -> None:
    [check] = (await _checks("wrong-key-123", "consumers", subscribe=False)).values()
    assert not check.ok and "RELAY_CODAT_API_KEY" in check.fix


async def test_a_secret_the_relay_lacks_fails_with_its_fix() -> None:
    check = (await _checks("right-key-123", "other", subscribe=True))["signing secret"]
    assert not check.ok and "refused" in check.detail and "RELAY_WEBHOOK_SECRETS" in check.fix


async def test_no_subscription_fails_with_its_fix() -> None:
    check = (await _checks("right-key-123", "consumers", subscribe=False))["subscription"]
    assert not check.ok and "read.completed" in check.detail and "codat-relay subscribe" in check.fix


async def test_database_checks_on_a_fresh_migrated_database(database_url: str) -> None:
    """Migrated, no jobs (workers pass), no deliveries yet (fails with its fix), nothing paused or dead."""
    engine = create_engine(make_settings(database_url))
    try:
        checks = {c.name: c for c in await doctor.database_checks(engine, make_settings(database_url), 1e9,
                                                                  sandbox=True)}  # fmt: skip
    finally:
        await engine.dispose()
    assert checks["database migrated"].ok and checks["workers alive"].ok
    assert checks["companies paused"].ok and checks["dead jobs"].ok
    assert not checks["deliveries received recently"].ok and "Portal" in checks["deliveries received recently"].fix


@pytest.mark.parametrize("name", ["doctor"])
def test_doctor_is_a_command(name: str) -> None:
    from service.cli.entry import build_parser

    assert build_parser().parse_args([name, "--json"]).json is True
