"""The Codat client against a scripted upstream (`httpx.MockTransport`): retries, errors, headers, secrets."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from service.clock import FixedClock
from service.codat.client import (
    ERROR_STATUSES,
    REPUSHABLE,
    TERMINAL_STATUSES,
    CodatAuthError,
    CodatClient,
    CodatError,
    CodatNotFound,
    CodatRateLimited,
    CodatRejected,
    CodatRetryPolicy,
    CodatUnavailable,
    is_failure,
    is_success,
)
from service.codat.models import DATASET_STATUSES, SYNC_STATUS_MEANINGS
from service.codat.retry import MAX_WAIT_S, RATE_LIMITED_WAIT_S, UNAVAILABLE_WAIT_S
from service.errors import RetryLater
from tests.conftest import make_settings

API_KEY = "sk-test-0123456789abcdef"
ENCODED_KEY = base64.b64encode(API_KEY.encode()).decode()
COMPANY = "8a210b68-6988-11ed-a1eb-0242ac120002"
DATASET = "6586f21b-0b54-4e25-a6cb-8b5f5a3f0c2d"
NO_JITTER = CodatRetryPolicy(jitter=0.0)
Answer = httpx.Response | Exception


class Upstream:
    """Plays scripted answers in order and keeps every request it saw."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def header(self, name: str) -> list[str | None]:
        return [request.headers.get(name) for request in self.requests]

    def body(self, index: int = -1) -> Any:
        return orjson.loads(self.requests[index].content)


class Sleeps:
    """The injected `sleep`: records each delay and moves the clock instead of waiting."""

    def __init__(self, clock: FixedClock) -> None:
        self.clock = clock
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.clock.advance(seconds)


def ok(body: Any = None, **headers: str) -> httpx.Response:
    return httpx.Response(200, content=orjson.dumps({} if body is None else body), headers=headers)


def fail(status: int, body: Any = None, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body) if body is not None else b""
    return httpx.Response(status, content=content, headers=headers)


def codat_error(status: int, error: str = "It went wrong", **extra: Any) -> dict[str, Any]:
    return {
        "statusCode": status,
        "service": "PublicApi",
        "error": error,
        "correlationId": "bc997528a9d7abb9161ef45f05d38599",
        "canBeRetried": "Unknown",
        "detailedErrorCode": 0,
        **extra,
    }


PUSHED = {"data": {"orders": []}, "datasetId": DATASET}


class Harness:
    def __init__(self, *answers: Answer, retry: CodatRetryPolicy = NO_JITTER, **kwargs: Any) -> None:
        self.upstream = Upstream(*answers)
        self.clock = FixedClock()
        self.sleeps = Sleeps(self.clock)
        self.client = CodatClient(
            "https://api.codat.test",
            SecretStr(API_KEY),
            transport=httpx.MockTransport(self.upstream),
            retry=retry,
            sleep=self.sleeps,
            clock=self.clock,
            **kwargs,
        )

    async def __aenter__(self) -> Harness:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()


async def push(client: CodatClient, key: str = "push-key-1") -> Any:
    records = [{"id": "o-1", "totalAmount": 12.5}]
    return await client.push_records(COMPANY, "commerce-orders", records, idempotency_key=key)


# -- requests ----------------------------------------------------------------------------------------


async def test_every_call_carries_basic_auth_of_the_key_and_a_timeout() -> None:
    """`Authorization: Basic base64(key)` and the configured timeout go on every request."""
    async with Harness(ok(PUSHED), ok({"id": DATASET, "status": "Complete"}), timeout_s=12.0) as h:
        await push(h.client)
        await h.client.get_dataset(COMPANY, DATASET)
    assert h.upstream.header("Authorization") == [f"Basic {ENCODED_KEY}"] * 2
    assert base64.b64decode(ENCODED_KEY).decode() == API_KEY
    timeouts = [request.extensions["timeout"] for request in h.upstream.requests]
    assert timeouts == [dict.fromkeys(("connect", "read", "write", "pool"), 12.0)] * 2


