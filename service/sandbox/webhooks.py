"""Sending webhooks like Codat: in the background, signed or not, retried on the statuses Codat retries.

Every attempt and its answer is recorded, so tests (and people) can see exactly what a receiver got.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from service.sandbox.bodies import Outgoing, build
from service.sandbox.faults import shuffled
from service.sandbox.model import iso
from service.sandbox.state import Event, SandboxState
from service.signatures import decode_secret, sign

if TYPE_CHECKING:
    from service.sandbox.consumers import ConsumerStore

# Codat's legacy service retries exactly these (FACTS §4a); any other non-2xx loses the alert.
RETRY_STATUSES = frozenset({408, 420, 429, 460, 502, 503, 504, 522, 524})
# A receiver's Retry-After is honoured up to this; Codat gives up within ~2 minutes anyway.
MAX_RETRY_AFTER_S = 120.0


@dataclass
class Attempt:
    number: int
    at: float
    status: int | None
    error: str | None
    retry_after: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "attempt": self.number,
            "at": iso(self.at),
            "status": self.status,
            "error": self.error,
            "retryAfter": self.retry_after,
        }


@dataclass
class Delivery:
    seq: int
    message_id: str
    event_type: str
    shape: str
    url: str | None
    body: dict[str, Any]
    raw: bytes
    copy: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    outcome: str = "pending"  # pending | delivered | failed | no_url
    consumer_id: str | None = None  # a webhook consumer's delivery, signed with that consumer's secret
    secret: str | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "messageId": self.message_id,
            "eventType": self.event_type,
            "shape": self.shape,
            "url": self.url,
            "copy": self.copy,
            "body": self.body,
            "headers": self.headers,
            "attempts": [a.to_json() for a in self.attempts],
            "outcome": self.outcome,
            "consumerId": self.consumer_id,
        }


class WebhookSender:
    def __init__(
        self,
        state: SandboxState,
        transport: httpx.AsyncBaseTransport | None = None,
        consumers: ConsumerStore | None = None,
    ) -> None:
        self.state = state
        self.consumers = consumers
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._held: list[Outgoing] = []
        self.deliveries: list[Delivery] = []

    def emit(self, events: list[Event]) -> None:
        """Queue webhooks for `events` and return at once: a delivery never holds up an API answer."""
        window = self.state.webhook_faults.reorder_window
        for event in events:
            outgoing = build(event, self.state)
            if outgoing is None:
                continue
            if window > 0:
                self._held.append(outgoing)
                if len(self._held) >= window:
                    self.flush()
            else:
                self._spawn(self._send_in_order([outgoing]))

    def flush(self) -> int:
        """Send every held webhook now, in a seeded shuffled order (out-of-order delivery)."""
        held, self._held = self._held, []
        if held:
            self._spawn(self._send_in_order(shuffled(held, self.state.fault_rng)))
        return len(held)

    async def drain(self) -> None:
        """Wait until every delivery started so far has finished (tests; shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def reset(self) -> None:
        await self._cancel()
        self._held.clear()
        self.deliveries.clear()

    async def aclose(self) -> None:
        await self._cancel()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            timeout = httpx.Timeout(self.state.config.webhook_timeout_seconds)
            self._client = httpx.AsyncClient(transport=self._transport, timeout=timeout)
        return self._client

    async def _send_in_order(self, outgoing: list[Outgoing]) -> None:
        for item in outgoing:
            await self._send_copies(item)

    async def _send_copies(self, item: Outgoing) -> None:
        config = self.state.config
        raw = orjson.dumps(item.body)
        copies = [
            Delivery(len(self.deliveries) + i, item.message_id, item.event_type, config.webhook_shape,
                     url, item.body, raw, copy=n, consumer_id=consumer_id, secret=secret)
            for i, (n, (url, consumer_id, secret)) in enumerate(
                (n, target) for target in self._targets(item.event_type)
                for n in range(self.state.webhook_faults.duplicates))
        ]  # fmt: skip
        self.deliveries.extend(copies)
        await asyncio.gather(*(self._deliver(d) for d in copies))

    def _targets(self, event_type: str) -> list[tuple[str | None, str | None, str | None]]:
        """(url, consumer id, secret) per receiver: the consumers subscribed to `event_type` once any consumer
        exists (none subscribed: no delivery), else the configured `webhook_url`."""
        if self.consumers is not None and self.consumers.consumers:
            return [(c.url, c.id, c.secret) for c in self.consumers.for_event(event_type)]
        return [(self.state.config.webhook_url, None, None)]

    async def _deliver(self, delivery: Delivery) -> None:
        if delivery.url is None:
            delivery.outcome = "no_url"
            return
        max_delay = self.state.webhook_faults.max_delay_s
        if max_delay > 0:
            await asyncio.sleep(self.state.fault_rng.uniform(0, max_delay))
        delays = self.state.config.webhook_retry_delays
        for number in range(1, len(delays) + 2):
            attempt = await self._attempt(delivery, number)
            delivery.attempts.append(attempt)
            if attempt.status is not None and 200 <= attempt.status < 300:
                delivery.outcome = "delivered"
                return
            retryable = attempt.status is None or attempt.status in RETRY_STATUSES
            if not retryable or number > len(delays):
                break
            wait = attempt.retry_after if attempt.retry_after is not None else delays[number - 1]
            await asyncio.sleep(min(wait, MAX_RETRY_AFTER_S))
        delivery.outcome = "failed"

    async def _attempt(self, delivery: Delivery, number: int) -> Attempt:
        now = self.state.now()
        delivery.headers = self._headers(delivery, int(now))
        assert delivery.url is not None
        try:
            response = await self._http().post(delivery.url, content=delivery.raw, headers=delivery.headers)
        except httpx.HTTPError as exc:
            return Attempt(number, now, None, f"{type(exc).__name__}: {exc}", None)
        return Attempt(number, now, response.status_code, None, _retry_after(response))

    def _headers(self, delivery: Delivery, timestamp: int) -> dict[str, str]:
        config = self.state.config
        headers = {"content-type": "application/json", "x-codat-clientid": config.client_id}
        if delivery.shape == "legacy" and delivery.secret is None:
            if config.legacy_auth_header:
                headers["authorization"] = config.legacy_auth_header
            return headers
        # A consumer's deliveries are signed with its own secret (Codat's Svix service signs every one).
        secret = delivery.secret or config.webhook_secret
        assert secret is not None  # SandboxConfig refuses signed shapes without one
        prefix = "svix-" if config.svix_headers else "webhook-"
        signature = sign(decode_secret(secret), delivery.message_id, timestamp, delivery.raw)
        headers[prefix + "id"] = delivery.message_id
        headers[prefix + "timestamp"] = str(timestamp)
        headers[prefix + "signature"] = signature
        return headers


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
