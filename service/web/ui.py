"""The Sync Health pages (`/ui`): server-rendered, behind the admin token, no front-end build.

A browser logs in once with the admin token and gets a session cookie: an expiry and a random nonce,
signed with a key derived from the admin token (never the token itself), so rotating the token ends
every session. The server keeps each session (service/sessions.py): logging out deletes it, so the
cookie is dead even if a copy of it survives. Wrong tokens are throttled per client address (429).
Each session has a CSRF token (an HMAC of its nonce) that every form posts back; with
the SameSite=Strict cookie, a page of another site can neither read the token nor send the cookie.
Requests carrying `Authorization: Bearer <admin token>` (curl) need no cookie and no CSRF token:
browsers never attach that header by themselves.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from functools import wraps
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from service import problems, sessions, syncs
from service.clock import iso
from service.codat.client import CodatError
from service.codat.models import ERROR_STATUSES
from service.companies import full_repush, pause_company, resume_company
from service.db import writer
from service.dispatch import replay_alert
from service.errors import NotFound, Rejected
from service.health import PROBLEM_KINDS
from service.ids import path_id, path_segment
from service.records import MODELS
from service.tracking import follow_sync
from service.web import ui_data
from service.web.auth import Endpoint, check_bearer, throttled
from service.web.companies_api import company_query
from service.web.jobs_api import retry_dead_job
from service.web.throttle import TooManyAttempts

COOKIE = "relay_ui"
SESSION_TTL_S = 12 * 3600  # a working day; then the token is asked for again
MAX_FORM_BYTES = 8_192  # our forms hold a token and a path
FLASHES = {  # fixed messages, so a crafted link cannot put words on the page
    "replayed": "Alert queued to be processed again.",
    "retried": "Dead job queued to run again.",
    "not_dead": "That job is no longer dead: nothing to retry.",
    "logged_out": "Signed out.",
    "paused": "Company paused: intake continues, nothing is pushed until it is resumed.",
    "resumed": "Company resumed: whatever waited is being pushed now.",
    "repushed": "Re-push queued: every record not synced, not a conflict and not in flight goes again.",
    "sync_requested": "Codat was asked to sync this company now.",
    "sync_refused": "Codat refused the sync request: see the company's last sync and Codat's Portal.",
    "acknowledged": "Problem acknowledged: it stays listed until its condition clears by itself.",
}
ACTIONS = ("pause", "resume", "repush", "sync-latest")  # the company page's buttons, each behind a confirmation
ACK_BY = "Sync Health page"  # the admin token names no person
REPLAYABLE = frozenset({"dead", "ignored"})  # done/pending/processing alerts gain nothing from a replay
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; "
    "form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}

templates = Environment(
    loader=PackageLoader("service.web", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def when(ts: float | None) -> Markup | str:
    """A `<time>` in UTC; the page's script shows it in local and relative time, UTC on hover."""
    if ts is None:
        return "—"
    stamp = iso(ts) or ""
    utc = f"{stamp.replace('T', ' ')[:19]} UTC"
    return Markup('<time datetime="{}" title="{}">{}</time>').format(stamp, utc, utc)


templates.filters["when"] = when
# Ids in links and form actions, one path segment each: Jinja's `urlencode` keeps "/", so an alert id
# `zzz/../victim` made a Replay form the browser normalised into another alert's.
templates.filters["segment"] = path_segment
templates.filters["age"] = problems.age
templates.globals.update(error_statuses=ERROR_STATUSES, company_of=ui_data.job_company, replayable=REPLAYABLE)


class CsrfRefused(Rejected):
    status_code = 403
    code = "csrf_refused"


@dataclass(frozen=True)
class Viewer:
    """Who is looking: a browser session (with its CSRF token) or a bearer-token client."""

    csrf: str | None  # None for bearer clients


# -- sessions -----------------------------------------------------------------------------------------


def _key(request: Request) -> bytes | None:
    token = request.app.state.settings.admin_token
    if token is None:
        return None  # no admin token, no UI: never open because configuration is missing
    return hmac.new(token.get_secret_value().encode(), b"codat-relay ui session v1", hashlib.sha256).digest()