async def test_push_posts_the_records_under_the_data_type_key() -> None:
    """Orders travel as `{"orders": [...]}` to `/data/companies/{id}/sync/commerce-orders`."""
    async with Harness(ok(PUSHED)) as h:
        result = await push(h.client)
    request = h.upstream.requests[0]
    assert (request.method, request.url.path) == ("POST", f"/data/companies/{COMPANY}/sync/commerce-orders")
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Idempotency-Key"] == "push-key-1"
    assert h.upstream.body() == {"orders": [{"id": "o-1", "totalAmount": 12.5}]}
    assert result.dataset_id == DATASET


@pytest.mark.parametrize(
    ("data_type", "key"),
    [("commerce-payments", "payments"), ("commerce-transactions", "transactions")],
)
async def test_pre_encoded_records_are_spliced_in_unchanged(data_type: str, key: str) -> None:
    """`push_records_json` sends stored JSON bytes as they are, wrapped in the data type's key."""
    rows = [b'{"id":"p-1","amount":1.5}', b'{"id":"p-2"}']
    async with Harness(ok({"datasetId": DATASET})) as h:
        result = await h.client.push_records_json(
            COMPANY, data_type, b"[" + b",".join(rows) + b"]", idempotency_key="k"
        )
    assert h.upstream.requests[0].content == b'{"' + key.encode() + b'":[' + b",".join(rows) + b"]}"
    assert h.upstream.requests[0].url.path.endswith(f"/sync/{data_type}")
    assert result.dataset_id == DATASET


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.push_records(COMPANY, "orders", [], idempotency_key="k"),
        lambda c: c.push_records(COMPANY, "commerce-orders", [{"id": "x"}] * 5001, idempotency_key="k"),
        lambda c: c.push_records_json(COMPANY, "commerce-orders", b'{"id": "x"}', idempotency_key="k"),
    ],
    ids=["unknown-data-type", "over-5000", "not-an-array"],
)
async def test_bad_pushes_are_refused_before_anything_is_sent(call: Callable[[CodatClient], Any]) -> None:
    """A push Codat would reject or truncate never leaves the process."""
    async with Harness() as h:
        with pytest.raises(ValueError):
            await call(h.client)
    assert h.upstream.requests == []


async def test_ids_are_quoted_into_the_path() -> None:
    """An id holding `/` or `?` cannot address another resource."""
    async with Harness(ok({"id": "x", "status": "Queued"})) as h:
        await h.client.get_dataset("a/b", "c?d")
    assert h.upstream.requests[0].url.raw_path == b"/meta/companies/a%2Fb/pull/history/c%3Fd"


async def test_sync_latest_sends_sync_to_in_utc_or_an_empty_object() -> None:
    """`syncTo` is ISO-8601 UTC with `Z`; with no date the body is `{}` (Codat defaults to now)."""
    summary = {"commerceSyncId": "s-1", "syncStatusCode": 1000, "novel": True}
    async with Harness(ok(summary), ok(summary)) as h:
        at = datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
        assert await h.client.sync_latest(COMPANY, at) == summary
        await h.client.sync_latest(COMPANY, None)
    assert h.upstream.requests[0].url.path == f"/companies/{COMPANY}/sync/commerce/latest"
    assert h.upstream.body(0) == {"syncTo": "2024-05-01T10:00:00Z"}
    assert h.upstream.body(1) == {}


async def test_sync_historic_sends_the_specs_date_range_form() -> None:
    """Historic syncs post `{"dateRange": {"start", "finish"}}`; a naive datetime is taken as UTC."""
    async with Harness(ok([{"relayed": "as is"}])) as h:
        answer = await h.client.sync_historic(COMPANY, datetime(2024, 1, 1), datetime(2024, 2, 1, tzinfo=UTC))
    assert answer == [{"relayed": "as is"}]
    assert h.upstream.requests[0].url.path == f"/meta/companies/{COMPANY}/sync/commerce/historic"
    assert h.upstream.body() == {
        "dateRange": {"start": "2024-01-01T00:00:00Z", "finish": "2024-02-01T00:00:00Z"}
    }


# -- responses ---------------------------------------------------------------------------------------

STATUS = {"companyId": COMPANY, "syncId": "s-1", "syncStatusCode": 2000, "syncStatus": "Success", "x": 1}


