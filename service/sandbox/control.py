"""`/_sandbox/*`: script outcomes and faults, change config at runtime, and read what the sandbox saw.

Unauthenticated on purpose: the sandbox is a local test double and these endpoints are its test API.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.sandbox.config import SandboxConfig
from service.sandbox.edge import Sandbox
from service.sandbox.faults import ALL, ENDPOINTS, EndpointFaults, WebhookFaults
from service.sandbox.model import DATA_TYPES, FINAL_STATUSES, SYNC_STATUS_TEXT, iso, parse_iso
from service.sandbox.ratelimit import reset_at
from service.sandbox.schedule import BadSchedule, apply_schedule, configuration_json
from service.sandbox.state import ShiftedClock

# Settings that may change while the sandbox runs; api_key and seed are fixed for a run.
RUNTIME_FIELDS = (
    "webhook_url", "webhook_secret", "webhook_shape", "legacy_auth_header", "svix_headers", "pace_seconds",
    "push_processing_seconds", "webhook_retry_delays", "client_name", "daily_quota",
)  # fmt: skip
SECRET_FIELDS = {"webhook_secret", "api_key", "legacy_auth_header"}


class Invalid(Exception):
    pass


class Unknown(Exception):
    pass


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def config_json(config: SandboxConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        # Secrets are reported as set or not, never echoed.
        out[_camel(f.name)] = (value is not None) if f.name in SECRET_FIELDS else value
    return out


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise Invalid("the body is not JSON") from None
    if not isinstance(body, dict):
        raise Invalid("the body must be a JSON object")
    return body


def handle(fn: Callable[[Request, Sandbox], Awaitable[Any]]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        sandbox: Sandbox = request.app.state.sandbox
        sandbox.tick()
        try:
            result = await fn(request, sandbox)
        except (Invalid, ValueError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except Unknown as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return result if isinstance(result, Response) else JSONResponse(result)

    return endpoint


async def reset(request: Request, sandbox: Sandbox) -> Any:
    await sandbox.sender.reset()
    sandbox.state.reset()
    return {"ok": True}


async def get_config(request: Request, sandbox: Sandbox) -> Any:
    return config_json(sandbox.state.config)


async def set_config(request: Request, sandbox: Sandbox) -> Any:
    names = {_camel(n): n for n in RUNTIME_FIELDS} | {n: n for n in RUNTIME_FIELDS}
    changes: dict[str, Any] = {}
    for key, value in (await _body(request)).items():
        if key not in names:
            raise Invalid(f"'{key}' cannot be changed at runtime")
        changes[names[key]] = tuple(value) if names[key] == "webhook_retry_delays" else value
    sandbox.state.config = sandbox.state.config.replace(**changes)
    return config_json(sandbox.state.config)


async def script_dataset(request: Request, sandbox: Sandbox) -> Any:
    body = await _body(request)
    status, data_type = body.get("status"), body.get("dataType", "*")
    if status not in FINAL_STATUSES:
        raise Invalid(f"status must be one of {', '.join(sorted(FINAL_STATUSES))}")
    if data_type != "*" and data_type not in DATA_TYPES:
        raise Invalid(f"dataType must be one of {', '.join(DATA_TYPES)} or *")
    times = int(body.get("times", 1))
    sandbox.state.script_dataset(
        str(body.get("companyId", "*")), data_type, status, times, body.get("errorMessage")
    )
    return {"scripted": times}


async def script_sync(request: Request, sandbox: Sandbox) -> Any:
    body = await _body(request)
    code = body.get("code", body.get("syncStatusCode"))
    if not isinstance(code, int) or code not in SYNC_STATUS_TEXT or code < 2000:
        raise Invalid(
            f"code must be a final sync status code: {sorted(c for c in SYNC_STATUS_TEXT if c >= 2000)}"
        )
    times = int(body.get("times", 1))
    sandbox.state.script_sync(str(body.get("companyId", "*")), code, times, body.get("errorMessage"))
    return {"scripted": times}


async def get_faults(request: Request, sandbox: Sandbox) -> Any:
    return {
        "endpoints": {name: f.to_json() for name, f in sandbox.state.faults.items()},
        "webhooks": sandbox.state.webhook_faults.to_json(),
    }


async def set_faults(request: Request, sandbox: Sandbox) -> Any:
    endpoint = request.path_params["endpoint"]
    if endpoint not in (*ENDPOINTS, ALL):
        raise Invalid(f"endpoint must be one of {', '.join(ENDPOINTS)} or *")
    sandbox.state.faults[endpoint] = EndpointFaults.from_json(await _body(request))
    return await get_faults(request, sandbox)


async def clear_faults(request: Request, sandbox: Sandbox) -> Any:
    sandbox.state.faults.clear()
    sandbox.state.webhook_faults = WebhookFaults()
    return await get_faults(request, sandbox)


async def set_webhook_faults(request: Request, sandbox: Sandbox) -> Any:
    sandbox.state.webhook_faults = WebhookFaults.from_json(await _body(request))
    return await get_faults(request, sandbox)


async def flush_webhooks(request: Request, sandbox: Sandbox) -> Any:
    return {"sent": sandbox.sender.flush()}


async def tick(request: Request, sandbox: Sandbox) -> Any:
    # `handle` has already ticked; a second pass reports nothing new but makes the intent explicit.
    return {"events": sandbox.tick()}


def _known_company(request: Request, sandbox: Sandbox) -> str:
    company_id: str = request.path_params["companyId"]
    if sandbox.state.find_company(company_id) is None:
        raise Unknown(f"no company {company_id}: create it first (POST /_sandbox/companies)")
    return company_id


async def delete_connection(request: Request, sandbox: Sandbox) -> Any:
    event = sandbox.state.delete_connection(_known_company(request, sandbox))
    assert event is not None and event.connection is not None
    sandbox.emit([event])
    return {"connectionId": event.connection.id}


async def reconnect(request: Request, sandbox: Sandbox) -> Any:
    """The merchant links again: a new connection (its id differs from the deleted one's)."""
    events = sandbox.state.reconnect(_known_company(request, sandbox))
    assert events[-1].connection is not None
    sandbox.emit(events)
    return {"connectionId": events[-1].connection.id}


async def companies(request: Request, sandbox: Sandbox) -> Any:
    state = sandbox.state
    return {
        "results": [{"id": c.id, "connections": state.connections_json(c)} for c in state.companies.values()]
    }


async def create_company(request: Request, sandbox: Sandbox) -> Any:
    """`{id?, name?, syncStartDate?}`: a company as if created and linked before; sends no webhook.

    Codat's own `POST /companies` issues the id (and sends `company.created`); tests that need an id of
    their choosing seed it here. An id that exists already is left as it is (200, `created: false`).
    """
    body = await _body(request)
    state, company_id = sandbox.state, body.get("id")
    if company_id is not None and (not isinstance(company_id, str) or not company_id.strip()):
        raise Invalid("id must be a non-empty string")
    found = state.find_company(company_id)
    if found is None:
        start = body.get("syncStartDate")
        found, _events = state.create_company(
            company_id, body.get("name"), sync_start=None if start is None else parse_iso(str(start))
        )
        created = True
    else:
        created = False
    return {"id": found.id, "created": created, "connections": state.connections_json(found)}


async def set_schedule(request: Request, sandbox: Sandbox) -> Any:
    """`{selectedFrequency?, syncHour?, timeZone?, startDate?}`: the company's Sync for Commerce schedule, as
    Codat's `set-configuration` would set it; it is configured from now on and synced at that hour."""
    company = sandbox.state.company(_known_company(request, sandbox))
    try:
        apply_schedule(company, await _body(request), sandbox.state.now())
    except BadSchedule as exc:
        raise Invalid(str(exc)) from None
    return configuration_json(company)


def _clock(sandbox: Sandbox) -> ShiftedClock:
    clock = sandbox.state.clock
    assert isinstance(clock, ShiftedClock)  # create_sandbox_app wraps every clock in one
    return clock


async def get_clock(request: Request, sandbox: Sandbox) -> Any:
    return {"now": iso(sandbox.state.now())}


async def set_clock(request: Request, sandbox: Sandbox) -> Any:
    """`{"now": ISO}` or `{"advanceSeconds": n}`: move the sandbox's clock (never back), then settle what is due."""
    body, clock, now = await _body(request), _clock(sandbox), sandbox.state.now()
    if "now" in body:
        target = parse_iso(str(body["now"]))
    elif isinstance(body.get("advanceSeconds"), int | float) and not isinstance(body["advanceSeconds"], bool):
        target = now + float(body["advanceSeconds"])
    else:
        raise Invalid("give 'now' (ISO-8601) or 'advanceSeconds' (a number)")
    if target < now:
        raise Invalid("the sandbox's clock never goes back (datasets and syncs are computed from it)")
    clock.set(target)
    return {"now": iso(sandbox.state.now()), "events": sandbox.tick()}


def _matches(item: dict[str, Any], request: Request) -> bool:
    return all(
        item.get(k) == request.query_params[k] for k in ("companyId", "dataType") if k in request.query_params
    )


async def pushes(request: Request, sandbox: Sandbox) -> Any:
    items = [p.to_json() for p in sandbox.state.pushes]
    return {"results": [i for i in items if _matches(i, request)]}


async def datasets(request: Request, sandbox: Sandbox) -> Any:
    now = sandbox.state.now()
    items = [d.to_json(now) | {"recordIds": d.record_ids} for d in sandbox.state.datasets.values()]
    return {"results": [i for i in items if _matches(i, request)]}


async def records(request: Request, sandbox: Sandbox) -> Any:
    items = [r.to_json() for r in sandbox.state.records.values()]
    return {"results": [i for i in items if _matches(i, request)]}


async def breaches(request: Request, sandbox: Sandbox) -> Any:
    items = [b.to_json() for b in sandbox.state.breaches]
    kind = request.query_params.get("kind")
    return {"results": [i for i in items if _matches(i, request) and (kind is None or i["kind"] == kind)]}


async def webhooks(request: Request, sandbox: Sandbox) -> Any:
    return {"results": [d.to_json() for d in sandbox.sender.deliveries]}


async def requests(request: Request, sandbox: Sandbox) -> Any:
    """Answers per endpoint and status; `?companyId=` counts only the requests about that company."""
    company = request.query_params.get("companyId")
    counts: Counter[tuple[str, int]] = Counter()
    for (endpoint, status, company_id), n in sandbox.state.request_counts.items():
        if company is None or company_id == company:
            counts[(endpoint, status)] += n
    return {"results": [{"endpoint": e, "status": s, "count": n} for (e, s), n in sorted(counts.items())]}


async def rate_limits(request: Request, sandbox: Sandbox) -> Any:
    """What the sandbox saw of Codat's rate limits: the daily quota, when it was spent, requests refused
    while it was (none, from a client that stops at `reached`), and per company the most requests it had
    in flight at once and the 429s answered for being over 10."""
    state = sandbox.state
    quota, concurrency, now = state.quota, state.concurrency, state.now()
    limit = state.daily_quota()
    companies = sorted(set(concurrency.max_seen) | set(concurrency.refused))
    return {
        "dailyQuota": limit, "used": quota.used, "remaining": max(0, limit - quota.used),
        "resetsAt": iso(reset_at(now)), "reachedAt": iso(quota.reached_at) if quota.reached_at else None,
        "refusedWhileSpent": quota.refused, "concurrentLimit": concurrency.limit,
        "companies": {c: {"maxInFlight": concurrency.max_seen[c], "refusedOverLimit": concurrency.refused[c]}
                      for c in companies},
    }  # fmt: skip


async def reset_rate_limits(request: Request, sandbox: Sandbox) -> Any:
    """The daily quota is whole again now, as at 00:00 UTC: `client.rateLimit.reset` goes to its consumers."""
    state = sandbox.state
    state.quota.reset(state.now())
    sandbox.emit(state.quota_events())
    return await rate_limits(request, sandbox)


def _r(path: str, fn: Callable[[Request, Sandbox], Awaitable[Any]], method: str = "GET") -> Route:
    return Route("/_sandbox" + path, handle(fn), methods=[method])


ROUTES = [
    _r("/reset", reset, "POST"),
    _r("/config", get_config),
    _r("/config", set_config, "POST"),
    _r("/script/dataset", script_dataset, "POST"),
    _r("/script/sync", script_sync, "POST"),
    _r("/faults", get_faults),
    _r("/faults", clear_faults, "DELETE"),
    _r("/faults/webhooks", set_webhook_faults, "PUT"),
    _r("/faults/{endpoint}", set_faults, "PUT"),
    _r("/webhooks/flush", flush_webhooks, "POST"),
    _r("/tick", tick, "POST"),
    _r("/companies", companies),
    _r("/companies", create_company, "POST"),
    _r("/companies/{companyId}/delete-connection", delete_connection, "POST"),
    _r("/companies/{companyId}/reconnect", reconnect, "POST"),
    _r("/companies/{companyId}/schedule", set_schedule, "POST"),
    _r("/clock", get_clock),
    _r("/clock", set_clock, "POST"),
    _r("/pushes", pushes),
    _r("/datasets", datasets),
    _r("/records", records),
    _r("/breaches", breaches),
    _r("/webhooks", webhooks),
    _r("/requests", requests),
    _r("/rate-limits", rate_limits),
    _r("/rate-limits/reset", reset_rate_limits, "POST"),
]
