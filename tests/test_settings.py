"""Settings: RELAY_* variables, validated at start-up with messages naming the variable."""

from __future__ import annotations

import pytest

from service.settings import SettingsError, load_settings
from tests.conftest import TEST_SECRET

BASE = {"RELAY_WEBHOOK_SECRETS": TEST_SECRET}


def test_defaults_match_the_contract() -> None:
    """With only a secret set, every default is CONTRACT.md's."""
    s = load_settings(BASE)
    assert s.database_url == "sqlite+aiosqlite:///./codat-relay.db"
    assert (s.host, s.port, s.codat_base_url) == ("127.0.0.1", 8000, "https://api.codat.io")
    assert (s.signature_tolerance_seconds, s.max_body_bytes, s.worker_concurrency) == (300, 1_048_576, 4)
    assert (s.max_attempts, s.max_push_records, s.repush_max_attempts) == (10, 5000, 3)
    assert (s.push_debounce_seconds, s.push_interval_seconds, s.notify_dedupe_seconds) == (5, 900, 3600)
    assert (s.log_format, s.log_level) == ("auto", "info")


def test_several_secrets_split_on_commas() -> None:
    """RELAY_WEBHOOK_SECRETS holds several secrets for rotation."""
    s = load_settings({"RELAY_WEBHOOK_SECRETS": f" {TEST_SECRET} ,whsec_YWJjZA=="})
    assert [x.get_secret_value() for x in s.webhook_secrets] == [TEST_SECRET, "whsec_YWJjZA=="]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"RELAY_PORT": "eighty"}, "RELAY_PORT"),
        ({"RELAY_MAX_PUSH_RECORDS": "5001"}, "RELAY_MAX_PUSH_RECORDS"),
        ({"RELAY_DATABASE_URL": "mysql://x"}, "RELAY_DATABASE_URL"),
        ({"RELAY_LOG_FORMAT": "xml"}, "RELAY_LOG_FORMAT"),
        ({"RELAY_WEBHOOK_SECRETS": "whsec_%%%notbase64"}, "RELAY_WEBHOOK_SECRETS"),
        ({"RELAY_WORKER_CONCURRENCY": "0"}, "RELAY_WORKER_CONCURRENCY"),
        ({"RELAY_NO_SUCH_THING": "1"}, "RELAY_NO_SUCH_THING"),
    ],
)
def test_invalid_values_name_the_variable(env: dict[str, str], named: str) -> None:
    """Unknown or invalid values stop start-up with a message naming the variable."""
    with pytest.raises(SettingsError, match=named):
        load_settings({**BASE, **env})


def test_invalid_secret_is_not_echoed() -> None:
    """A malformed secret is reported without repeating it."""
    with pytest.raises(SettingsError) as info:
        load_settings({"RELAY_WEBHOOK_SECRETS": "whsec_!!supersecretvalue!!"})
    assert "supersecretvalue" not in str(info.value)


def test_no_webhook_authentication_is_refused_unless_allowed() -> None:
    """Neither secrets nor a legacy header: refused, naming both variables; allowed only explicitly."""
    with pytest.raises(SettingsError) as info:
        load_settings({})
    assert "RELAY_WEBHOOK_SECRETS" in str(info.value) and "RELAY_WEBHOOK_AUTH_HEADER" in str(info.value)
    s = load_settings({"RELAY_ALLOW_UNAUTHENTICATED_WEBHOOKS": "true"})
    assert not s.webhook_auth_configured
    assert load_settings({"RELAY_WEBHOOK_AUTH_HEADER": "Basic abc"}).webhook_auth_configured


def test_test_only_variables_are_not_settings() -> None:
    """RELAY_TEST_POSTGRES_URL belongs to the test suite and does not stop start-up."""
    assert load_settings({**BASE, "RELAY_TEST_POSTGRES_URL": "postgresql+asyncpg://x/y"}).port == 8000


SECRET_VARIABLES = [
    "RELAY_API_TOKEN", "RELAY_ADMIN_TOKEN", "RELAY_WEBHOOK_AUTH_HEADER", "RELAY_CODAT_API_KEY",
    "RELAY_NOTIFY_WEBHOOK_URL", "RELAY_NOTIFY_SLACK_WEBHOOK_URL", "RELAY_SMTP_URL",
]  # fmt: skip


@pytest.mark.parametrize("name", SECRET_VARIABLES)
@pytest.mark.parametrize("value", ["", "   "])
def test_empty_secrets_are_refused(name: str, value: str) -> None:
    """A secret set to nothing is refused by name, never taken as a secret an empty header would match."""
    email = {"RELAY_NOTIFY_EMAIL_TO": "staff@example.com"} if name == "RELAY_SMTP_URL" else {}
    with pytest.raises(SettingsError) as info:
        load_settings({**BASE, **email, name: value})
    assert f"{name}: must not be empty" in str(info.value)


