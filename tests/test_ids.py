"""The id rule (service/ids.py) at every endpoint that takes an id: never a 500, never another resource.

Ids over 255 characters name nothing (404 in a path); `.`, `..`, control characters (NUL among them) and
invalid UTF-8 are refused as invalid input (422). Every family of endpoints runs on both backends.
"""

from __future__ import annotations

import httpx
import pytest

from service.ids import could_exist, path_segment
from service.testing import running_app
from tests.conftest import ADMIN_TOKEN, API_TOKEN, make_settings

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
IMPOSSIBLE = ["c" * 256]  # as it appears in a URL: could be an id, but none is stored that long
# As they appear in a URL: what the id rule refuses. `%2E` is how a client keeps a `.` segment literal.
REFUSED = ["%00", "a%00b", "%2E", "%2E%2E", "co%0A1", "a%09b", "%FF%FE", "co%C3"]
REFUSED_IDS = ["nul", "inner-nul", "dot", "dotdot", "newline", "tab", "invalid-utf8", "truncated-utf8"]
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
    """255 characters the rule allows could be an id; 256, a dot segment or any control character could not."""
    assert could_exist("a" * 255) and could_exist("co-1") and could_exist("") and could_exist("a.b/../c")
    assert not could_exist("a" * 256) and not could_exist("\x00") and not could_exist("ab\x00")
    assert not any(could_exist(bad) for bad in (".", "..", "co\n1", "a\tb", "\x7f", "\x85", "\ufffd"))
    assert could_exist("k" * 64, 64) and not could_exist("k" * 65, 64)


@pytest.mark.parametrize(
    ("value", "segment"),
    [("co-1", "co-1"), (".", "%2E"), ("..", "%2E%2E"), ("a/../b", "a%2F..%2Fb"), ("zzz/../victim", "zzz%2F..%2Fvictim"),
     ("a?b#c%d", "a%3Fb%23c%25d"), ("é", "%C3%A9")],
)  # fmt: skip
def test_every_id_is_one_path_segment(value: str, segment: str) -> None:
    """`path_segment` encodes an id so that no URL resolver can read it as more, or other, than one segment."""
    assert path_segment(value) == segment


@pytest.mark.parametrize("bad", REFUSED, ids=REFUSED_IDS)
async def test_ids_the_rule_refuses_answer_422_everywhere(database_url: str, bad: str) -> None:
    """Every endpoint taking a company or alert id (API and page) answers a refused id 422 saying why."""
    calls: list[tuple[str, str, object]] = [
        ("GET", f"/v1/companies/{bad}", None),
        ("POST", f"/v1/companies/{bad}/pause", None),
        ("POST", f"/v1/companies/{bad}/repush", None),
        ("POST", f"/v1/companies/{bad}/sync/latest", {}),
        ("GET", f"/v1/companies/{bad}/sync/status", None),
        ("GET", f"/v1/alerts/{bad}", None),
        ("POST", f"/v1/alerts/{bad}/replay", None),
        ("GET", f"/v1/alerts?companyId={bad}", None),
    ]
    async with running_app(make_settings(database_url)) as (_, client):
        got = await answers(client, calls)
        intake = await client.put(f"/v1/companies/{bad}/records/orders", json={"records": []},
                                  headers={"authorization": f"Bearer {API_TOKEN}"})  # fmt: skip
        page = await client.get(f"/ui/companies/{bad}", headers=ADMIN)
    # Starlette's `path` convertor stops at a line break, so alert routes never match one (nothing with
    # one is stored any more: deliveries with such an id are refused at intake).
    expected = [(url[:60], 404, "not_found") if bad == "co%0A1" and "/alerts/" in url else (url[:60], 422,
                "invalid_request") for _, url, _ in calls]  # fmt: skip
    assert got == expected
    assert (intake.status_code, intake.json()["error"]) == (422, "invalid_request")
    assert intake.json()["detail"].startswith("companyId: ")
    assert page.status_code == (404 if bad == "co%0A1" else 422)  # bearer: JSON; a browser: the error page


@pytest.mark.parametrize("bad", IMPOSSIBLE, ids=["long"])
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


@pytest.mark.parametrize("bad", IMPOSSIBLE, ids=["long"])
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
    assert (listed.status_code, listed.json()) == (200, {"results": [], "nextCursor": None})
    assert (jobs.status_code, jobs.json()) == (200, {"results": []})


@pytest.mark.parametrize("bad", IMPOSSIBLE, ids=["long"])
async def test_ui_company_page_and_replay_button_answer_404(database_url: str, bad: str) -> None:
    """/ui/companies/{id} and the Replay button of an impossible id show the 404 page."""
    async with running_app(make_settings(database_url)) as (_, client):
        page = await client.get(f"/ui/companies/{bad}", headers=ADMIN)
        button = await client.post(f"/ui/alerts/{bad}/replay", headers=ADMIN)
    assert (page.status_code, button.status_code) == (404, 404)
    assert "text/html" in page.headers["content-type"] and "not_found" in page.text


async def test_webhook_ids_follow_the_rule_and_the_replay_form_keeps_one_segment(database_url: str) -> None:
    """A delivery id with a line break is refused (400); a company id `..` makes the delivery `other`; an alert id
    `zzz/../victim` is stored, and its Replay form posts to that alert, not to `victim`."""
    import json

    from service.testing import connection_deleted_body, legacy_body
    from tests.conftest import TEST_AUTH_HEADER

    legacy = {"authorization": TEST_AUTH_HEADER}
    async with running_app(make_settings(database_url)) as (_, client):
        newline = await client.post("/webhooks/codat", content=json.dumps(legacy_body(AlertId="a\nb")), headers=legacy)
        dotdot = connection_deleted_body()
        dotdot["payload"]["referenceCompany"]["id"] = ".."
        other = await client.post("/webhooks/codat", content=json.dumps(dotdot), headers=legacy)
        # An event the relay does not act on ends `ignored`, one of the statuses the page offers Replay for.
        unhandled = legacy_body("Company Data Changed", AlertId="zzz/../victim")
        sneaky = await client.post("/webhooks/codat", content=json.dumps(unhandled), headers=legacy)
        page = await client.get("/ui", headers=ADMIN)
    assert (newline.status_code, newline.json()["error"]) == (400, "malformed_payload")
    assert (other.status_code, other.json()["status"]) == (200, "ignored")  # stored as kind `other`
    assert (sneaky.status_code, sneaky.json()["status"]) == (200, "ignored")
    assert 'action="/ui/alerts/zzz%2F..%2Fvictim/replay"' in page.text
    assert "/ui/alerts/zzz/../victim" not in page.text


def test_the_control_character_rule_is_unicode_category_cc() -> None:
    """The id rule's fast control-character search refuses exactly Unicode's category Cc, over every code point."""
    import sys
    import unicodedata

    from service.ids import id_problem

    refused = {c for c in range(sys.maxunicode + 1) if id_problem(f"a{chr(c)}b") is not None}
    control = {c for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Cc"}
    assert refused == control | {0xFFFD}  # U+FFFD is refused too: the mark of undecodable bytes
