"""`codat-relay subscribe` / `subscriptions list|delete` against the sandbox, and the plan as a pure table."""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr

from service.alerts import SUBSCRIBED_EVENT_TYPES
from service.cli.common import CommandFailed
from service.cli.entry import build_parser
from service.cli.subscriptions import subscribe, subscriptions_delete, subscriptions_list
from service.codat.client import CodatClient
from service.codat.models import WebhookConsumer
from service.settings import Settings
from service.subscriptions import NEXT_STEP, TooManyConsumers, missing_types, plan, webhook_url
from service.testing import SANDBOX_API_KEY, running_sandbox

PUBLIC = "https://relay.example.com"
URL = PUBLIC + "/webhooks/codat"


def consumer(
    cid: str, *types: str, url: str = URL, disabled: bool = False, tags: tuple[str, ...] = ()
) -> WebhookConsumer:
    return WebhookConsumer(id=cid, url=url, event_types=types, disabled=disabled, company_tags=tags or None)


def test_the_needed_event_types_are_exact_names_from_the_parser() -> None:
    """No wildcards (Codat's consumers take exact names): connection.* is spelt out; company/rate-limit kept."""
    assert all("*" not in t for t in SUBSCRIBED_EVENT_TYPES)
    assert {"read.completed", "read.completed.initial", "connection.deleted", "connection.connected",
            "company.deleted", "client.rateLimit.reached", "client.rateLimit.reset"} <= set(SUBSCRIBED_EVENT_TYPES)
    assert len(set(SUBSCRIBED_EVENT_TYPES)) == len(SUBSCRIBED_EVENT_TYPES)


@pytest.mark.parametrize(
    ("existing", "replace", "keep", "differing", "create", "blocked"),
    [
        ([], False, 0, 0, len(SUBSCRIBED_EVENT_TYPES), False),
        ([consumer(f"c{n}", t) for n, t in enumerate(SUBSCRIBED_EVENT_TYPES)], False,
         len(SUBSCRIBED_EVENT_TYPES), 0, 0, False),
        ([consumer("x", "read.completed", url="https://elsewhere/hook")], False, 0, 0,
         len(SUBSCRIBED_EVENT_TYPES), False),
        ([consumer("m", "read.completed", "connection.deleted")], False, 0, 1, 0, True),
        ([consumer("m", "read.completed", "connection.deleted")], True, 0, 1, len(SUBSCRIBED_EVENT_TYPES), False),
        ([consumer("d", "read.completed", disabled=True)], False, 0, 1, 0, True),
        ([consumer("a", "read.completed"), consumer("b", "read.completed")], True, 1, 1,
         len(SUBSCRIBED_EVENT_TYPES) - 1, False),
        ([consumer("t", "read.completed", tags=("region:us",))], True, 0, 1, len(SUBSCRIBED_EVENT_TYPES), False),
    ],
    ids=["none", "all-present", "other-url-untouched", "multi-type-blocks", "multi-type-replaced",
         "disabled-differs", "duplicate-differs", "other-tags-differ"],
)
def test_plan(existing: list[WebhookConsumer], replace: bool, keep: int, differing: int, create: int,
              blocked: bool) -> None:
    """Exact consumers are kept, any other at the URL differs (deleted only with replace), the rest created."""
    planned = plan(existing, URL, replace=replace)
    assert (len(planned.keep), len(planned.differing), len(planned.create), planned.blocked) == (
        keep, differing, create, blocked)
    assert len(planned.delete) == (differing if replace else 0)


def test_plan_refuses_to_pass_codats_fifty_consumers() -> None:
    """45 consumers elsewhere + 11 needed > 50: refused before anything is changed."""
    others = [consumer(f"o{n}", "read.completed", url=f"https://other/{n}") for n in range(45)]
    with pytest.raises(TooManyConsumers, match="50"):
        plan(others, URL)


def test_missing_types_ignore_disabled_and_other_urls() -> None:
    consumers = [consumer("a", "read.completed"), consumer("b", "connection.deleted", disabled=True),
                 consumer("c", "company.deleted", url="https://other/hook")]
    assert missing_types(consumers, URL, ["read.completed", "connection.deleted", "company.deleted"]) == [
        "connection.deleted", "company.deleted"]