@pytest.mark.parametrize("name", ["RELAY_API_TOKEN", "RELAY_ADMIN_TOKEN"])
def test_bearer_tokens_need_eight_characters(name: str) -> None:
    """The operator-chosen bearer tokens are at least 8 characters; 8 is enough."""
    with pytest.raises(SettingsError, match=f"{name}: must be at least 8 characters"):
        load_settings({**BASE, name: "1234567"})
    assert load_settings({**BASE, name: "12345678"}) is not None


@pytest.mark.parametrize(
    "name", ["RELAY_CODAT_BASE_URL", "RELAY_NOTIFY_WEBHOOK_URL", "RELAY_NOTIFY_SLACK_WEBHOOK_URL"]
)
@pytest.mark.parametrize(
    "value",
    ["api.codat.io", "ftp://files.example/x", "https://:8443/hook-secret", "http:///path", "https://[::1/x",
     "javascript:x"],
)  # fmt: skip
def test_urls_must_be_http_with_a_host(name: str, value: str) -> None:
    """Codat's base URL and the notification URLs are http(s) with a host; the error does not echo the URL."""
    with pytest.raises(SettingsError) as info:
        load_settings({**BASE, name: value})
    assert f"{name}: must be an http:// or https:// URL with a host" in str(info.value)
    assert value not in str(info.value)


def test_good_urls_are_taken_and_the_notify_url_is_secret() -> None:
    """http and https URLs with a host pass; the generic webhook URL is kept as a secret."""
    s = load_settings({**BASE, "RELAY_CODAT_BASE_URL": "http://127.0.0.1:8900",
                       "RELAY_NOTIFY_WEBHOOK_URL": "https://hooks.example/relay?token=abc123",
                       "RELAY_NOTIFY_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/x"})  # fmt: skip
    assert s.codat_base_url == "http://127.0.0.1:8900"
    assert s.notify_webhook_url is not None and "abc123" not in repr(s.notify_webhook_url)
    assert s.notify_webhook_url.get_secret_value() == "https://hooks.example/relay?token=abc123"


@pytest.mark.parametrize("value", ["staff", "@example.com", "staff@", "a@b@c", "ok@example.com, broken", ",", ""])
def test_email_recipients_are_addresses(value: str) -> None:
    """RELAY_NOTIFY_EMAIL_TO is comma-separated addresses, each one @ with text on both sides."""
    with pytest.raises(SettingsError, match="RELAY_NOTIFY_EMAIL_TO: "):
        load_settings({**BASE, "RELAY_NOTIFY_EMAIL_TO": value, "RELAY_SMTP_URL": "smtp://mail.example:25"})


def test_several_email_recipients_are_taken() -> None:
    """A comma-separated list of addresses passes."""
    s = load_settings({**BASE, "RELAY_NOTIFY_EMAIL_TO": "a@example.com, ops@example.org",
                       "RELAY_SMTP_URL": "smtps://u:p@mail.example"})  # fmt: skip
    assert s.notify_email_to == "a@example.com, ops@example.org"


@pytest.mark.parametrize(
    ("value", "problem"),
    [("http://mail.example", "must start with smtp:// or smtps://"), ("smtp://", "needs a host"),
     ("smtp://user:hunter22@:25", "needs a host")],
)  # fmt: skip
def test_smtp_url_needs_the_scheme_and_a_host(value: str, problem: str) -> None:
    """RELAY_SMTP_URL is smtp(s)://…host…; the message names it and never repeats its password."""
    with pytest.raises(SettingsError) as info:
        load_settings({**BASE, "RELAY_NOTIFY_EMAIL_TO": "staff@example.com", "RELAY_SMTP_URL": value})
    assert f"RELAY_SMTP_URL: {problem}" in str(info.value) and "hunter22" not in str(info.value)


@pytest.mark.parametrize("name", ["RELAY_PUSH_INTERVAL_SECONDS", "RELAY_CODAT_TIMEOUT_SECONDS",
                                  "RELAY_NOTIFY_DEDUPE_SECONDS", "RELAY_SHUTDOWN_GRACE_SECONDS"])
@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "Infinity"])
def test_float_settings_are_finite(name: str, value: str) -> None:
    """inf and nan are refused by name (an infinite push interval would pass `> 0` and never push)."""
    with pytest.raises(SettingsError, match=name):
        load_settings({**BASE, name: value})


def test_two_roles_sharing_one_token_are_refused() -> None:
    """RELAY_API_TOKEN equal to RELAY_ADMIN_TOKEN would merge the roles: start-up refused, the token not echoed."""
    token = "shared-token-value"
    with pytest.raises(SettingsError) as info:
        load_settings({**BASE, "RELAY_API_TOKEN": token, "RELAY_ADMIN_TOKEN": token})
    assert "RELAY_API_TOKEN and RELAY_ADMIN_TOKEN must differ" in str(info.value)
    assert token not in str(info.value)
    assert load_settings({**BASE, "RELAY_API_TOKEN": token, "RELAY_ADMIN_TOKEN": token + "-admin"}) is not None