def _sign(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def _now(request: Request) -> float:
    return float(request.app.state.runtime.clock.now())


def new_session(key: bytes, now: float, nonce: str | None = None) -> str:
    body = f"{int(now) + SESSION_TTL_S}.{nonce or secrets.token_urlsafe(18)}"
    return f"{body}.{_sign(key, 'session.' + body)}"


def session_nonce(key: bytes, value: str | None, now: float) -> str | None:
    """The nonce of a well-signed, unexpired session cookie; None otherwise (the server's row is not asked)."""
    expires, _, rest = (value or "").partition(".")
    nonce, _, signature = rest.partition(".")
    if not expires.isdigit() or not nonce or not signature:
        return None
    if not hmac.compare_digest(signature, _sign(key, f"session.{expires}.{nonce}")) or int(expires) <= now:
        return None
    return nonce


def session_csrf(key: bytes, value: str | None, now: float) -> str | None:
    """The CSRF token of a well-signed, unexpired session cookie; None otherwise."""
    nonce = session_nonce(key, value, now)
    return None if nonce is None else _sign(key, "csrf." + nonce)


async def _live_nonce(request: Request) -> str | None:
    """The session's nonce if its cookie is well signed AND the server still holds it (not logged out)."""
    key = _key(request)
    nonce = None if key is None else session_nonce(key, request.cookies.get(COOKIE), _now(request))
    if nonce is None or not await sessions.is_live(request.app.state.runtime.engine, nonce, _now(request)):
        return None
    return nonce


async def _viewer(request: Request) -> Viewer | None:
    if "authorization" in request.headers:
        check_bearer(request, request.app.state.settings.admin_token)  # a wrong token is a 401, not a login page
        return Viewer(csrf=None)
    key, nonce = _key(request), await _live_nonce(request)
    return None if key is None or nonce is None else Viewer(csrf=_sign(key, "csrf." + nonce))


def _safe_next(value: str | None) -> str:
    """Only our own pages: an attacker's link must not bounce a logged-in operator elsewhere."""
    if value and value.startswith("/ui") and "//" not in value and "\\" not in value:
        return value
    return "/ui"


def _to_login(request: Request, back_to: str | None = None) -> Response:
    """To the login form, which then returns to `back_to` (default: the page asked for)."""
    target = _safe_next(request.url.path if back_to is None else back_to)
    return RedirectResponse(f"/ui/login?next={quote(target, safe='/')}", 303)


async def _form(request: Request) -> dict[str, str]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise InvalidForm("form too large")
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if body and kind != "application/x-www-form-urlencoded":  # an empty POST is an empty form (curl -X POST)
        raise InvalidForm("expected an HTML form (application/x-www-form-urlencoded)")
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidForm("unreadable form") from exc
    return {name: values[0] for name, values in fields.items()}


class InvalidForm(Rejected):
    status_code = 422
    code = "invalid_request"


def _check_csrf(viewer: Viewer, form: dict[str, str]) -> None:
    if viewer.csrf is not None and not hmac.compare_digest(form.get("csrf", "").encode(), viewer.csrf.encode()):
        raise CsrfRefused("the form's security token is missing or stale: reload the page and try again")


def _https(request: Request) -> bool:
    # Behind a TLS-terminating proxy the app sees http; a spoofed header only makes the cookie stricter.
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "") == "https"


# -- pages ----------------------------------------------------------------------------------------------