def test_public_url_is_a_setting_and_gives_the_webhook_url() -> None:
    """RELAY_PUBLIC_URL: an http(s) URL, trailing slash dropped; the webhook URL is its /webhooks/codat."""
    settings = Settings(public_url=PUBLIC + "/", allow_unauthenticated_webhooks=True)
    assert settings.public_url == PUBLIC and webhook_url(settings.public_url) == URL
    with pytest.raises(ValueError, match="http"):
        Settings(public_url="relay.example.com", allow_unauthenticated_webhooks=True)


# -- the commands against the sandbox ---------------------------------------------------------------


@pytest.fixture
async def codat() -> AsyncIterator[CodatClient]:
    async with running_sandbox() as (_, transport):  # consumers need no company; Codat's endpoints need a key
        async with CodatClient("http://sandbox.test", SecretStr(SANDBOX_API_KEY), transport=transport) as client:
            yield client


def args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


SETTINGS = Settings(public_url=PUBLIC, allow_unauthenticated_webhooks=True)


async def test_subscribe_twice_creates_one_consumer_per_type_then_nothing(
    codat: CodatClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first run creates one consumer per needed type at RELAY_PUBLIC_URL; the second changes nothing."""
    assert await subscribe(codat, SETTINGS, args("subscribe")) == 0
    out = capsys.readouterr().out
    assert f"created {len(SUBSCRIBED_EVENT_TYPES)}" in out and NEXT_STEP in out
    first = await codat.list_webhook_consumers()
    assert sorted(c.event_types for c in first) == sorted((t,) for t in SUBSCRIBED_EVENT_TYPES)
    assert {c.url for c in first} == {URL}
    assert await subscribe(codat, SETTINGS, args("subscribe")) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert await codat.list_webhook_consumers() == first


async def test_dry_run_prints_the_plan_and_changes_nothing(
    codat: CodatClient, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await subscribe(codat, SETTINGS, args("subscribe", "--dry-run", "--url", URL)) == 0
    out = capsys.readouterr().out
    assert "would create  read.completed" in out and "dry run: nothing changed" in out
    assert await codat.list_webhook_consumers() == []


async def test_a_differing_consumer_is_shown_and_replaced_only_with_replace(
    codat: CodatClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """A two-type consumer at the URL blocks (exit 1, nothing changed); --replace deletes it and creates."""
    odd = await codat.create_webhook_consumer(URL, ["read.completed", "connection.deleted"])
    with pytest.raises(CommandFailed, match="--replace"):
        await subscribe(codat, SETTINGS, args("subscribe"))
    assert odd.id in capsys.readouterr().out
    assert await codat.list_webhook_consumers() == [odd]
    assert await subscribe(codat, SETTINGS, args("subscribe", "--replace", "--company-tag", "region:uk")) == 0
    after = await codat.list_webhook_consumers()
    assert odd.id not in {c.id for c in after} and len(after) == len(SUBSCRIBED_EVENT_TYPES)
    assert all(c.company_tags == ("region:uk",) for c in after)


async def test_subscribe_needs_a_url(codat: CodatClient) -> None:
    """No --url and no RELAY_PUBLIC_URL: a one-line failure naming both."""
    with pytest.raises(CommandFailed, match="RELAY_PUBLIC_URL"):
        await subscribe(codat, Settings(allow_unauthenticated_webhooks=True), args("subscribe"))


async def test_list_and_delete_in_json(codat: CodatClient, capsys: pytest.CaptureFixture[str]) -> None:
    """`subscriptions list --json` prints the consumers; `delete ID` removes one."""
    made = await codat.create_webhook_consumer(URL, ["read.completed"])
    await codat.create_webhook_consumer("https://other/hook", ["read.completed"])
    assert await subscriptions_list(codat, SETTINGS, args("subscriptions", "list", "--json", "--url", URL)) == 0
    listed: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    assert listed == [made.to_json()]
    assert await subscriptions_delete(codat, SETTINGS, args("subscriptions", "delete", made.id, "--json")) == 0
    assert json.loads(capsys.readouterr().out) == {"deleted": [made.id]}
    assert [c.url for c in await codat.list_webhook_consumers()] == ["https://other/hook"]
