"""A short error tree, translated to HTTP once, at the edge (see service/app.py)."""

from __future__ import annotations


class RelayError(Exception):
    """Base of every error codat-relay raises on purpose."""


class Rejected(RelayError):
    """The client sent something a retry can never fix: a 4xx answer."""

    status_code = 400
    code = "bad_request"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.code)
        self.detail = detail


class AuthenticationFailed(Rejected):
    status_code = 401


class MissingAuthentication(AuthenticationFailed):
    code = "missing_authentication"


class InvalidSignature(AuthenticationFailed):
    code = "invalid_signature"


class InvalidCredentials(AuthenticationFailed):
    code = "invalid_credentials"


class TimestampOutOfTolerance(AuthenticationFailed):
    code = "timestamp_out_of_tolerance"


class MalformedPayload(Rejected):
    code = "malformed_payload"


class PayloadTooLarge(Rejected):
    status_code = 413
    code = "payload_too_large"


class NotFound(Rejected):
    status_code = 404
    code = "not_found"


class RetryLater(RelayError):
    """Temporary: come back in `after_s` whole seconds. At the HTTP edge, 503 with that Retry-After; in a job,
    the least the worker waits before the next attempt.

    Raised for our own faults (storage down) and, by the Codat client, for Codat's "come back later"
    (429, 503, no answer: `CodatRateLimited`, `CodatUnavailable`), its `Retry-After` translated there, once.
    """

    def __init__(self, detail: str = "unavailable", after_s: int = 5) -> None:
        super().__init__(detail)
        self.after_s = after_s


class StorageUnavailable(RetryLater):
    """The database could not be reached or refused the write."""


class Deferred(RetryLater):
    """Not now, and not a failure: the job waits `after_s` and runs again without spending an attempt.

    Raised before a Codat request is sent, when the rate-limit budget shared by every process says no
    (the daily quota spent, the company told to wait by a 429, its request slots busy): nothing was tried,
    so nothing counts against RELAY_MAX_ATTEMPTS. At the HTTP edge it is a 503 with Retry-After as any
    `RetryLater`.
    """


class GiveUp(RelayError):
    """A job failed in a way no retry can fix: it goes straight to `dead`."""


class InvalidRequest(Rejected):
    """A query or body that fails validation: 422 naming the field."""

    status_code = 422
    code = "invalid_request"
