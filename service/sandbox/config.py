"""Sandbox settings: one dataclass, built from literals (tests), `CODAT_SANDBOX_*` (env) or argparse (CLI).

The sandbox reads `CODAT_SANDBOX_*`, never `RELAY_*`: the relay refuses unknown `RELAY_` variables, and the
two processes often share one shell.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from service.signatures import decode_secret

WebhookShape = Literal["legacy", "legacy_signed", "envelope"]
SHAPES: tuple[str, ...] = get_args(WebhookShape)
ENV_PREFIX = "CODAT_SANDBOX_"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8900
DEFAULT_CLIENT_ID = "5a4db0c0-da70-4e1a-9c2b-5a4db0c0da70"


@dataclass(frozen=True)
class SandboxConfig:
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_shape: WebhookShape = "legacy"
    legacy_auth_header: str | None = None
    # Older Svix deliveries used `svix-*` header names; receivers must take both.
    svix_headers: bool = False
    pace_seconds: float = 5.0
    # Codat endpoints need `Authorization: Basic base64(key)`: this key exactly, or any non-empty key when None.
    api_key: str | None = None
    # Seeds injected faults only (which request fails, webhook order): ids are random on every run.
    seed: int = 0
    # Requests a day; None is Codat's formula, 1,000 x (1 + companies with a linked connection).
    daily_quota: int | None = None
    # Pushes are "being handled" this long, so two overlapping pushes are observable as concurrent.
    push_processing_seconds: float = 0.05
    client_id: str = DEFAULT_CLIENT_ID
    client_name: str = "codat-relay sandbox"
    # Codat: "at most 3 times in 2 minutes", honouring Retry-After; these are the waits between attempts.
    webhook_retry_delays: tuple[float, ...] = field(default=(1.0, 10.0, 60.0))
    webhook_timeout_seconds: float = 15.0

    def __post_init__(self) -> None:
        if self.webhook_shape not in SHAPES:
            raise ValueError(f"webhook_shape must be one of {', '.join(SHAPES)}")
        if self.webhook_shape != "legacy" and not self.webhook_secret:
            raise ValueError(f"webhook_shape {self.webhook_shape} needs webhook_secret (whsec_…)")
        if self.webhook_secret:
            decode_secret(self.webhook_secret)
        if self.pace_seconds < 0 or self.push_processing_seconds < 0:
            raise ValueError("pace_seconds and push_processing_seconds must not be negative")
        if self.daily_quota is not None and self.daily_quota < 0:
            raise ValueError("daily_quota must not be negative")

    def replace(self, **changes: Any) -> SandboxConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SandboxConfig:
        """`CODAT_SANDBOX_<FIELD>` for each field; an unknown or invalid variable is refused by name."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, raw in env.items():
            if not name.startswith(ENV_PREFIX):
                continue
            key = name[len(ENV_PREFIX) :].lower()
            if key not in _FIELDS:
                raise ValueError(f"{name} is not a sandbox setting")
            try:
                values[key] = _parse(key, raw)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return cls(**values)


_FIELDS = {f.name: f for f in dataclasses.fields(SandboxConfig)}
_BOOL_TRUE = {"1", "true", "yes", "on"}
_BOOL_FALSE = {"0", "false", "no", "off", ""}


def _parse(key: str, raw: str) -> Any:
    if key in {"pace_seconds", "push_processing_seconds", "webhook_timeout_seconds"}:
        return float(raw)
    if key in {"seed", "daily_quota"}:
        return int(raw)
    if key == "svix_headers":
        if raw.lower() not in _BOOL_TRUE | _BOOL_FALSE:
            raise ValueError("expected true or false")
        return raw.lower() in _BOOL_TRUE
    if key == "webhook_retry_delays":
        return tuple(float(part) for part in raw.split(",") if part.strip())
    return raw or None


def add_arguments(parser: argparse.ArgumentParser, *, listen: bool = True) -> None:
    """Options for `codat-relay sandbox`; unset ones fall back to `CODAT_SANDBOX_*`, then the default."""
    if listen:
        parser.add_argument("--host", default=DEFAULT_HOST, help=f"listen address (default {DEFAULT_HOST})")
        parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--webhook-url", help="where to send Codat-style webhooks")
    parser.add_argument("--webhook-secret", help="whsec_… secret for signed shapes")
    parser.add_argument("--webhook-shape", choices=SHAPES, help="legacy | legacy_signed | envelope")
    parser.add_argument("--legacy-auth-header", help="Authorization value sent on unsigned legacy webhooks")
    parser.add_argument("--svix-headers", action="store_true", default=None, help="sign with svix-* headers")
    parser.add_argument("--pace-seconds", type=float, help="time a dataset takes to reach its final status")
    parser.add_argument("--api-key", help="require Authorization: Basic base64(key) (default: any non-empty key)")
    parser.add_argument("--seed", type=int, help="seed for injected faults (ids are random on every run)")
    parser.add_argument("--daily-quota", type=int, help="requests a day (default: 1,000 x (1 + linked companies))")
    parser.add_argument("--push-processing-seconds", type=float, help="time each push is 'being handled'")


def config_from_args(ns: argparse.Namespace, environ: Mapping[str, str] | None = None) -> SandboxConfig:
    """The environment's config, overridden by every option given on the command line."""
    base = SandboxConfig.from_env(environ)
    given = {name: getattr(ns, name) for name in _FIELDS if getattr(ns, name, None) is not None}
    return base.replace(**given)
