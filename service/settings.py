"""Settings, read once at the entry point from `RELAY_*` environment variables and passed down."""

from __future__ import annotations

import hmac
import os
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "RELAY_"
CODAT_MAX_PUSH_RECORDS = 5000  # Codat's own ceiling per push (FACTS.md §2 rule 4)
# Variables with the prefix that are not settings of the service itself.
FOREIGN_VARIABLES = frozenset({"RELAY_TEST_POSTGRES_URL", "RELAY_LOCAL_ENV_FILE"})
# The operator invents the bearer tokens: a short one is guessable, and the log redactor only blanks
# secrets of this length or more wherever they appear (service/logs.py).
MIN_TOKEN_CHARS = 8
SECRET_FIELDS = (
    "codat_api_key", "webhook_auth_header", "api_token", "admin_token",
    "notify_webhook_url", "notify_slack_webhook_url", "smtp_url",
)  # fmt: skip


class SettingsError(Exception):
    """Start-up refused: the message names every offending variable."""


class Settings(BaseSettings):
    # No inf/nan: `RELAY_PUSH_INTERVAL_SECONDS=inf` would pass `gt=0` and then never push.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True, allow_inf_nan=False)

    database_url: str = "sqlite+aiosqlite:///./codat-relay.db"
    # Behind PgBouncer in transaction pooling mode: no prepared statement outlives its transaction, and
    # LISTEN (a session feature) needs a direct connection (`database_listen_url`) or workers poll.
    database_pgbouncer: bool = False
    database_listen_url: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # What a client may hold before it has authenticated (service/web/server.py).
    max_header_bytes: int = Field(default=65_536, ge=4096, le=1_048_576)
    max_headers: int = Field(default=100, ge=16, le=1000)
    header_timeout_seconds: float = Field(default=10.0, gt=0)
    body_timeout_seconds: float = Field(default=60.0, gt=0)
    keepalive_seconds: int = Field(default=5, ge=1)
    max_connections: int = Field(default=1000, ge=10)

    codat_base_url: str = "https://api.codat.io"
    codat_api_key: SecretStr | None = None
    codat_timeout_seconds: float = Field(default=30.0, gt=0)
    codat_concurrency: int = Field(default=10, ge=1, le=100)
    # Where Codat reaches this relay from the internet (`https://relay.example.com`): `subscribe` points
    # webhook consumers at its `/webhooks/codat`, `doctor` checks them against it.
    public_url: str | None = None
    # Codat allows 1,000 requests a minute per IP (FACTS §6); 0 leaves calls unpaced (a local sandbox).
    codat_requests_per_minute: int = Field(default=1000, ge=0)
    # Shared by every process through the database (service/budget.py): requests in flight per company
    # (Codat serves 10), and the share of the daily quota kept for pushes and staff-visible calls.
    codat_company_concurrency: int = Field(default=10, ge=1, le=100)
    codat_quota_reserve_percent: int = Field(default=10, ge=0, le=90)
    # A job waiting on a spent quota looks again this often (client.rateLimit.reset brings them all at once).
    codat_quota_recheck_seconds: float = Field(default=60.0, gt=0, le=86_400)

    webhook_secrets: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    webhook_auth_header: SecretStr | None = None
    allow_unauthenticated_webhooks: bool = False
    signature_tolerance_seconds: int = Field(default=300, ge=1)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)

    api_token: SecretStr | None = None
    admin_token: SecretStr | None = None
    auth_failure_limit: int = Field(default=20, ge=1)  # per client address and window (service/web/throttle.py)
    auth_failure_window_seconds: float = Field(default=60.0, gt=0)

    worker_concurrency: int = Field(default=4, ge=1, le=256)
    max_attempts: int = Field(default=10, ge=1)
    job_lease_seconds: float = Field(default=30.0, gt=0)
    shutdown_grace_seconds: float = Field(default=20.0, ge=0)
    db_pool_size: int = Field(default=10, ge=1)
    sqlite_synchronous: Literal["full", "normal"] = "full"

    max_push_records: int = Field(default=CODAT_MAX_PUSH_RECORDS, ge=1, le=CODAT_MAX_PUSH_RECORDS)
    push_debounce_seconds: float = Field(default=5.0, ge=0)
    push_interval_seconds: float = Field(default=900.0, gt=0)
    dataset_polls: int = Field(default=20, ge=0, le=1000)
    repush_max_attempts: int = Field(default=3, ge=0)
    repush_backoff_seconds: float = Field(default=30.0, ge=0)
    # Late records (pushed dated before the last successful sync's end): request a historic sync of them.
    auto_historic_sync: bool = False
    # Pushed data must be Complete this long before each company's scheduled Codat sync (service/schedules.py).
    sync_margin_minutes: float = Field(default=30.0, ge=0, le=720)

    notify_webhook_url: SecretStr | None = None  # a generic webhook URL may carry a token
    notify_slack_webhook_url: SecretStr | None = None
    notify_email_to: str | None = None
    smtp_url: SecretStr | None = None
    notify_dedupe_seconds: float = Field(default=3600.0, ge=0)

    # Retention (service/retention.py): how long each kind of history is kept, in days; 0 keeps it forever.
    # Alerts outlive Codat's redeliveries (an endpoint failing for 5 days is disabled: service/policies.py), so a
    # late redelivery of one still finds its delivery id and is stored only once.
    retain_alerts_days: float = Field(default=30.0, ge=0)
    retain_jobs_days: float = Field(default=7.0, ge=0)
    retain_pushes_days: float = Field(default=30.0, ge=0)
    retain_record_versions_days: float = Field(default=30.0, ge=0)
    retain_datasets_days: float = Field(default=90.0, ge=0)
    # At least the 5 days a notification is retried for (service/policies.py): a waiting one is never pruned
    # anyway, but a shorter window would prune the history of what staff were told before they read it.
    retain_notifications_days: float = Field(default=90.0, ge=0)

    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("webhook_secrets", mode="before")
    @classmethod
    def _split_secrets(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("webhook_secrets")
    @classmethod
    def _check_secret_format(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        from service.signatures import decode_secret  # local: keeps settings import-light

        for secret in value:
            decode_secret(secret.get_secret_value())  # raises ValueError with a safe message
        return value

    @field_validator(*SECRET_FIELDS)
    @classmethod
    def _secret_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        # `RELAY_ADMIN_TOKEN=""` must not become a token that `Authorization: Bearer ` matches.
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("api_token", "admin_token")
    @classmethod
    def _token_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_TOKEN_CHARS:
            raise ValueError(f"must be at least {MIN_TOKEN_CHARS} characters")
        return value

    @field_validator("codat_base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        return check_http_url(value)

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        return None if value is None else check_http_url(value).rstrip("/")

    @field_validator("notify_webhook_url", "notify_slack_webhook_url")
    @classmethod
    def _check_notify_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_http_url(value.get_secret_value())
        return value

    @field_validator("notify_email_to")
    @classmethod
    def _check_addresses(cls, value: str | None) -> str | None:
        if value is None:
            return value
        addresses = [part.strip() for part in value.split(",") if part.strip()]
        if not addresses:
            raise ValueError("must list at least one e-mail address")
        for address in addresses:
            local, at, domain = address.partition("@")
            if not (at and local and domain) or "@" in domain:
                raise ValueError(f"{address!r} is not an e-mail address (one @ with text on both sides)")
        return value

    @field_validator("database_listen_url")
    @classmethod
    def _check_listen_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("postgresql+asyncpg://"):
            raise ValueError("must be a postgresql+asyncpg:// URL (a direct connection, not through PgBouncer)")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return value

    @field_validator("log_format", "log_level", "sqlite_synchronous", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _webhook_auth_required(self) -> Settings:
        if not (self.webhook_secrets or self.webhook_auth_header or self.allow_unauthenticated_webhooks):
            raise ValueError(
                "no webhook authentication: set RELAY_WEBHOOK_SECRETS or RELAY_WEBHOOK_AUTH_HEADER "
                "(or RELAY_ALLOW_UNAUTHENTICATED_WEBHOOKS=true for development only)"
            )
        return self

    @model_validator(mode="after")
    def _roles_have_their_own_tokens(self) -> Settings:
        # The same value for two roles silently merges them: the intake client could administer.
        if self.api_token is not None and self.admin_token is not None and hmac.compare_digest(
            self.api_token.get_secret_value().encode(), self.admin_token.get_secret_value().encode()
        ):
            raise ValueError("RELAY_API_TOKEN and RELAY_ADMIN_TOKEN must differ: each role needs its own token")
        return self

    @model_validator(mode="after")
    def _email_needs_smtp(self) -> Settings:
        if (self.notify_email_to is not None) != (self.smtp_url is not None):
            raise ValueError("RELAY_NOTIFY_EMAIL_TO and RELAY_SMTP_URL go together: set both or neither")
        if self.smtp_url is not None:
            # The message never repeats the URL: it may hold a password.
            scheme, host = _scheme_and_host(self.smtp_url.get_secret_value())
            if scheme not in ("smtp", "smtps"):
                raise ValueError("RELAY_SMTP_URL: must start with smtp:// or smtps://")
            if not host:
                raise ValueError("RELAY_SMTP_URL: needs a host (smtp://user:pass@host:port)")
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def webhook_auth_configured(self) -> bool:
        return bool(self.webhook_secrets or self.webhook_auth_header)


class OperatorSettings(Settings):
    """Settings of the operator commands (`alerts list`, `companies show`, …): they receive no webhooks, so
    they need only the database (and Codat's URL and key for `sync`), not webhook authentication."""

    @model_validator(mode="after")
    def _webhook_auth_required(self) -> OperatorSettings:  # overrides the check of the serving commands
        return self


def _scheme_and_host(url: str) -> tuple[str, str | None]:
    try:
        parts = urlsplit(url)
        return parts.scheme, parts.hostname
    except ValueError:  # a malformed IPv6 literal
        return "", None


def check_http_url(url: str) -> str:
    """An http(s) URL with a host; the message never repeats the URL (it may carry a token)."""
    scheme, host = _scheme_and_host(url)
    if scheme not in ("http", "https") or not host:
        raise ValueError("must be an http:// or https:// URL with a host")
    return url


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def load_settings(environ: dict[str, str] | None = None, *, serving: bool = True, **overrides: object) -> Settings:
    """Build settings from the environment, turning every problem into one `SettingsError`.

    `serving=False` is for commands that receive no webhooks: webhook authentication is then not required.
    """
    env = dict(os.environ if environ is None else environ)
    unknown = sorted(
        name
        for name in env
        if name.startswith(ENV_PREFIX)
        and name not in FOREIGN_VARIABLES
        and name[len(ENV_PREFIX) :].lower() not in Settings.model_fields
    )
    if unknown:
        raise SettingsError(f"unknown setting(s): {', '.join(unknown)}")
    values: dict[str, object] = {
        name[len(ENV_PREFIX) :].lower(): value
        for name, value in env.items()
        if name.startswith(ENV_PREFIX) and name not in FOREIGN_VARIABLES
    }
    values.update(overrides)
    try:
        # Values are passed explicitly so that tests and callers never depend on os.environ.
        return (Settings if serving else OperatorSettings).model_validate(values)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = error["loc"]
        name = env_name(str(loc[0])) if loc else ""
        message = error["msg"].removeprefix("Value error, ")
        # A check across settings has no location: its message names the variables itself.
        parts.append(f"{name}: {message}" if loc else message)
    return "invalid settings: " + "; ".join(parts)