@pytest.mark.parametrize(
    "payload", [STATUS, [STATUS, {**STATUS, "syncStatusCode": 4200}]], ids=["object", "list"]
)
async def test_sync_status_is_read_as_an_object_or_a_list(payload: Any) -> None:
    """The spec answers one object, the docs a list: both become a list of `SyncStatus`."""
    async with Harness(ok(payload)) as h:
        statuses = await h.client.get_sync_status(COMPANY)
    assert h.upstream.requests[0].url.path == f"/meta/companies/{COMPANY}/sync/commerce/status"
    expected = payload if isinstance(payload, list) else [payload]
    assert [s.sync_status_code for s in statuses] == [p["syncStatusCode"] for p in expected]
    assert statuses[0].sync_id == "s-1" and statuses[0].meaning == "success, data written"


async def test_dataset_is_parsed_tolerating_new_fields() -> None:
    """A dataset with fields Codat added later still parses, and its status is classified."""
    body = {"id": DATASET, "companyId": COMPANY, "connectionId": "c", "dataType": "commerce-orders",
            "status": "ProcessingError", "requested": "2022-11-14T11:18:37.2798351Z", "progress": 100,
            "isCompleted": False, "isErrored": True, "brandNewField": {"a": 1}}  # fmt: skip
    async with Harness(ok(body)) as h:
        dataset = await h.client.get_dataset(COMPANY, DATASET)
    assert (dataset.status, dataset.data_type, dataset.progress) == (
        "ProcessingError",
        "commerce-orders",
        100,
    )
    assert dataset.requested == datetime(2022, 11, 14, 11, 18, 37, 279835, tzinfo=UTC)
    assert dataset.is_error and dataset.is_terminal and dataset.is_repushable
    assert dataset.model_extra == {"brandNewField": {"a": 1}}


async def test_an_unreadable_success_answer_is_a_codat_error() -> None:
    """A 200 that is not the promised shape raises `CodatError`, not a pydantic or JSON error."""
    async with Harness(httpx.Response(200, content=b"<html>"), ok({"no": "datasetId"})) as h:
        with pytest.raises(CodatError, match="unreadable"):
            await h.client.get_sync_status(COMPANY)
        with pytest.raises(CodatError, match="unreadable"):
            await push(h.client)


def test_status_vocabularies_match_codat() -> None:
    """21 dataset statuses; 9 error states; repushable ones are errors; §3 codes classify."""
    assert len(DATASET_STATUSES) == len(set(DATASET_STATUSES)) == 21
    assert len(ERROR_STATUSES) == 9 and ERROR_STATUSES < set(DATASET_STATUSES)
    assert TERMINAL_STATUSES == ERROR_STATUSES | {"Complete", "Cancelled", "NotSupported"}
    assert REPUSHABLE < ERROR_STATUSES and not REPUSHABLE & {"AuthError", "PermissionsError"}
    assert [c for c in SYNC_STATUS_MEANINGS if is_success(c)] == [2000, 2040]
    failures = [4000, 4040, 4200, 4220, 4260, 5000, 5080, 5120, 5130]
    assert [c for c in SYNC_STATUS_MEANINGS if is_failure(c)] == failures
    assert not is_failure(None) and not is_success(1000)


# -- retries -----------------------------------------------------------------------------------------


def connect_error() -> Exception:
    return httpx.ConnectError("connection refused")


@pytest.mark.parametrize(
    "first",
    [
        lambda: fail(408),
        lambda: fail(429),
        lambda: fail(500, codat_error(500)),
        lambda: fail(503, b"<html>down</html>"),
        connect_error,
        lambda: httpx.ReadTimeout("read timed out"),
    ],
    ids=["408", "429", "500", "503", "connect-error", "read-timeout"],
)
async def test_transient_failures_are_retried_after_the_backoff(first: Callable[[], Answer]) -> None:
    """408, 429, 5xx, connection errors and timeouts are tried again after 0.5 s, then succeed."""
    async with Harness(first(), ok({"id": DATASET, "status": "Queued"})) as h:
        dataset = await h.client.get_dataset(COMPANY, DATASET)
    assert dataset.status == "Queued"
    assert len(h.upstream.requests) == 2
    assert h.sleeps.delays == [0.5]


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_honoured_exactly(status: int) -> None:
    """A `Retry-After` in seconds replaces the backoff: the sleep equals it, jitter or not."""
    jittery = CodatRetryPolicy(jitter=0.5)
    queued = ok({"id": DATASET, "status": "Queued"})
    async with Harness(fail(status, **{"Retry-After": "7"}), queued, retry=jittery) as h:
        await h.client.get_dataset(COMPANY, DATASET)
    assert h.sleeps.delays == [7.0]


