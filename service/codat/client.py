"""The Codat client: pushes commerce records, reads dataset and sync status, starts manual syncs.

One `httpx.AsyncClient` per process, opened and closed by the app's lifespan. Every call is retried
the way Codat's own SDKs do it (408, 429, 5xx and connection errors, exponential backoff from 0.5 s
by 1.5), but within a short budget: the job queue, not a sleeping coroutine, owns long waits.
Failures surface as the `CodatError` tree of `service.codat.models`.
"""

from __future__ import annotations

import asyncio
import base64
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import orjson
import structlog
from pydantic import SecretStr, ValidationError

from service import tracing
from service.clock import Clock, SystemClock
from service.codat.budget import Budget, current_priority
from service.codat.models import (
    DATASET_STATUSES,
    ERROR_STATUSES,
    REPUSHABLE,
    SYNC_STATUS_MEANINGS,
    TERMINAL_STATUSES,
    CodatAuthError,
    CodatError,
    CodatErrorBody,
    CodatNotFound,
    CodatRateLimited,
    CodatRejected,
    CodatUnavailable,
    Dataset,
    PushResult,
    SyncStatus,
    WebhookConsumer,
    error_class_for,
    is_failure,
    is_in_progress,
    is_success,
)
from service.codat.pacing import Pacer
from service.codat.retry import CodatRetryPolicy, attempt_over, later_s, retry_after_s, retryable
from service.ids import path_segment
from service.settings import CODAT_MAX_PUSH_RECORDS

if TYPE_CHECKING:
    from service.settings import Settings

__all__ = [
    "DATASET_STATUSES", "ERROR_STATUSES", "PUSH_DATA_TYPES", "REPUSHABLE", "SYNC_STATUS_MEANINGS",
    "TERMINAL_STATUSES", "CodatAuthError", "CodatClient", "CodatError", "CodatNotFound", "CodatRateLimited",
    "CodatRejected", "CodatRetryPolicy", "CodatUnavailable", "Dataset", "PushResult", "SyncStatus",
    "is_failure", "is_in_progress", "is_success",
]  # fmt: skip

log = structlog.get_logger("service.codat.client")

# data type → the key its records travel under in the push body (FACTS §2).
PUSH_DATA_TYPES: dict[str, str] = {
    "commerce-orders": "orders",
    "commerce-payments": "payments",
    "commerce-transactions": "transactions",
}
NO_RESPONSE = 0  # the status reported to `on_response` when Codat never answered
USER_AGENT = "codat-relay"
MIN_SCRUBBED_LEN = 8  # Codat API keys are 40 characters
DEFAULT_RETRY = CodatRetryPolicy()
SYSTEM_CLOCK = SystemClock()

Sleep = Callable[[float], Awaitable[None]]
OnResponse = Callable[[str, int], None]
Relayed = dict[str, Any] | list[Any]
T = TypeVar("T")


# Codat serves 10 concurrent requests per company (FACTS.md §1): as many per process is the default.
DEFAULT_MAX_IN_FLIGHT = 10


