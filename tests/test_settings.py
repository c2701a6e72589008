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
