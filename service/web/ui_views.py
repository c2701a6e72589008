"""Sync Health pages beyond the overview and a company: an alert, the notifications, the activity charts.

Sessions, CSRF and rendering are ui.py's; the pages here only read. Their one script (local and
relative times, the auto-refresh toggle) is a static file, so the CSP keeps refusing inline scripts.
"""

from __future__ import annotations

from importlib import resources
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from handlers import REGISTRY
from service.alert_search import AlertSearch, BadSearch, search_alerts
from service.errors import InvalidRequest, NotFound, Rejected
from service.ids import path_id, path_segment, query_id
from service.notifications import Kind
from service.types import AlertKind, AlertStatus
from service.web import ui, ui_charts, ui_data

SEVERITIES = ("warning", "critical")
SCRIPT = resources.files("service.web").joinpath("static/ui.js").read_bytes()
SCRIPT_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def handler_name(kind: str) -> str | None:
    """The handler that `handlers.REGISTRY` maps this kind to, as `module.function`; None when none does."""
    try:
        handler = REGISTRY.get(AlertKind(kind))
    except ValueError:  # a kind this version does not know
        return None
    return None if handler is None else f"{handler.__module__}.{handler.__name__}"


async def alert_page(request: Request) -> Response:
    if (viewer := await ui._viewer(request)) is None:
        return ui._to_login(request)
    try:
        alert_id = path_id(request, "alert_id", "alert")
    except NotFound as exc:
        return ui._error_page(exc, viewer)
    page = await ui_data.alert_page(request.app.state.runtime.engine, alert_id)
    if page is None:
        return ui._error_page(NotFound(f"no alert {alert_id}"), viewer)
    flash = ui.FLASHES.get(request.query_params.get("flash", ""))
    here = "/ui/alerts/" + path_segment(alert_id)
    row = page.row
    return ui.render("alert.html", viewer=viewer, page=page, a=row, flash=flash, here=here,
                     handler=handler_name(row["kind"]), outcome=ui_data.OUTCOMES.get(row["status"]))  # fmt: skip


ALERT_FILTERS = ("q", "company", "dataset", "delivery", "type", "kind", "status")
ALERTS_PER_PAGE = 50


def _alert_search(request: Request) -> AlertSearch:
    params = request.query_params
    kind, status = params.get("kind") or None, params.get("status") or None
    if kind is not None and kind not in {k.value for k in AlertKind}:
        raise InvalidRequest(f"kind: one of {', '.join(k.value for k in AlertKind)}")
    if status is not None and status not in {s.value for s in AlertStatus}:
        raise InvalidRequest(f"status: one of {', '.join(s.value for s in AlertStatus)}")
    return AlertSearch(
        q=params.get("q") or None, company=query_id(request, "company"), dataset=query_id(request, "dataset"),
        delivery=query_id(request, "delivery"), type=query_id(request, "type"), kind=kind, status=status,
        limit=ALERTS_PER_PAGE, cursor=params.get("cursor") or None,
    )


async def alerts_page(request: Request) -> Response:
    """The alerts, searched: text in the body and the exact filters of `GET /v1/alerts`, newest first."""
    if (viewer := await ui._viewer(request)) is None:
        return ui._to_login(request)
    try:
        search = _alert_search(request)
        page = await search_alerts(request.app.state.runtime.engine, search)
    except BadSearch as exc:
        return ui._error_page(InvalidRequest(str(exc)), viewer)
    except Rejected as exc:
        return ui._error_page(exc, viewer)
    filters = {k: v for k, v in request.query_params.items() if k in ALERT_FILTERS and v}
    here = "/ui/alerts" + (f"?{urlencode(filters)}" if filters else "")
    older = f"/ui/alerts?{urlencode({**filters, 'cursor': page.next_cursor})}" if page.next_cursor else None
    return ui.render("alerts.html", viewer=viewer, rows=page.rows, filters=filters, here=here, older=older,
                     kinds=[k.value for k in AlertKind], statuses=[s.value for s in AlertStatus])  # fmt: skip


def _notification_query(request: Request) -> ui_data.NotificationQuery:
    params = request.query_params
    kind, severity = params.get("kind") or None, params.get("severity") or None
    if kind is not None and kind not in {k.value for k in Kind}:
        raise InvalidRequest(f"kind: one of {', '.join(k.value for k in Kind)}")
    if severity is not None and severity not in SEVERITIES:
        raise InvalidRequest(f"severity: one of {', '.join(SEVERITIES)}")
    try:
        before = ui_data.decode_before(params["before"]) if params.get("before") else None
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    return ui_data.NotificationQuery(kind, severity, query_id(request, "company"), before)


async def notifications_page(request: Request) -> Response:
    if (viewer := await ui._viewer(request)) is None:
        return ui._to_login(request)
    try:
        query = _notification_query(request)
    except Rejected as exc:
        return ui._error_page(exc, viewer)
    data = await ui_data.notifications_page(request.app.state.runtime.engine, query)
    filters = {k: v for k, v in request.query_params.items() if k in ("kind", "severity", "company") and v}
    older = f"/ui/notifications?{urlencode({**filters, 'before': data.next_before})}" if data.next_before else None
    return ui.render("notifications.html", viewer=viewer, data=data, filters=filters, kinds=[k.value for k in Kind],
                     severities=SEVERITIES, older=older)  # fmt: skip


async def activity_page(request: Request) -> Response:
    if (viewer := await ui._viewer(request)) is None:
        return ui._to_login(request)
    name = request.query_params.get("window") or ui_charts.DEFAULT_WINDOW
    if name not in ui_charts.WINDOWS:
        return ui._error_page(InvalidRequest(f"window: one of {', '.join(ui_charts.WINDOWS)}"), viewer)
    runtime = request.app.state.runtime
    data = await ui_charts.activity(runtime.engine, ui_charts.WINDOWS[name], runtime.clock.now())
    return ui.render("activity.html", viewer=viewer, data=data, charts=ui_charts.charts(data),
                     windows=ui_charts.WINDOWS, utc=ui_charts.utc)  # fmt: skip


async def script(_request: Request) -> Response:
    # Public like any static asset: it holds no data, and the login page's CSP allows it from 'self' only.
    return Response(SCRIPT, media_type="text/javascript", headers=SCRIPT_HEADERS)


def routes() -> list[BaseRoute]:
    return [
        Route("/ui/static/ui.js", script, methods=["GET"]),
        Route("/ui/notifications", ui._pages(notifications_page), methods=["GET"]),
        Route("/ui/activity", ui._pages(activity_page), methods=["GET"]),
        Route("/ui/alerts", ui._pages(alerts_page), methods=["GET"]),
        Route("/ui/alerts/{alert_id:path}", ui._pages(alert_page), methods=["GET"]),
    ]
