"""/openapi.json describes every intake and admin route the app serves, and nothing it does not."""

from __future__ import annotations

import re

from starlette.routing import Route

from service.testing import running_app
from service.web.app import create_app
from service.web.openapi import document
from tests.conftest import make_settings


def served() -> set[tuple[str, str]]:
    app = create_app(make_settings())
    out = set()
    for route in app.routes:
        if isinstance(route, Route) and route.path.startswith("/v1/"):
            path = re.sub(r"\{(\w+)(:\w+)?\}", lambda m: "{" + {"company_id": "companyId", "alert_id": "alertId",
                                                                     "data_type": "dataType", "job_id": "jobId"}
                          .get(m.group(1), m.group(1)) + "}", route.path)
            out |= {(path, method.lower()) for method in (route.methods or ()) if method != "HEAD"}
    return out


def test_every_served_route_is_documented_and_vice_versa() -> None:
    documented = {(path, method) for path, ops in document()["paths"].items() for method in ops}
    assert documented == served()


def test_every_operation_names_its_token_and_the_401() -> None:
    for path, ops in document()["paths"].items():
        for method, op in ops.items():
            assert op["security"] and "401" in op["responses"], (path, method)


async def test_openapi_json_is_served_without_a_token() -> None:
    async with running_app(make_settings()) as (_, client):
        response = await client.get("/openapi.json")
    assert response.status_code == 200 and response.json()["openapi"].startswith("3.")
