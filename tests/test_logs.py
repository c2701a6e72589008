"""Logging: the format chosen, one line per delivery, stdlib lines rendered alike, and no secret in any line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from service.logs import QUIET_LOGGERS, REDACTED, Redactor, configure_logging
from service.testing import legacy_body, running_app
from tests.conftest import ADMIN_TOKEN, API_TOKEN, TEST_AUTH_HEADER, TEST_SECRET, make_settings

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


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state: put structlog and the root logger back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in quiet.items():
        logging.getLogger(name).setLevel(saved)


def lines_of(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


@pytest.mark.parametrize(
    ("log_format", "stream_type", "json_lines"),
    [("auto", io.StringIO, True), ("auto", TtyStream, False), ("console", io.StringIO, False),
     ("json", TtyStream, True)],
)  # fmt: skip
def test_log_format_auto_is_json_unless_a_tty(
    restore_logging: None, log_format: str, stream_type: type[io.StringIO], json_lines: bool
) -> None:
    """`auto` writes JSON lines to a pipe or file and readable text to a terminal; `console`/`json` force it."""
    stream = stream_type()
    configure_logging(make_settings(log_format=log_format), stream, capture_stdlib=True)
    structlog.get_logger("test").warning("probe", n=1)
    logging.getLogger("some.library").warning("a stdlib line")
    [own, foreign] = lines_of(stream)
    for line in (own, foreign):
        try:
            parsed: Any = json.loads(line)
        except ValueError:
            parsed = None
        assert isinstance(parsed, dict) is json_lines, line
    if json_lines:
        assert json.loads(own)["event"] == "probe"
        assert json.loads(foreign)["event"] == "a stdlib line"
    else:
        assert "probe" in own and "n=1" in own
        assert "a stdlib line" in foreign


async def test_webhook_received_line_carries_the_delivery_fields(restore_logging: None, database_url: str) -> None:
    """One `webhook_received` line per delivery, with delivery_id, type, company_id, outcome and duration_ms."""
    stream = io.StringIO()
    settings = make_settings(database_url, log_level="info")
    configure_logging(settings, stream)
    body = json.dumps(legacy_body(AlertId="alert-log-1")).encode()
    async with running_app(settings) as (_app, client):
        answer = await client.post("/webhooks/codat", content=body, headers={"authorization": TEST_AUTH_HEADER})
        refused = await client.post("/webhooks/codat", content=body, headers={"authorization": "Bearer wrong"})
    assert (answer.status_code, refused.status_code) == (202, 401)
    received = [line for line in map(json.loads, lines_of(stream)) if line["event"] == "webhook_received"]
    assert len(received) == 2
    accepted, rejected = received
    assert {k: accepted[k] for k in ("delivery_id", "type", "company_id", "outcome", "level")} == {
        "delivery_id": "alert-log-1",
        "type": "Data Sync Status Changed To Error",
        "company_id": legacy_body()["CompanyId"],
        "outcome": "accepted",
        "level": "info",
    }
    assert isinstance(accepted["duration_ms"], float) and accepted["duration_ms"] >= 0
    # A refused delivery says why; it has no delivery to name, and the credentials never appear.
    assert rejected["outcome"] == "invalid_credentials" and "delivery_id" not in rejected
    assert "wrong" not in stream.getvalue() and TEST_AUTH_HEADER not in stream.getvalue()


def test_stdlib_lines_are_redacted_json(restore_logging: None) -> None:
    """A stdlib logger's line (uvicorn, alembic, httpx) comes out as redacted JSON, its traceback too."""
    stream = io.StringIO()
    settings = make_settings(log_level="info", codat_api_key="codat-key-123456")
    configure_logging(settings, stream, capture_stdlib=True)
    secrets = [TEST_SECRET, TEST_AUTH_HEADER, API_TOKEN, ADMIN_TOKEN, "codat-key-123456"]
    logging.getLogger("uvicorn.error").info("headers %s / %s / %s", TEST_AUTH_HEADER, API_TOKEN, ADMIN_TOKEN)
    try:
        raise RuntimeError(f"could not verify with {TEST_SECRET} and codat-key-123456")
    except RuntimeError:
        logging.getLogger("alembic.runtime").exception("failed")
    logging.getLogger("uvicorn.error").debug("below the level: not written")
    [info, error] = [json.loads(line) for line in lines_of(stream)]
    assert info == {"event": f"headers {REDACTED} / {REDACTED} / {REDACTED}", "logger": "uvicorn.error",
                    "level": "info", "timestamp": info["timestamp"]}  # fmt: skip
    assert (error["logger"], error["level"], error["event"]) == ("alembic.runtime", "error", "failed")
    assert f"RuntimeError: could not verify with {REDACTED} and {REDACTED}" in error["exception"]
    assert not [secret for secret in secrets if secret in stream.getvalue()]


def test_reconfiguring_replaces_the_stdlib_handler(restore_logging: None) -> None:
    """Configuring twice leaves one handler of ours on the root logger: no line is written twice."""
    first, second = io.StringIO(), io.StringIO()
    configure_logging(make_settings(), first, capture_stdlib=True)
    configure_logging(make_settings(), second, capture_stdlib=True)
    logging.getLogger("x").warning("once")
    assert (lines_of(first), len(lines_of(second))) == ([], 1)


@pytest.mark.parametrize(("level", "httpx_shown", "aiosqlite_shown"), [("info", False, False), ("debug", True, False)])
def test_library_chatter_is_held_back(
    restore_logging: None, level: str, httpx_shown: bool, aiosqlite_shown: bool
) -> None:
    """httpx's per-request INFO lines show only at debug; aiosqlite's per-statement DEBUG lines never."""
    stream = io.StringIO()
    configure_logging(make_settings(log_level=level), stream, capture_stdlib=True)
    logging.getLogger("httpx").info("HTTP Request: GET https://api.codat.io/ 200")
    logging.getLogger("aiosqlite").debug("executing <function>")
    logging.getLogger("uvicorn.error").info("always at info")
    events = [json.loads(line)["event"] for line in lines_of(stream)]
    assert ("HTTP Request: GET https://api.codat.io/ 200" in events) is httpx_shown
    assert ("executing <function>" in events) is aiosqlite_shown
    assert "always at info" in events
