"""structlog set-up: JSON when not a TTY, and no secret value ever reaches a log line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any
from urllib.parse import unquote, urlsplit

import structlog

from service.settings import SECRET_FIELDS, Settings

REDACTED = "[redacted]"
# Shorter secrets are blanked only where a value is exactly the secret: scrubbing a two-letter Codat
# key out of every string would blank ordinary words. The bearer tokens are at least this long.
MIN_SUBSTRING_CHARS = 8
SENSITIVE_KEYS = frozenset({"authorization", "api_key", "token", "secret", "password", "webhook-signature"})


class Redactor:
    """A processor that blanks sensitive keys and any known secret value wherever it appears."""

    def __init__(self, secrets: Iterable[str]) -> None:
        known = {s for s in secrets if s}
        self._secrets = sorted((s for s in known if len(s) >= MIN_SUBSTRING_CHARS), key=len, reverse=True)
        self._short = frozenset(s for s in known if len(s) < MIN_SUBSTRING_CHARS)

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key, value in list(event.items()):
            if key.lower() in SENSITIVE_KEYS:
                event[key] = REDACTED
            else:
                event[key] = self._scrub(value)
        return event

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            if value in self._short:
                return REDACTED
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {k: REDACTED if str(k).lower() in SENSITIVE_KEYS else self._scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrub(v) for v in value]
        return value


def secret_values(settings: Settings) -> list[str]:
    values = [s.get_secret_value() for s in settings.webhook_secrets]
    for field in SECRET_FIELDS:
        secret = getattr(settings, field)
        if secret is not None:
            values.append(secret.get_secret_value())
    if settings.smtp_url is not None:  # smtplib's errors can show the password without the URL around it
        password = urlsplit(settings.smtp_url.get_secret_value()).password or ""
        values += [password, unquote(password)]
    return values


def configure_logging(settings: Settings, stream: Any = None) -> None:
    stream = stream or sys.stdout
    fmt = settings.log_format
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            Redactor(secret_values(settings)),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, settings.log_level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
