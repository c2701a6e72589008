"""What Codat answers, as the relay reads it: dataset and sync-status models, their vocabularies, errors.

Models are tolerant on purpose (FACTS §1): Codat adds fields, spells codes oddly (`"4200,"` in its own
spec example) and writes dates with seven fractional digits, so unknown fields are kept, and only the
fields the relay branches on are required.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WrapValidator
from pydantic.alias_generators import to_camel

from service.codat.retry import RATE_LIMITED_WAIT_S, UNAVAILABLE_WAIT_S
from service.errors import RelayError, RetryLater

# Dataset (pull operation) statuses, exactly the 21 of FACTS §2 / platform-current.json `PullOperation`.
DATASET_STATUSES: tuple[str, ...] = (
    "Initial", "Queued", "Fetching", "MapQueued", "Mapping", "Complete", "FetchError", "MapError",
    "InternalError", "ProcessingQueued", "Processing", "ProcessingError", "ValidationQueued", "Validating",
    "ValidationError", "AuthError", "Cancelled", "NotSupported", "RateLimitError", "PermissionsError",
    "PrerequisiteNotMet",
)  # fmt: skip
# Codat's own definition of "changed to an error state".
ERROR_STATUSES = frozenset({
    "FetchError", "MapError", "InternalError", "ProcessingError", "ValidationError", "AuthError",
    "RateLimitError", "PermissionsError", "PrerequisiteNotMet",
})  # fmt: skip
TERMINAL_STATUSES = frozenset({"Complete", "Cancelled", "NotSupported"}) | ERROR_STATUSES
# Errors a new push of the same records may clear; the others need the merchant or configuration.
REPUSHABLE = frozenset({"FetchError", "MapError", "InternalError", "ProcessingError", "RateLimitError"})

# Sync status codes (FACTS §3). Branch on the code: the text varies ("Success" / "Complete").
SYNC_STATUS_MEANINGS: dict[int, str] = {
    1000: "in progress",
    1010: "in progress for more than 10 minutes",
    2000: "success, data written",
    2040: "success, no data written",
    4000: "configuration error",
    4040: "company deleted or de-authorised",
    4200: "map error",
    4220: "company deleted or de-authorised",
    4260: "accounting software billing expired",
    5000: "server error",
    5080: "duplication protection",
    5120: "data processing error",
    5130: "data write error",
}
SUCCESS_CODES = frozenset({2000, 2040})


def is_success(code: int | None) -> bool:
    return code in SUCCESS_CODES


def is_failure(code: int | None) -> bool:
    return code is not None and 4000 <= code < 6000


def is_in_progress(code: int | None) -> bool:
    return code is not None and 1000 <= code < 2000


def _lenient_datetime(value: Any, handler: Any) -> datetime | None:
    # A date Codat writes in a form we cannot read must not cost us the status beside it.
    try:
        result: datetime | None = handler(value)
    except ValidationError:
        return None
    return result


def _lenient_int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    digits = re.search(r"-?\d+", str(value))
    return int(digits.group()) if digits else None


LenientDatetime = Annotated[datetime | None, WrapValidator(_lenient_datetime)]
LenientInt = Annotated[int | None, WrapValidator(lambda value, _handler: _lenient_int(value))]


class CodatModel(BaseModel):
    """camelCase on the wire, snake_case in Python; extra fields kept for relaying and debugging."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=True)


class PushResult(BaseModel):
    # `data` (the echo of up to 5,000 records) is deliberately dropped: nobody reads it back.
    model_config = ConfigDict(extra="ignore", frozen=True)

    dataset_id: str = Field(alias="datasetId")


class Dataset(CodatModel):
    """A pushed dataset's processing state (`GET .../pull/history/{datasetId}`)."""

    id: str
    status: str
    company_id: str | None = None
    connection_id: str | None = None
    data_type: str | None = None
    status_description: str | None = None
    error_message: str | None = None
    requested: LenientDatetime = None
    completed: LenientDatetime = None
    progress: LenientInt = None
    is_completed: bool = False
    is_errored: bool = False

    @property
    def is_error(self) -> bool:
        return self.status in ERROR_STATUSES or self.is_errored

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def is_repushable(self) -> bool:
        return self.status in REPUSHABLE


