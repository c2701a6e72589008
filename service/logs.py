"""structlog set-up: JSON when not a TTY, and no secret value ever reaches a log line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
import structlog

from service.settings import SECRET_FIELDS, Settings

REDACTED = "[redacted]"
# Shorter secrets are blanked only where a value is exactly the secret: scrubbing a two-letter Codat
# key out of every string would blank ordinary words. The bearer tokens are at least this long.
MIN_SUBSTRING_CHARS = 8
# Libraries whose chatter is held back (see `_quieten`).
QUIET_LOGGERS = ("httpx", "aiosqlite")
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


def _json(event: Any, **_: Any) -> str:
    """One log line with orjson (a line per delivery and per job: stdlib json cost a tenth of a no-op job);
    anything orjson cannot encode is written as its repr, as structlog's own fallback does."""
    return orjson.dumps(event, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()


class _StdlibHandler(logging.Handler):
    """Writes stdlib records, rendered by structlog, through a structlog `PrintLogger` on the same stream:
    structlog's own lines and these then share one write lock, so no two lines ever interleave."""

    def __init__(self, stream: Any) -> None:
        super().__init__()
        self._printer = structlog.PrintLogger(stream)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._printer.msg(self.format(record))
        except Exception:  # logging must never take the process down; stdlib's own policy
            self.handleError(record)


def configure_logging(settings: Settings, stream: Any = None, *, capture_stdlib: bool = False) -> None:
    """structlog for our own lines; with `capture_stdlib` (the CLI, i.e. every service process), the root
    logger too, so uvicorn's, alembic's and asyncio's lines are rendered and redacted the same way.

    Our own events keep structlog's direct path (no stdlib `LogRecord` per line: the webhook hot path
    logs once per delivery); only foreign records go through `ProcessorFormatter`. Code embedding the
    service beside other libraries (a benchmark next to procrastinate) keeps its own stdlib logging.
    """
    stream = stream or sys.stdout
    fmt = settings.log_format
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_json) if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )  # fmt: skip
    redactor = Redactor(secret_values(settings))
    level = getattr(logging, settings.log_level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redactor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    if capture_stdlib:
        _capture_stdlib(stream, level, redactor, renderer)


def _capture_stdlib(stream: Any, level: int, redactor: Redactor, renderer: Any) -> None:
    handler = _StdlibHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.add_logger_name,
                structlog.stdlib.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,  # before the redactor: tracebacks are scrubbed too
                redactor,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StdlibHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    _quieten(level)


def _quieten(level: int) -> None:
    """httpx logs every request at INFO: our own lines and metrics already cover the Codat and notification
    calls, so those show only at `debug`. aiosqlite logs two lines per statement at DEBUG naming only its
    internal functions: never shown."""
    logging.getLogger("httpx").setLevel(level if level <= logging.DEBUG else max(level, logging.WARNING))
    logging.getLogger("aiosqlite").setLevel(max(level, logging.INFO))