async def test_retry_after_as_an_http_date_counts_from_the_clock() -> None:
    """The HTTP-date form of `Retry-After` waits until that moment."""
    async with Harness(ok(PUSHED)) as h:
        when = datetime.fromtimestamp(h.clock.now() + 9, tz=UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
        h.upstream.answers.insert(0, fail(429, **{"Retry-After": when}))
        await push(h.client)
    assert h.sleeps.delays == [pytest.approx(9.0, abs=1.0)]


async def test_gives_up_after_max_attempts() -> None:
    """Three 500s with `max_attempts=3`: three requests, two backoffs, then `CodatUnavailable`."""
    policy = CodatRetryPolicy(max_attempts=3, jitter=0.0)
    async with Harness(*[fail(500, codat_error(500))] * 3, retry=policy) as h:
        with pytest.raises(CodatUnavailable) as caught:
            await h.client.get_dataset(COMPANY, DATASET)
    assert len(h.upstream.requests) == 3
    assert h.sleeps.delays == [0.5, 0.75]
    assert caught.value.status_code == 500


async def test_gives_up_when_the_time_budget_is_spent() -> None:
    """Backoffs 0.5 + 0.75 fit a 2 s budget; the next 1.125 would not, so the third failure is final."""
    policy = CodatRetryPolicy(max_attempts=10, budget_s=2.0, jitter=0.0)
    async with Harness(connect_error(), connect_error(), connect_error(), ok(PUSHED), retry=policy) as h:
        with pytest.raises(CodatUnavailable, match="unreachable on push_records: ConnectError"):
            await push(h.client)
    assert h.sleeps.delays == [0.5, 0.75]
    assert len(h.upstream.requests) == 3


async def test_a_retry_after_beyond_the_budget_raises_rate_limited_at_once() -> None:
    """Codat asking for 120 s against a 60 s budget: no sleep; the caller gets `after_s` to reschedule."""
    async with Harness(fail(429, codat_error(429), **{"Retry-After": "120"})) as h:
        with pytest.raises(CodatRateLimited) as caught:
            await push(h.client)
    assert h.sleeps.delays == []
    assert caught.value.after_s == 120 and caught.value.status_code == 429


async def test_a_push_retried_without_an_answer_keeps_its_idempotency_key() -> None:
    """No answer, a 409 (in flight) and a 429 (released) keep the caller's `Idempotency-Key`
    (docs/using-the-api/write-data/idempotency.md: retry a 429 with the same key after Retry-After)."""
    async with Harness(connect_error(), fail(409, codat_error(409)), fail(429), ok(PUSHED)) as h:
        await push(h.client, key="batch-42")
    assert h.upstream.header("Idempotency-Key") == ["batch-42"] * 4


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_a_push_answered_5xx_is_not_retried_under_the_same_key(status: int) -> None:
    """Codat caches a 5xx under the key for 90 minutes (docs/using-the-api/write-data/idempotency.md):
    retrying it would only replay it, so the answer goes to the caller, which records a new key first."""
    async with Harness(fail(status), ok(PUSHED)) as h:
        with pytest.raises(CodatUnavailable) as caught:
            await push(h.client, key="batch-42")
    assert caught.value.status_code == status
    assert h.upstream.header("Idempotency-Key") == ["batch-42"]


async def test_sync_posts_get_a_new_key_per_call_and_after_an_answered_5xx() -> None:
    """Sync posts generate a uuid4 key per call; an attempt answered 5xx is over, so its retry gets a new one."""
    async with Harness(fail(502), ok(), ok()) as h:
        await h.client.sync_latest(COMPANY, None)
        await h.client.sync_historic(COMPANY, datetime(2024, 1, 1), datetime(2024, 1, 2))
    keys = h.upstream.header("Idempotency-Key")
    assert len(set(keys)) == 3
    assert all(k is not None and uuid.UUID(k).version == 4 for k in keys)


async def test_gets_carry_no_idempotency_key() -> None:
    """`Idempotency-Key` is for writes only."""
    async with Harness(ok(STATUS)) as h:
        await h.client.get_sync_status(COMPANY)
    assert h.upstream.header("Idempotency-Key") == [None]


async def test_conflict_after_a_lost_attempt_waits_for_the_first_to_finish() -> None:
    """409 on a repeated POST is our own earlier attempt still in flight: wait, then take the answer."""
    async with Harness(httpx.ReadTimeout("slow"), fail(409, codat_error(409)), ok(PUSHED)) as h:
        result = await push(h.client)
    assert result.dataset_id == DATASET
    assert h.sleeps.delays == [0.5, 0.75]


# -- "come back later", translated once ----------------------------------------------------------------

T0 = 1_750_000_000.0  # FixedClock's start: the HTTP dates below count from it


def http_date(at: float, zone: str = "GMT") -> str:
    return datetime.fromtimestamp(at, tz=UTC).strftime(f"%a, %d %b %Y %H:%M:%S {zone}")


NO_ANSWER = -1  # the row's "status" when Codat never answered


@pytest.mark.parametrize(
    ("status", "retry_after", "error_class", "after_s"),
    [
        (429, "7", CodatRateLimited, 7),  # seconds, as Codat sends them
        (429, "0", CodatRateLimited, 0),  # "now" is an answer too
        (429, "2.2", CodatRateLimited, 3),  # a fraction rounds up: sooner only fails again
        (429, " 7 ", CodatRateLimited, 7),
        (429, http_date(T0 + 9), CodatRateLimited, 9),  # an HTTP date counts from the injected clock
        (429, http_date(T0 + 9, "-0000"), CodatRateLimited, 9),  # a zoneless date is UTC
        (429, http_date(T0 - 60), CodatRateLimited, 0),  # a date already past: now
        (429, "99999999", CodatRateLimited, MAX_WAIT_S),  # longer than a day: capped
        (429, None, CodatRateLimited, RATE_LIMITED_WAIT_S),  # missing: 30 s
        (429, "", CodatRateLimited, RATE_LIMITED_WAIT_S),
        (429, "soon", CodatRateLimited, RATE_LIMITED_WAIT_S),  # garbage
        (429, "-3", CodatRateLimited, RATE_LIMITED_WAIT_S),
        (429, "nan", CodatRateLimited, RATE_LIMITED_WAIT_S),
        (429, "inf", CodatRateLimited, RATE_LIMITED_WAIT_S),
        (429, "Wed, 99 Foo 2025 99:00:00 GMT", CodatRateLimited, RATE_LIMITED_WAIT_S),
        (503, "7", CodatUnavailable, 7),
        (503, http_date(T0 + 120), CodatUnavailable, 120),
        (503, None, CodatUnavailable, UNAVAILABLE_WAIT_S),  # missing: 5 s
        (503, "later", CodatUnavailable, UNAVAILABLE_WAIT_S),
        (500, None, CodatUnavailable, UNAVAILABLE_WAIT_S),  # every other "unavailable" alike
        (502, "11", CodatUnavailable, 11),
        (408, None, CodatUnavailable, UNAVAILABLE_WAIT_S),
        (409, None, CodatUnavailable, UNAVAILABLE_WAIT_S),  # a POST still in flight under its key
        (NO_ANSWER, None, CodatUnavailable, UNAVAILABLE_WAIT_S),
    ],
)
async def test_come_back_later_is_one_retry_later_with_whole_seconds(
    status: int, retry_after: str | None, error_class: type[CodatError], after_s: int
) -> None:
    """Each row: Codat's last answer → the one error callers get, a `RetryLater` whose `after_s` they use as is."""
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    answer: Answer = connect_error() if status == NO_ANSWER else fail(status, codat_error(status), **headers)
    async with Harness(answer, retry=CodatRetryPolicy(max_attempts=1)) as h:
        assert h.clock.now() == T0
        with pytest.raises(RetryLater) as caught:
            await push(h.client)
    assert type(caught.value) is error_class
    assert caught.value.after_s == after_s and isinstance(caught.value.after_s, int)


# -- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, CodatRejected),
        (401, CodatAuthError),
        (402, CodatRejected),
        (403, CodatAuthError),
        (404, CodatNotFound),
        (409, CodatUnavailable),  # a POST's 409: still in flight under its Idempotency-Key, so transient
        (422, CodatRejected),
        (429, CodatRateLimited),
        (500, CodatUnavailable),
        (503, CodatUnavailable),
    ],
)
async def test_each_status_raises_its_error_carrying_codats_body(status: int, error_class: type) -> None:
    """The final answer maps to one error class; Codat's error fields are carried, parsed."""
    validation = {"errors": [{"itemId": "o-1", "message": "bad", "validatorName": "Orders"}], "warnings": []}
    body = codat_error(status, "Nope", canBeRetried="False", detailedErrorCode=7, validation=validation)
    policy = CodatRetryPolicy(max_attempts=2, jitter=0.0)
    async with Harness(*[fail(status, body)] * 2, retry=policy) as h:
        with pytest.raises(error_class) as caught:
            await push(h.client)
    err = caught.value
    assert type(err) is error_class and isinstance(err, CodatError)
    assert (err.status_code, err.service, err.error) == (status, "PublicApi", "Nope")
    assert err.correlation_id == "bc997528a9d7abb9161ef45f05d38599"
    assert (err.can_be_retried, err.detailed_error_code) == ("False", 7)
    assert err.validation == validation
    assert f"Codat answered {status} on push_records: Nope" in str(err)
    retried = status in (409, 429)  # an answered 5xx is over under its key: the caller decides (a new key)
    assert len(h.upstream.requests) == (2 if retried else 1)


