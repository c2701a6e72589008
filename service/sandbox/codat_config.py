"""Sync for Commerce's company configuration: `get-configuration` and `set-configuration`
(`/config/companies/{companyId}/sync/commerce`, sync-commerce-current.json). See schedule.py."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.sandbox.codat_api import BadRequest, json_body
from service.sandbox.edge import Operation, Sandbox, codat_route
from service.sandbox.schedule import BadSchedule, apply_schedule, configuration_json


async def get_configuration(request: Request, sandbox: Sandbox) -> Response:
    return JSONResponse(configuration_json(sandbox.state.company(request.path_params["companyId"])))


async def set_configuration(request: Request, sandbox: Sandbox) -> Response:
    """The spec documents no request body, and Codat's SDK (codat-sync-for-commerce 6.1.0) sends none: an
    empty body changes nothing and answers the configuration; a `Configuration` body's `schedule` is applied."""
    company = sandbox.state.company(request.path_params["companyId"])
    try:
        body = await json_body(request, optional=True)
        if not isinstance(body, dict):
            raise BadRequest("The request body must be a Configuration object")
        schedule = body.get("schedule")
        if schedule is not None and not isinstance(schedule, dict):
            raise BadRequest("'schedule' must be an object")
        if schedule is not None:
            apply_schedule(company, schedule, sandbox.state.now())
    except BadSchedule as exc:
        return BadRequest(str(exc)).response()
    except BadRequest as exc:
        return exc.response()
    if body.get("enable") is False:
        company.configured = False
    return JSONResponse(configuration_json(company))


ROUTES = [
    codat_route("/config/companies/{companyId}/sync/commerce", {
        "GET": Operation("get_configuration", get_configuration),
        "POST": Operation("set_configuration", set_configuration),
    }),
]  # fmt: skip
