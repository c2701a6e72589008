"""Ids from URLs that no stored company or alert can have (NUL, over 255 characters): 404 or 422, never a 500.

PostgreSQL refuses a NUL in text and the key columns are VARCHAR(255), so these used to fail the query.
Every family of endpoints that takes a company or alert id runs on both backends.
"""

from __future__ import annotations

import httpx
import pytest

from service.ids import could_exist
from service.testing import running_app
from tests.conftest import ADMIN_TOKEN, make_settings

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
IMPOSSIBLE = ["%00", "a%00b", "c" * 256]  # as they appear in a URL
HISTORIC = {"start": "2024-01-01T00:00:00Z", "end": "2024-02-01T00:00:00Z"}


async def answers(client: httpx.AsyncClient, calls: list[tuple[str, str, object]]) -> list[tuple[str, int, str]]:
    out = []
    for method, url, body in calls:
        response = await client.request(method, url, json=body, headers=ADMIN)
        is_json = response.headers["content-type"].startswith("application/json")
        error = response.json().get("error", "") if is_json else ""
        out.append((url[:60], response.status_code, error))
    return out


def test_what_could_exist() -> None:
    """255 characters without NUL could be an id; 256, or any NUL, could not."""
    assert could_exist("a" * 255) and could_exist("co-1") and could_exist("")
    assert not could_exist("a" * 256) and not could_exist("\x00") and not could_exist("ab\x00")
    assert could_exist("k" * 64, 64) and not could_exist("k" * 65, 64)


@pytest.mark.parametrize("bad", IMPOSSIBLE, ids=["nul", "inner-nul", "long"])
async def test_company_endpoints_answer_404(database_url: str, bad: str) -> None:
    """GET, pause, resume, repush and the three sync endpoints of an impossible company id are 404 not_found."""
    calls: list[tuple[str, str, object]] = [
        ("GET", f"/v1/companies/{bad}", None),
        ("POST", f"/v1/companies/{bad}/pause", None),
        ("POST", f"/v1/companies/{bad}/resume", None),
        ("POST", f"/v1/companies/{bad}/repush", None),
        ("POST", f"/v1/companies/{bad}/sync/latest", {}),
        ("POST", f"/v1/companies/{bad}/sync/historic", HISTORIC),
        ("GET", f"/v1/companies/{bad}/sync/status", None),
    ]
    async with running_app(make_settings(database_url)) as (_, client):
        got = await answers(client, calls)
    assert got == [(url[:60], 404, "not_found") for _, url, _ in calls]


@pytest.mark.parametrize("bad", IMPOSSIBLE, ids=["nul", "inner-nul", "long"])
async def test_alert_endpoints_answer_404(database_url: str, bad: str) -> None:
    """GET and replay of an impossible alert id are 404 not_found."""
    calls: list[tuple[str, str, object]] = [
        ("GET", f"/v1/alerts/{bad}", None),
        ("POST", f"/v1/alerts/{bad}/replay", None),
    ]
    async with running_app(make_settings(database_url)) as (_, client):
        got = await answers(client, calls)
    assert got == [(url[:60], 404, "not_found") for _, url, _ in calls]


@pytest.mark.parametrize(
    ("url", "field"),
    [("/v1/alerts?companyId=%00", "companyId"), ("/v1/alerts?companyId=" + "c" * 256, "companyId"),
     ("/v1/jobs?kind=%00", "kind"), ("/v1/jobs?kind=" + "k" * 65, "kind")],
    ids=["alerts-nul", "alerts-long", "jobs-nul", "jobs-long"],
)  # fmt: skip
async def test_query_filters_answer_422_naming_the_parameter(database_url: str, url: str, field: str) -> None:
    """A filter no stored row could match is invalid input: 422 with a detail that starts with its name."""
    async with running_app(make_settings(database_url)) as (_, client):
        response = await client.get(url, headers=ADMIN)
    assert (response.status_code, response.json()["error"]) == (422, "invalid_request")
    assert response.json()["detail"].startswith(f"{field}: ")


async def test_possible_ids_still_reach_the_database(database_url: str) -> None:
    """The check lets ordinary and 255-character ids through: they are simply unknown (404) or match nothing."""
    async with running_app(make_settings(database_url)) as (_, client):
        company = await client.get(f"/v1/companies/{'c' * 255}", headers=ADMIN)
        listed = await client.get(f"/v1/alerts?companyId={'c' * 255}", headers=ADMIN)
        jobs = await client.get(f"/v1/jobs?kind={'k' * 64}", headers=ADMIN)
    assert company.status_code == 404 and company.json()["detail"] == f"no company {'c' * 255}"
    assert (listed.status_code, listed.json()) == (200, {"results": []})
    assert (jobs.status_code, jobs.json()) == (200, {"results": []})


@pytest.mark.parametrize("bad", IMPOSSIBLE, ids=["nul", "inner-nul", "long"])
async def test_ui_company_page_and_replay_button_answer_404(database_url: str, bad: str) -> None:
    """/ui/companies/{id} and the Replay button of an impossible id show the 404 page."""
    async with running_app(make_settings(database_url)) as (_, client):
        page = await client.get(f"/ui/companies/{bad}", headers=ADMIN)
        button = await client.post(f"/ui/alerts/{bad}/replay", headers=ADMIN)
    assert (page.status_code, button.status_code) == (404, 404)
    assert "text/html" in page.headers["content-type"] and "not_found" in page.text