async def test_an_error_body_that_is_not_json_still_raises_by_status() -> None:
    """A proxy's HTML page: the status decides the class; the body fields stay empty."""
    async with Harness(httpx.Response(403, content=b"<html>denied</html>")) as h:
        with pytest.raises(CodatAuthError) as caught:
            await h.client.get_dataset(COMPANY, DATASET)
    assert caught.value.status_code == 403
    assert caught.value.error is None and caught.value.correlation_id is None
    assert "Forbidden" in str(caught.value)


# -- observation -------------------------------------------------------------------------------------


async def test_rate_limit_and_status_of_every_attempt_are_observed() -> None:
    """`rate_limit_remaining` keeps the latest header; `on_response` sees each attempt, 0 for no answer."""
    seen: list[tuple[str, int]] = []
    answers = (
        connect_error(),
        fail(429, **{"X-Rate-Limit-Remaining": "41"}),
        ok(PUSHED),  # no header: the last value seen stands
        ok(STATUS, **{"X-Rate-Limit-Remaining": "40"}),
    )
    async with Harness(*answers, on_response=lambda name, status: seen.append((name, status))) as h:
        assert h.client.rate_limit_remaining is None
        await push(h.client)
        assert h.client.rate_limit_remaining == 41
        await h.client.get_sync_status(COMPANY)
    assert h.client.rate_limit_remaining == 40
    assert seen == [
        ("push_records", 0),
        ("push_records", 429),
        ("push_records", 200),
        ("get_sync_status", 200),
    ]


