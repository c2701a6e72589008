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
                                                                     "data_type": "dataType", "job_id": "jobId",
                                                                     "problem_id": "problemId", "run_id": "runId"}
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


def test_records_are_codats_schemas_generated_from_the_intake_models() -> None:
    """Order, Payment, Transaction with every field (not bare `object`), date-times marked, samples valid."""
    from service.records import MODELS
    from service.samples import SAMPLES

    doc = document()
    schemas = doc["components"]["schemas"]
    for model in MODELS.values():
        assert set(schemas[model.__name__]["properties"]) == set(model.model_fields)
        assert schemas[model.__name__]["additionalProperties"] is False
    assert schemas["Order"]["properties"]["createdDate"] == {"type": "string", "format": "date-time"}
    body = doc["paths"]["/v1/companies/{companyId}/records/{dataType}"]["put"]["requestBody"]["content"]
    examples = body["application/json"]["examples"]
    for data_type, model in zip(("orders", "payments", "transactions"), MODELS.values(), strict=True):
        model.model_validate(examples[data_type]["value"]["records"][0])
        assert examples[data_type]["value"]["records"][0] == SAMPLES[data_type]
    company = schemas["Company"]
    assert {"connection", "lastSync", "records", "recentDatasets", "failing", "problems"} <= set(company["properties"])


async def test_docs_are_served_from_the_installed_package_and_the_index_points_at_them() -> None:
    """/docs loads Swagger UI from this origin only (no CDN); / sends a browser to the page, a client to an index."""
    async with running_app(make_settings()) as (_, client):
        page = await client.get("/docs")
        assets = [await client.get(path) for path in re.findall(r'(?:src|href)="(/docs/[^"]+)"', page.text)]
        browser = await client.get("/", headers={"accept": "text/html"})
        index = await client.get("/")
    assert page.status_code == 200 and "https://" not in page.text and "http://" not in page.text
    assert len(assets) >= 3 and all(a.status_code == 200 for a in assets)
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert browser.status_code == 303 and browser.headers["location"] == "/ui"
    assert index.json()["links"]["docs"] == "/docs"