class CodatClient:
    """Codat over one connection pool. Use as `async with CodatClient(...)` or call `aclose()`."""

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr | None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = 30.0,
        retry: CodatRetryPolicy = DEFAULT_RETRY,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = SYSTEM_CLOCK,
        on_response: OnResponse | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        pacer: Pacer | None = None,
        budget: Budget | None = None,
    ) -> None:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        key = api_key.get_secret_value() if api_key is not None else ""
        encoded = base64.b64encode(key.encode()).decode("ascii")
        if key:  # an empty key means no auth (the local sandbox), never `Basic ` with nothing after it
            headers["Authorization"] = f"Basic {encoded}"
        self._authenticated = bool(key)
        # Raw and encoded key kept only to scrub them from error text (httpx masks the header in reprs);
        # a key shorter than the minimum is a local stand-in, and scrubbing it would garble plain words.
        self._secrets = tuple(secret for secret in (key, encoded) if len(secret) >= MIN_SCRUBBED_LEN)
        self._base_url = base_url
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=headers, transport=transport, timeout=httpx.Timeout(timeout_s)
        )
        self._retry = retry
        self._sleep = sleep
        self._clock = clock
        self._on_response = on_response
        # Requests past this wait here, not in httpcore's pool, whose cost per request grows with every
        # request queued or in flight (measured: 0.8 ms of CPU a call at 4 in flight, 1.5 ms at 16).
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._pacer = pacer or Pacer(0)
        # Shared by every process (service.budget): company slots, the daily quota, 429 waits. None: no
        # budget beyond this process's own caps (the CLI's one-off calls, tests of the client alone).
        self._budget = budget
        self.rate_limit_remaining: int | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, transport: httpx.AsyncBaseTransport | None = None, **kwargs: Any
    ) -> CodatClient:
        """The client the app runs with; `kwargs` (sleep, clock, on_response, retry) pass through."""
        kwargs.setdefault("pacer", Pacer(settings.codat_requests_per_minute, burst=settings.codat_concurrency))
        return cls(
            settings.codat_base_url,
            settings.codat_api_key,
            transport=transport,
            timeout_s=settings.codat_timeout_seconds,
            max_in_flight=settings.codat_concurrency,
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"CodatClient(base_url={self._base_url!r}, authenticated={self._authenticated})"

    async def __aenter__(self) -> CodatClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- the API ------------------------------------------------------------------------------------

    async def push_records(
        self, company_id: str, data_type: str, records: Sequence[Mapping[str, Any]], *, idempotency_key: str
    ) -> PushResult:
        """Push up to 5,000 records of one data type; Codat answers with the dataset it created."""
        if len(records) > CODAT_MAX_PUSH_RECORDS:
            raise ValueError(f"{len(records)} records: Codat takes at most {CODAT_MAX_PUSH_RECORDS} a push")
        return await self.push_records_json(
            company_id, data_type, orjson.dumps(list(records)), idempotency_key=idempotency_key
        )

    async def push_records_json(
        self, company_id: str, data_type: str, records_json: bytes, *, idempotency_key: str
    ) -> PushResult:
        """`push_records` for records already encoded as one JSON array, e.g. `b"[" + b",".join(rows) + b"]"`.

        The bytes are spliced into the body as they are, so a pusher reading stored JSON need not
        decode and re-encode 5,000 records; they are trusted to be a JSON array of valid records.
        """
        key = _push_key(data_type)
        stripped = records_json.strip()
        if not (stripped.startswith(b"[") and stripped.endswith(b"]")):
            raise ValueError("records_json must be a JSON array")
        body = b'{"' + key.encode() + b'":' + stripped + b"}"
        path = f"/data/companies/{_seg(company_id)}/sync/{data_type}"
        response = await self._call("push_records", "POST", path, body, idempotency_key, company=company_id)
        return self._parse(response.content, PushResult.model_validate_json)

    async def get_dataset(self, company_id: str, dataset_id: str) -> Dataset:
        path = f"/meta/companies/{_seg(company_id)}/pull/history/{_seg(dataset_id)}"
        response = await self._call("get_dataset", "GET", path, company=company_id)
        return self._parse(response.content, Dataset.model_validate_json)

    async def get_sync_status(self, company_id: str) -> list[SyncStatus]:
        """The company's syncs; Codat's spec answers one object, its docs a list: both are taken."""
        path = f"/meta/companies/{_seg(company_id)}/sync/commerce/status"
        data = self._json(await self._call("get_sync_status", "GET", path, company=company_id))
        items = data if isinstance(data, list) else [data]
        return self._parse(items, lambda raw: [SyncStatus.model_validate(item) for item in raw])

    async def get_company(self, company_id: str) -> Relayed:
        """The company as Codat has it now (Platform API `GET /companies/{companyId}`); a deleted one is a
        `CodatNotFound`. Its `name` is what staff search by (service/schedules.py)."""
        return self._json(await self._call("get_company", "GET", f"/companies/{_seg(company_id)}", company=company_id))

    async def get_connection(self, company_id: str, connection_id: str) -> Relayed:
        """One connection as Codat has it now (`status`: Linked, Unlinked, Deauthorized, PendingAuth); a deleted
        one is a `CodatNotFound`."""
        path = f"/companies/{_seg(company_id)}/connections/{_seg(connection_id)}"
        return self._json(await self._call("get_connection", "GET", path, company=company_id))

    async def get_sync_configuration(self, company_id: str) -> Relayed:
        """Sync for Commerce's `get-configuration` (`GET /config/companies/{companyId}/sync/commerce`,
        sync-commerce-current.json): `schedule` says when Codat syncs the company."""
        path = f"/config/companies/{_seg(company_id)}/sync/commerce"
        return self._json(await self._call("get_sync_configuration", "GET", path, company=company_id))

    async def sync_latest(self, company_id: str, sync_to: datetime | None = None) -> Relayed:
        """Sync from the last successful sync up to `sync_to` (Codat's default: now)."""
        # An empty object rather than no body: the spec's body is an object whose `syncTo` is optional.
        body: dict[str, str] = {} if sync_to is None else {"syncTo": _iso(sync_to)}
        path = f"/companies/{_seg(company_id)}/sync/commerce/latest"
        response = await self._call(
            "sync_latest", "POST", path, orjson.dumps(body), str(uuid.uuid4()), _new_key, company=company_id
        )
        return self._json(response)

    async def sync_historic(self, company_id: str, start: datetime, finish: datetime) -> Relayed:
        # The spec's `dateRange` form, not the docs' `{start, end}` (FACTS §3).
        body = {"dateRange": {"start": _iso(start), "finish": _iso(finish)}}
        path = f"/meta/companies/{_seg(company_id)}/sync/commerce/historic"
        response = await self._call(
            "sync_historic", "POST", path, orjson.dumps(body), str(uuid.uuid4()), _new_key, company=company_id
        )
        return self._json(response)

    async def list_webhook_consumers(self) -> list[WebhookConsumer]:
        """Every webhook consumer of this Codat client (Platform `GET /webhooks`, at most 50)."""
        data = self._json(await self._call("list_webhook_consumers", "GET", "/webhooks"))
        items = data.get("results") if isinstance(data, dict) else data
        return self._parse(items or [], lambda raw: [WebhookConsumer.model_validate(item) for item in raw])

    async def create_webhook_consumer(
        self, url: str, event_types: Sequence[str], company_tags: Sequence[str] = ()
    ) -> WebhookConsumer:
        """`POST /webhooks`. Under one Idempotency-Key, so that a retried attempt never creates a second."""
        body: dict[str, Any] = {"url": url, "eventTypes": list(event_types), "disabled": False}
        if company_tags:
            body["companyTags"] = list(company_tags)
        response = await self._call(
            "create_webhook_consumer", "POST", "/webhooks", orjson.dumps(body), str(uuid.uuid4())
        )
        return self._parse(response.content, WebhookConsumer.model_validate_json)

    async def delete_webhook_consumer(self, consumer_id: str) -> None:
        await self._call("delete_webhook_consumer", "DELETE", f"/webhooks/{_seg(consumer_id)}")

    # -- the machinery ------------------------------------------------------------------------------

    async def _call(
        self,
        endpoint: str,
        method: str,
        path: str,
        body: bytes | None = None,
        idempotency_key: str | None = None,
        new_key: Callable[[], str] | None = None,
        *,
        company: str | None = None,
    ) -> httpx.Response:
        """One logical call: attempts until success, a final answer, or the retry policy gives up.

        A keyed attempt that got an answer is over in Codat's eyes (`attempt_over`): the call is tried
        again only under a new key from `new_key`; without one (a push, whose caller records each key
        before it is sent) the answer is raised for the caller to decide.
        """
        headers = {}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key  # kept while no attempt got an answer
        started = self._clock.now()
        attempt = 0
        while True:
            attempt += 1
            outcome = await self._attempt(endpoint, method, path, body, headers, company)
            retry_after = retry_after_s(outcome, self._clock.now())  # parsed once per answer
            if isinstance(outcome, httpx.Response) and not retryable(outcome, attempt, method):
                if outcome.is_success:
                    return outcome
                raise self._error(endpoint, outcome, method, retry_after)
            if idempotency_key is not None and isinstance(outcome, httpx.Response) and attempt_over(outcome):
                if new_key is None:
                    raise self._error(endpoint, outcome, method, retry_after)
                headers["Idempotency-Key"] = new_key()
            elapsed = self._clock.now() - started
            wait = self._retry.delay(attempt, retry_after, elapsed, rand=random.random())
            if wait is None:
                raise self._error(endpoint, outcome, method, retry_after)
            status = outcome.status_code if isinstance(outcome, httpx.Response) else NO_RESPONSE
            log.warning("codat_retry", endpoint=endpoint, status=status, attempt=attempt, delay_s=wait)
            await self._sleep(wait)

    async def _attempt(
        self, endpoint: str, method: str, path: str, body: bytes | None, headers: dict[str, str], company: str | None
    ) -> httpx.Response | httpx.TransportError:
        await self._pacer.wait()  # every attempt is a request Codat counts against the limit
        # The shared budget may say "not now" (`Deferred`, raised to the job): nothing is sent then. Asked
        # before this process's own cap, so that a call waiting for its company's slot holds no other's turn.
        lease = await self._budget.acquire(company, current_priority()) if self._budget is not None else None
        response: httpx.Response | None = None
        # One span per request sent, named by the operation (no ids in span names).
        with tracing.span(f"codat {endpoint}", kind=tracing.CLIENT,
                          attributes={"http.request.method": method, "codat.operation": endpoint}):  # fmt: skip
            try:
                async with self._in_flight:
                    response = await self._http.request(method, path, content=body, headers=headers)
            except httpx.TransportError as exc:  # connect errors and timeouts alike
                self._observe(endpoint, NO_RESPONSE)
                tracing.failed(exc)
                return exc
            finally:
                if lease is not None and self._budget is not None:
                    await self._budget.release(lease, response)
            tracing.annotate(**{"http.response.status_code": response.status_code})
        remaining = _int_or_none(response.headers.get("X-Rate-Limit-Remaining"))
        if remaining is not None:
            self.rate_limit_remaining = remaining
        self._observe(endpoint, response.status_code)
        return response

    def _observe(self, endpoint: str, status: int) -> None:
        if self._on_response is not None:
            self._on_response(endpoint, status)

    def _error(
        self, endpoint: str, outcome: httpx.Response | httpx.TransportError, method: str, retry_after: float | None
    ) -> CodatError:
        """The error a final answer raises. Codat's "come back later" is translated here and nowhere else:
        a `CodatRateLimited` or `CodatUnavailable` carries `after_s` (`later_s`), which callers take as it is."""
        if isinstance(outcome, httpx.TransportError):
            # The exception type only: httpx's message may quote the URL or request, never worth the risk.
            error = CodatUnavailable(
                f"Codat unreachable on {endpoint}: {type(outcome).__name__}", after_s=later_s(None, None)
            )
            error.__cause__ = outcome
            return error
        status = outcome.status_code
        # Redacted before parsing so that no field of the error can carry an echoed credential.
        body = _error_body(self._redact(outcome.text))
        detail = body.error or outcome.reason_phrase or "no detail"
        message = f"Codat answered {status} on {endpoint}: {detail}"
        if body.correlation_id:
            message += f" (correlation id {body.correlation_id})"
        cls = error_class_for(status)
        if status == 409 and method == "POST":
            # Still in flight at Codat under this Idempotency-Key when our patience ran out: not a refusal.
            # The caller retries later with the same key and gets the replayed answer (a rejection here
            # marked records failed while Codat went on to complete their dataset).
            cls = CodatUnavailable
        if cls is CodatRateLimited or cls is CodatUnavailable:
            return cls(message, status_code=status, body=body, after_s=later_s(status, retry_after))
        return cls(message, status_code=status, body=body)

    def _redact(self, text: str) -> str:
        # Defence in depth: should Codat (or a proxy) ever echo our credentials, they stop here.
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text

    def _json(self, response: httpx.Response) -> Relayed:
        data = self._parse(response.content, orjson.loads)
        if not isinstance(data, dict | list):
            raise CodatError(f"Codat answered {type(data).__name__}, not a JSON object or list")
        return data

    def _parse(self, raw: bytes | list[Any], parse: Callable[[Any], T]) -> T:
        try:
            return parse(raw)
        except (ValidationError, orjson.JSONDecodeError) as exc:
            # Pydantic's message may quote the body; the type and count are enough to go and look.
            raise CodatError(f"unreadable answer from Codat: {type(exc).__name__}") from exc


def _new_key() -> str:
    return str(uuid.uuid4())


def _error_body(content: str) -> CodatErrorBody:
    try:
        data = orjson.loads(content)
        return CodatErrorBody.model_validate(data) if isinstance(data, dict) else CodatErrorBody()
    except (orjson.JSONDecodeError, ValidationError):
        return CodatErrorBody()  # an HTML page from a proxy, say: the status code still tells enough


def _push_key(data_type: str) -> str:
    try:
        return PUSH_DATA_TYPES[data_type]
    except KeyError:
        raise ValueError(f"cannot push {data_type!r}: one of {', '.join(PUSH_DATA_TYPES)}") from None


def _seg(value: str) -> str:
    # Ids go into the path as one segment each: a "/", "?" or ".." must not address another resource.
    return path_segment(value)


def _iso(moment: datetime) -> str:
    """ISO-8601 in UTC with a `Z`; a naive datetime is taken to be UTC already."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