async def test_from_settings_uses_the_codat_settings() -> None:
    """Base URL, key and timeout come from `RELAY_CODAT_*`."""
    settings = make_settings(
        codat_base_url="https://sandbox.test/api", codat_api_key=API_KEY, codat_timeout_seconds=4.0
    )
    upstream = Upstream(ok({"id": DATASET, "status": "Queued"}))
    async with CodatClient.from_settings(settings, httpx.MockTransport(upstream)) as client:
        await client.get_dataset(COMPANY, DATASET)
    request = upstream.requests[0]
    assert str(request.url) == f"https://sandbox.test/api/meta/companies/{COMPANY}/pull/history/{DATASET}"
    assert request.headers["Authorization"] == f"Basic {ENCODED_KEY}"
    assert request.extensions["timeout"]["read"] == 4.0


async def test_without_a_key_no_authorization_is_sent() -> None:
    """No key (the local sandbox): no `Authorization` header at all, rather than an empty one."""
    upstream = Upstream(ok(STATUS), ok(STATUS))
    for key in (None, SecretStr("")):
        async with CodatClient(
            "https://sandbox.test", key, transport=httpx.MockTransport(upstream)
        ) as client:
            await client.get_sync_status(COMPANY)
    assert upstream.header("Authorization") == [None, None]


# -- secrets -----------------------------------------------------------------------------------------


