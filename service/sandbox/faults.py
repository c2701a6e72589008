"""Injected faults: per-endpoint errors, 429 bursts, latency and hangs; webhook duplicates and reordering.

Every random choice comes from the state's seeded `random.Random`, so a run with a given seed and the
same request order answers the same way.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields
from typing import Any

ENDPOINTS = (
    "push", "dataset", "sync_status", "sync_latest", "sync_historic", "delete_connection", "get_connection",
    "create_company", "get_company", "list_syncs", "get_sync", "get_configuration", "set_configuration",
)  # fmt: skip
ALL = "*"
DEFAULT_HANG_S = 30.0


@dataclass
class EndpointFaults:
    error_rate: float = 0.0  # fraction of requests answered with one of error_statuses
    error_statuses: tuple[int, ...] = (500, 503)
    burst_429: int = 0  # the next N requests are answered 429 + Retry-After
    retry_after_s: int = 1
    latency_s: float = 0.0  # added before every answer
    timeouts: int = 0  # the next N requests hang for hang_s, then get 504
    hang_s: float = DEFAULT_HANG_S

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> EndpointFaults:
        names = {f.name: f for f in fields(cls)}
        camel = {_camel(name): name for name in names}
        values: dict[str, Any] = {}
        for key, value in body.items():
            name = camel.get(key, key)
            if name not in names:
                raise ValueError(f"unknown fault '{key}'")
            values[name] = tuple(int(v) for v in value) if name == "error_statuses" else value
        faults = cls(**values)
        if not 0.0 <= faults.error_rate <= 1.0:
            raise ValueError("errorRate must be between 0 and 1")
        if any(status < 400 for status in faults.error_statuses):
            raise ValueError("errorStatuses must be 4xx/5xx")
        return faults

    def to_json(self) -> dict[str, Any]:
        return {_camel(f.name): getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class FaultAnswer:
    """What to do instead of (or before) the real answer."""

    delay_s: float = 0.0
    status: int | None = None
    retry_after_s: int | None = None
    reason: str = ""


def decide(faults: EndpointFaults | None, rng: random.Random) -> FaultAnswer:
    """Consume one request's worth of scripted faults (bursts and timeouts count down)."""
    if faults is None:
        return FaultAnswer()
    if faults.timeouts > 0:
        faults.timeouts -= 1
        return FaultAnswer(delay_s=faults.latency_s + faults.hang_s, status=504, reason="injected timeout")
    if faults.burst_429 > 0:
        faults.burst_429 -= 1
        return FaultAnswer(faults.latency_s, 429, faults.retry_after_s, "injected rate limit")
    if faults.error_rate > 0 and rng.random() < faults.error_rate:
        status = rng.choice(faults.error_statuses)
        retry_after = faults.retry_after_s if status == 429 else None  # every 429 of Codat's says when
        return FaultAnswer(faults.latency_s, status, retry_after, "injected error")
    return FaultAnswer(delay_s=faults.latency_s)


@dataclass
class WebhookFaults:
    duplicates: int = 1  # each webhook is sent this many times at once (same webhook-id)
    reorder_window: int = 0  # hold this many events, then send them shuffled
    max_delay_s: float = 0.0  # random delay before each send, so sends overtake each other

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> WebhookFaults:
        names = {_camel(f.name): f.name for f in fields(cls)}
        unknown = [key for key in body if key not in names and key not in names.values()]
        if unknown:
            raise ValueError(f"unknown webhook fault '{unknown[0]}'")
        faults = cls(**{names.get(key, key): value for key, value in body.items()})
        if faults.duplicates < 1 or faults.reorder_window < 0 or faults.max_delay_s < 0:
            raise ValueError("duplicates >= 1, reorderWindow >= 0, maxDelayS >= 0")
        return faults

    def to_json(self) -> dict[str, Any]:
        return {_camel(f.name): getattr(self, f.name) for f in fields(self)}


def shuffled(items: list[Any], rng: random.Random) -> list[Any]:
    """A seeded shuffle that never returns the original order (else 'out of order' proves nothing)."""
    out = list(items)
    rng.shuffle(out)
    if len(out) > 1 and out == items:
        out.reverse()
    return out


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)
