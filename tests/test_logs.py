"""Log redaction: no configured secret reaches a log line, and short secrets do not blank ordinary words."""

from __future__ import annotations

import io
import json
from typing import Any

import structlog

from service.logs import REDACTED, Redactor, configure_logging
from tests.conftest import make_settings

HOOK = "https://hooks.example/relay?token=generic-hook-token"
SMTP = "smtp://relay:mail-password-42@mail.example:25"


def logged(settings_overrides: dict[str, Any], **event: Any) -> dict[str, Any]:
    stream = io.StringIO()
    configure_logging(make_settings(**settings_overrides), stream)
    try:
        structlog.get_logger("test").warning("probe", **event)
    finally:
        structlog.reset_defaults()
    return dict(json.loads(stream.getvalue()))


def test_notification_urls_and_the_smtp_password_are_redacted() -> None:
    """The generic webhook URL (a SecretStr now) and the SMTP password alone are blanked wherever they appear."""
    line = logged(
        {"notify_webhook_url": HOOK, "notify_email_to": "staff@example.com", "smtp_url": SMTP},
        error=f"Client error '404 Not Found' for url '{HOOK}'", smtp="535 auth failed for mail-password-42",
    )  # fmt: skip
    assert line["error"] == f"Client error '404 Not Found' for url '{REDACTED}'"
    assert line["smtp"] == f"535 auth failed for {REDACTED}"


def test_short_secrets_are_blanked_only_as_whole_values() -> None:
    """A secret under 8 characters is redacted where a value is exactly it, never cut out of other text."""
    redact = Redactor(["k3y", "", "long-enough-secret"])
    event = redact(None, "warning", {"event": "a k3y here", "value": "k3y", "items": ["k3y", "x long-enough-secret"]})
    assert event == {"event": "a k3y here", "value": REDACTED, "items": [REDACTED, f"x {REDACTED}"]}


def test_an_empty_secret_redacts_nothing() -> None:
    """An empty string is no secret: it must not turn every value into the redaction marker."""
    assert Redactor([""])(None, "info", {"event": "fine", "n": ""}) == {"event": "fine", "n": ""}