class SyncStatus(CodatModel):
    """One sync of a company (`GET .../sync/commerce/status`)."""

    company_id: str | None = None
    commerce_sync_id: str | None = None
    sync_id: str | None = None
    sync_status_code: LenientInt = None
    sync_status: str | None = None
    error_message: str | None = None
    sync_exception_message: str | None = None
    sync_utc: LenientDatetime = None
    data_pushed: bool | None = None
    data_connections: list[dict[str, Any]] | None = None

    @property
    def meaning(self) -> str:
        code = self.sync_status_code
        return SYNC_STATUS_MEANINGS.get(code, "unknown") if code is not None else "unknown"


class CodatErrorBody(CodatModel):
    """Codat's error JSON; every field optional because proxies in front of Codat answer with HTML."""

    status_code: LenientInt = None
    service: str | None = None
    error: str | None = None
    correlation_id: str | None = None
    can_be_retried: str | bool | None = None  # the spec says a string: "True", "False", "Unknown"
    detailed_error_code: LenientInt = None
    validation: dict[str, Any] | None = None


class CodatError(RelayError):
    """Codat answered with an error, or could not be reached. Never carries the API key."""

    def __init__(
        self, message: str, *, status_code: int | None = None, body: CodatErrorBody | None = None
    ) -> None:
        super().__init__(message)
        body = body or CodatErrorBody()
        self.status_code = status_code
        self.service = body.service
        self.error = body.error
        self.correlation_id = body.correlation_id
        self.can_be_retried = body.can_be_retried
        self.detailed_error_code = body.detailed_error_code
        self.validation = body.validation

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r}, status_code={self.status_code})"


class CodatAuthError(CodatError):
    """401/403: the API key is wrong or lacks rights. Retrying will not help; an operator must act."""


class CodatNotFound(CodatError):
    """404: the company or dataset does not exist (or is not ours)."""


class CodatRejected(CodatError):
    """Another 4xx (400, 402, 409, 422…): this request will never succeed as it stands."""


class CodatUnavailable(CodatError, RetryLater):
    """5xx, 408 or no answer, still so after the retries: come back in `after_s` seconds.

    `after_s` is Codat's `Retry-After` translated once, by the client (`service.codat.retry.later_s`);
    callers take it as it is.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        body: CodatErrorBody | None = None,
        after_s: int = UNAVAILABLE_WAIT_S,
    ) -> None:
        super().__init__(message, status_code=status_code, body=body)
        self.after_s = after_s


class CodatRateLimited(CodatError, RetryLater):
    """429 after the retries: come back in `after_s` seconds (Codat's `Retry-After`, translated once)."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = 429,
        body: CodatErrorBody | None = None,
        after_s: int = RATE_LIMITED_WAIT_S,
    ) -> None:
        super().__init__(message, status_code=status_code, body=body)
        self.after_s = after_s


def error_class_for(status_code: int) -> type[CodatError]:
    """The one table from an HTTP status (after retries) to the error raised."""
    if status_code in (401, 403):
        return CodatAuthError
    if status_code == 404:
        return CodatNotFound
    if status_code == 429:
        return CodatRateLimited
    if status_code == 408 or status_code >= 500:
        return CodatUnavailable
    if 400 <= status_code < 500:
        return CodatRejected
    return CodatError  # 1xx/3xx: not a shape Codat answers with; a misconfigured base URL, most likely


class WebhookConsumer(BaseModel):
    """A webhook consumer (platform-current.json `WebhookConsumer`): where Codat sends which event types.
    Its signing secret is shown in the Portal only, never by the API."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=True)

    id: str
    url: str
    event_types: tuple[str, ...] = ()
    disabled: bool | None = False
    company_tags: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "url": self.url, "eventTypes": list(self.event_types),
                "disabled": bool(self.disabled), "companyTags": list(self.company_tags or ())}  # fmt: skip