def render(name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(templates.get_template(name).render(**context), status_code, headers=SECURITY_HEADERS)


def _error_page(exc: Rejected, viewer: Viewer | None) -> HTMLResponse:
    return render("error.html", exc.status_code, viewer=viewer, code=exc.code, detail=exc.detail)


async def login_page(request: Request) -> Response:
    if await _viewer(request) is not None:
        return RedirectResponse(_safe_next(request.query_params.get("next")), 303)
    flash = FLASHES.get(request.query_params.get("flash", ""))
    return render("login.html", viewer=None, next=_safe_next(request.query_params.get("next")), flash=flash)


async def login(request: Request) -> Response:
    form = await _form(request)
    target, token, key = _safe_next(form.get("next")), form.get("token", "").strip(), _key(request)
    if not token:
        return render("login.html", 422, viewer=None, next=target, error="Enter the admin token.")
    throttle, client, now = throttled(request)
    try:
        if throttle is not None:
            throttle.check(client, now)  # checked before the token: a blocked guesser learns nothing
    except TooManyAttempts as exc:
        page = render("login.html", 429, viewer=None, next=target, error="Too many wrong tokens: wait, then retry.")
        page.headers.update(exc.headers)
        return page
    expected = request.app.state.settings.admin_token
    if key is None or expected is None or not hmac.compare_digest(token.encode(), expected.get_secret_value().encode()):
        if throttle is not None:
            throttle.failed(client, now)
        return render("login.html", 401, viewer=None, next=target, error="That is not the admin token.")
    nonce = secrets.token_urlsafe(18)
    await sessions.start(request.app.state.runtime.engine, nonce, now, float(int(now) + SESSION_TTL_S))
    response = RedirectResponse(target, 303)
    response.set_cookie(COOKIE, new_session(key, now, nonce), max_age=SESSION_TTL_S, path="/ui",
                        httponly=True, samesite="strict", secure=_https(request))  # fmt: skip
    return response


async def logout(request: Request) -> Response:
    viewer = await _viewer(request)
    if viewer is not None:
        _check_csrf(viewer, await _form(request))
        if (nonce := await _live_nonce(request)) is not None:
            await sessions.end(request.app.state.runtime.engine, nonce)  # the cookie is dead on the server too
    response = RedirectResponse("/ui/login?flash=logged_out", 303)
    response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict", secure=_https(request))
    return response


async def overview_page(request: Request) -> Response:
    if (viewer := await _viewer(request)) is None:
        return _to_login(request)
    try:
        query = company_query(request)
    except Rejected as exc:
        return _error_page(exc, viewer)
    runtime = request.app.state.runtime
    data = await ui_data.overview(runtime.engine, query, runtime.clock.now())
    flash = FLASHES.get(request.query_params.get("flash", ""))
    filters = {k: v for k, v in request.query_params.items() if k in ("search", "failing", "paused", "problem") and v}
    here = "/ui" + (f"?{urlencode(filters)}" if filters else "")
    next_page = f"/ui?{urlencode({**filters, 'cursor': data.next_cursor})}" if data.next_cursor else None
    return render("overview.html", viewer=viewer, data=data, flash=flash, here=here, filters=filters,
                  problem_kinds=PROBLEM_KINDS, next_page=next_page, failing=data.failing_total)  # fmt: skip


async def company_page(request: Request) -> Response:
    if (viewer := await _viewer(request)) is None:
        return _to_login(request)
    try:
        company_id = path_id(request, "company_id", "company")
    except NotFound as exc:
        return _error_page(exc, viewer)
    runtime = request.app.state.runtime
    page = await ui_data.company_page(runtime.engine, company_id, runtime.clock.now())
    if page is None:
        return _error_page(NotFound(f"codat-relay knows no company {company_id}"), viewer)
    flash = FLASHES.get(request.query_params.get("flash", ""))
    return render("company.html", viewer=viewer, page=page, c=page.health, flash=flash, here=request.url.path)


async def _button(request: Request) -> tuple[Viewer, dict[str, str]] | Response:
    """A button's POST: the viewer (CSRF checked) and its form, or where to send a signed-out browser."""
    if (viewer := await _viewer(request)) is None:
        # The button's own URL answers POST only: after logging in, go back to the page it was on.
        try:
            back_to = (await _form(request)).get("next") or "/ui"
        except InvalidForm:
            back_to = "/ui"
        return _to_login(request, back_to)
    form = await _form(request)
    _check_csrf(viewer, form)
    return viewer, form


def _back(form: dict[str, str], flash: str) -> Response:
    target = _safe_next(form.get("next"))
    return RedirectResponse(f"{target}{'&' if '?' in target else '?'}flash={flash}", 303)


async def replay_button(request: Request) -> Response:
    checked = await _button(request)
    if isinstance(checked, Response):
        return checked
    viewer, form = checked
    runtime = request.app.state.runtime
    try:
        alert_id = path_id(request, "alert_id", "alert")
    except NotFound as exc:
        return _error_page(exc, viewer)
    if not await replay_alert(runtime.engine, alert_id, runtime.clock.now()):
        return _error_page(NotFound(f"no alert {alert_id}"), viewer)
    runtime.wake_workers()
    return _back(form, "replayed")


async def retry_button(request: Request) -> Response:
    checked = await _button(request)
    if isinstance(checked, Response):
        return checked
    viewer, form = checked
    runtime = request.app.state.runtime
    try:
        await retry_dead_job(runtime.engine, request.path_params["job_id"], runtime.clock.now())
    except NotFound as exc:
        return _error_page(exc, viewer)
    except Rejected:  # not dead (any more): someone else got there first
        return _back(form, "not_dead")
    runtime.wake_workers()
    return _back(form, "retried")


async def ack_button(request: Request) -> Response:
    checked = await _button(request)
    if isinstance(checked, Response):
        return checked
    viewer, form = checked
    runtime = request.app.state.runtime
    try:
        problem_id = path_id(request, "problem_id", "problem")
    except NotFound as exc:
        return _error_page(exc, viewer)
    async with writer(runtime.engine).begin() as conn:
        row = await problems.acknowledge(conn, problem_id, ACK_BY, runtime.clock.now())
    if row is None:
        return _error_page(NotFound(f"no problem {problem_id}"), viewer)
    return _back(form, "acknowledged")


async def company_action(request: Request) -> Response:
    """A company page's button: pause, resume, full re-push or sync latest, each confirmed in its form."""
    checked = await _button(request)
    if isinstance(checked, Response):
        return checked
    viewer, form = checked
    runtime = request.app.state.runtime
    action = request.path_params["action"]
    try:
        company_id = path_id(request, "company_id", "company")
        if action not in ACTIONS:
            raise NotFound(f"no action {action}")
        if form.get("confirm") != "yes":
            raise InvalidForm("tick the confirmation box to do this")
    except Rejected as exc:
        return _error_page(exc, viewer)
    now = runtime.clock.now()
    if action == "pause":
        done, flash = await pause_company(runtime.engine, company_id, now), "paused"
    elif action == "resume":
        done, flash = await resume_company(runtime.engine, company_id, now), "resumed"
    elif action == "repush":
        try:
            await full_repush(runtime.engine, company_id, list(MODELS), now)
            done, flash = True, "repushed"
        except NotFound:
            done, flash = False, ""
    else:
        done, flash = True, await _sync_latest(runtime, company_id)
    if not done:
        return _error_page(NotFound(f"codat-relay knows no company {company_id}"), viewer)
    runtime.wake_workers()
    return _back(form, flash)


async def _sync_latest(runtime: Any, company_id: str) -> str:
    if runtime.codat is None:
        return "sync_refused"
    try:
        await syncs.sync_latest(runtime.codat, company_id,
                                follow=lambda company, kind, summary: follow_sync(
                                    runtime.engine, company, runtime.clock.now(), started=(kind, summary)))
    except CodatError:
        return "sync_refused"
    return "sync_requested"


def _pages(endpoint: Endpoint) -> Endpoint:
    """Rejections on /ui read as pages, not JSON; bearer clients (curl) keep the API's JSON errors."""

    @wraps(endpoint)
    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Rejected as exc:
            if "authorization" in request.headers:
                raise
            return _error_page(exc, None)

    return wrapped


def routes() -> list[BaseRoute]:
    return [
        Route("/ui", _pages(overview_page), methods=["GET"]),
        Route("/ui/login", _pages(login_page), methods=["GET"]),
        Route("/ui/login", _pages(login), methods=["POST"]),
        Route("/ui/logout", _pages(logout), methods=["POST"]),
        Route("/ui/companies/{company_id:path}", _pages(company_page), methods=["GET"]),
        Route("/ui/alerts/{alert_id:path}/replay", _pages(replay_button), methods=["POST"]),
        Route("/ui/actions/{action}/{company_id:path}", _pages(company_action), methods=["POST"]),
        Route("/ui/jobs/{job_id:int}/retry", _pages(retry_button), methods=["POST"]),
        Route("/ui/problems/{problem_id}/ack", _pages(ack_button), methods=["POST"]),
    ]