async def test_the_key_never_shows_in_reprs_errors_or_logs() -> None:
    """Neither the key nor its Basic value appears in `repr(client)`, error text or log lines."""
    echo = codat_error(401, f"Bad credentials: Basic {ENCODED_KEY} (key {API_KEY})")
    answers: list[Answer] = [fail(500, echo), fail(401, echo), *[connect_error() for _ in range(5)]]
    texts: list[str] = []
    async with Harness(*answers) as h:
        texts.append(repr(h.client))
        with capture_logs() as logs:
            for expected in (CodatUnavailable, CodatAuthError, CodatUnavailable):
                with pytest.raises(expected) as caught:
                    await push(h.client)
                err = caught.value
                texts += [str(err), repr(err), str(err.error), str(err.args), repr(err.__cause__)]
        texts += [repr(entry) for entry in logs]
    assert len(logs) >= 4  # the retries were logged, so the log check below is not vacuous
    assert "[redacted]" in texts[1]
    for text in texts:
        assert API_KEY not in text and ENCODED_KEY not in text, text
    assert repr(h.client) == "CodatClient(base_url='https://api.codat.test', authenticated=True)"


# -- the policy --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "attempt", "retry_after", "elapsed", "rand", "expected"),
    [
        (NO_JITTER, 1, None, 0.0, 0.5, 0.5),  # the SDK's initial interval
        (NO_JITTER, 2, None, 0.0, 0.5, 0.75),  # times 1.5
        (NO_JITTER, 3, None, 0.0, 0.5, 1.125),
        (NO_JITTER, 4, None, 0.0, 0.5, 1.6875),
        (NO_JITTER, 5, None, 0.0, 0.5, None),  # max_attempts (5) reached
        (CodatRetryPolicy(max_attempts=30, budget_s=1e9), 20, None, 0.0, 0.5, 60.0),  # capped at 60 s
        (CodatRetryPolicy(), 1, None, 0.0, 0.0, 0.375),  # jitter -25 %
        (CodatRetryPolicy(), 1, None, 0.0, 1.0, 0.625),  # jitter +25 %
        (CodatRetryPolicy(), 2, 7.0, 0.0, 0.9, 7.0),  # Retry-After wins, unjittered
        (CodatRetryPolicy(), 1, 0.0, 0.0, 0.5, 0.0),  # "retry now"
        (CodatRetryPolicy(), 1, -3.0, 0.0, 0.5, 0.0),  # nonsense clamps to now
        (CodatRetryPolicy(), 1, 61.0, 0.0, 0.5, None),  # beyond the 60 s budget
        (CodatRetryPolicy(), 3, None, 59.0, 0.5, None),  # budget nearly spent
        (CodatRetryPolicy(), 3, None, 58.0, 0.5, 1.125),  # still fits
        (CodatRetryPolicy(max_attempts=1), 1, None, 0.0, 0.5, None),  # retries off
    ],
)
def test_retry_policy_table(
    policy: CodatRetryPolicy,
    attempt: int,
    retry_after: float | None,
    elapsed: float,
    rand: float,
    expected: float | None,
) -> None:
    """delay(attempt, retry_after, elapsed, rand) → seconds to wait, or None to give up."""
    assert policy.delay(attempt, retry_after, elapsed, rand) == (
        None if expected is None else pytest.approx(expected)
    )


@pytest.mark.parametrize("limit", [1, 3])
async def test_no_more_requests_in_flight_than_allowed(limit: int) -> None:
    """RELAY_CODAT_CONCURRENCY caps the requests in flight: the others wait their turn outside httpx, and
    every call still completes."""
    in_flight, most, reached, release = 0, 0, asyncio.Event(), asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        if in_flight == limit:
            reached.set()
        await release.wait()
        in_flight -= 1
        return ok({"id": DATASET, "companyId": COMPANY, "dataType": "orders", "status": "Complete",
                   "requested": "2026-01-01T00:00:00Z", "progress": 100, "isCompleted": True, "isErrored": False})

    client = CodatClient.from_settings(make_settings(codat_concurrency=limit), transport=httpx.MockTransport(slow))
    try:
        calls = [asyncio.create_task(client.get_dataset(COMPANY, DATASET)) for _ in range(limit + 3)]
        await asyncio.wait_for(reached.wait(), 5)
        for _ in range(50):  # ample turns of the loop for any call that could start to start
            await asyncio.sleep(0)
        assert (in_flight, most) == (limit, limit)
        release.set()
        assert [found.status for found in await asyncio.gather(*calls)] == ["Complete"] * (limit + 3)
    finally:
        await client.aclose()
    assert most == limit
