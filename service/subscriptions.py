"""Codat webhook consumers for this relay: what `codat-relay subscribe` plans and does, and what `doctor` checks.

One consumer per event type, as Codat's docs advise (docs/using-the-api/webhooks/create-consumer.md), each
at this relay's webhook URL. The plan is pure: it compares the consumers Codat has with the ones wanted.
Consumers at other URLs are never touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from service.alerts import SUBSCRIBED_EVENT_TYPES
from service.codat.client import CodatClient
from service.codat.models import WebhookConsumer

WEBHOOK_PATH = "/webhooks/codat"
MAX_CONSUMERS = 50  # per Codat client (platform-current.json, create-webhook-consumer)
NEXT_STEP = (
    "Next: Codat signs each consumer's deliveries with that consumer's own secret, shown in the Portal "
    "(Monitor > Webhooks > Events > the consumer > Signing secret), never by the API. Put every one of them "
    "in RELAY_WEBHOOK_SECRETS (comma-separated), restart the relay, then run `codat-relay doctor`."
)


class TooManyConsumers(Exception):
    """The plan would take the client past Codat's 50 consumers."""


def webhook_url(public_url: str) -> str:
    """The URL Codat posts to, from RELAY_PUBLIC_URL (`https://relay.example.com`)."""
    return public_url.rstrip("/") + WEBHOOK_PATH


def same_url(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


@dataclass(frozen=True)
class Wanted:
    event_type: str
    tags: tuple[str, ...] = ()

    def fits(self, consumer: WebhookConsumer) -> bool:
        return (tuple(consumer.event_types) == (self.event_type,) and not consumer.disabled
                and sorted(consumer.company_tags or ()) == sorted(self.tags))  # fmt: skip


@dataclass
class Plan:
    url: str
    keep: list[WebhookConsumer] = field(default_factory=list)
    create: list[Wanted] = field(default_factory=list)
    differing: list[WebhookConsumer] = field(default_factory=list)  # at our URL, not as wanted
    replace: bool = False

    @property
    def delete(self) -> list[WebhookConsumer]:
        return self.differing if self.replace else []

    @property
    def blocked(self) -> bool:
        """Differing consumers stand in the way and `--replace` was not given: nothing is changed."""
        return bool(self.differing) and not self.replace

    def to_json(self) -> dict[str, object]:
        return {
            "url": self.url,
            "keep": [c.to_json() for c in self.keep],
            "create": [{"url": self.url, "eventTypes": [w.event_type], "companyTags": list(w.tags)}
                       for w in self.create],
            "differing": [c.to_json() for c in self.differing],
            "delete": [c.to_json() for c in self.delete],
            "blocked": self.blocked,
        }  # fmt: skip


def plan(
    existing: Sequence[WebhookConsumer],
    url: str,
    *,
    tags: Sequence[str] = (),
    replace: bool = False,
    event_types: Sequence[str] = SUBSCRIBED_EVENT_TYPES,
) -> Plan:
    """Keep each consumer that is exactly one wanted; any other consumer at `url` differs (more types, other
    tags, disabled, a duplicate) and is deleted only with `replace`; every wanted one not kept is created."""
    wanted = [Wanted(t, tuple(tags)) for t in event_types]
    result = Plan(url=url, replace=replace)
    for consumer in (c for c in existing if same_url(c.url, url)):
        match = next((w for w in wanted if w.fits(consumer)), None)
        if match is not None:
            wanted.remove(match)
            result.keep.append(consumer)
        else:
            result.differing.append(consumer)
    result.create = [] if result.blocked else wanted
    if len(existing) - len(result.delete) + len(result.create) > MAX_CONSUMERS:
        raise TooManyConsumers(
            f"Codat allows {MAX_CONSUMERS} consumers per client; {len(existing)} exist and "
            f"{len(result.create)} more are needed: delete unused ones (`codat-relay subscriptions delete ID`)"
        )
    return result


async def apply(codat: CodatClient, planned: Plan) -> list[WebhookConsumer]:
    """Delete the differing consumers first (their types are about to be covered), then create; the created."""
    if planned.blocked:
        return []
    for consumer in planned.delete:
        await codat.delete_webhook_consumer(consumer.id)
    return [await codat.create_webhook_consumer(planned.url, [w.event_type], w.tags) for w in planned.create]


def missing_types(
    consumers: Sequence[WebhookConsumer], url: str, event_types: Sequence[str] = SUBSCRIBED_EVENT_TYPES
) -> list[str]:
    """The needed event types no enabled consumer at `url` subscribes to (`doctor`)."""
    covered = {t for c in consumers if same_url(c.url, url) and not c.disabled for t in c.event_types}
    return [t for t in event_types if t not in covered]
