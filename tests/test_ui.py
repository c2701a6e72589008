"""The Sync Health pages (`/ui`): login and sessions, CSRF, what the pages show, the Replay buttons."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service.clock import FixedClock
from service.db import alerts, create_engine, jobs, writer
from service.notifications import Kind, Notification, Notifier
from service.testing import running_app
from service.web import ui, ui_data
from service.web.ui_data import CompanyHealth
from tests import ui_factories as f
from tests.conftest import ADMIN_TOKEN, API_TOKEN, make_settings

NOW = 1_750_000_000.0
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


@asynccontextmanager
async def seeded(database_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, AsyncEngine, FixedClock, dict[str, int]]]:
    """The app (no workers: states stay where the buttons put them) over `ui_factories.world`."""
    engine = create_engine(make_settings(database_url))
    async with engine.begin() as conn:
        ids = await conn.run_sync(f.world, NOW)
    clock = FixedClock(NOW + 60)
    try:
        async with running_app(make_settings(database_url), clock=clock) as (_, client):
            yield client, engine, clock, ids
    finally:
        await engine.dispose()


async def log_in(client: httpx.AsyncClient) -> str:
    """Sign in through the form; returns the page's CSRF token."""
    response = await client.post("/ui/login", data={"token": ADMIN_TOKEN, "next": "/ui"})
    assert response.status_code == 303 and response.headers["location"] == "/ui"
    return csrf_of((await client.get("/ui")).text)


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
    assert found is not None, "no CSRF field on the page"
    return found.group(1)


def next_of(login_page: str) -> str:
    found = re.search(r'name="next" value="([^"]*)"', login_page)
    assert found is not None, "no next field on the login form"
    return found.group(1)


def company_row(page: str, company_id: str) -> str:
    found = re.search(rf'<tr class="company[^"]*" data-company-id="{company_id}".*?</tr>', page, re.S)
    assert found is not None, f"no row for {company_id}"
    return found.group(0)


async def status_of(engine: AsyncEngine, table: sa.Table, key: object) -> str:
    async with engine.connect() as conn:
        return str(await conn.scalar(sa.select(table.c.status).where(table.c.id == key)))


# -- login and sessions ------------------------------------------------------------------------------


async def test_signed_out_browsers_are_sent_to_the_login_page(database_url: str) -> None:
    """/ui and company pages redirect to /ui/login, remembering where the operator was going."""
    async with running_app(make_settings(database_url)) as (_, client):
        overview = await client.get("/ui")
        company = await client.get("/ui/companies/co-1")
        form = await client.get("/ui/login?next=/ui/companies/co-1")
    assert (overview.status_code, overview.headers["location"]) == (303, "/ui/login?next=/ui")
    assert company.headers["location"] == "/ui/login?next=/ui/companies/co-1"
    assert form.status_code == 200 and 'type="password"' in form.text
    assert 'name="next" value="/ui/companies/co-1"' in form.text


async def test_login_sets_a_signed_strict_httponly_cookie_never_the_token(database_url: str) -> None:
    """The cookie is HttpOnly, SameSite=Strict, scoped to /ui, Secure behind https, and holds no token."""
    async with running_app(make_settings(database_url)) as (_, client):
        plain = await client.post("/ui/login", data={"token": ADMIN_TOKEN})
        page = await client.get("/ui")
        tls = await client.post("/ui/login", data={"token": ADMIN_TOKEN}, headers={"x-forwarded-proto": "https"})
    cookie = plain.headers["set-cookie"]
    assert plain.status_code == 303 and cookie.startswith(f"{ui.COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert "Secure" not in cookie and "Secure" in tls.headers["set-cookie"]
    assert ADMIN_TOKEN not in cookie
    assert page.status_code == 200 and "Sync Health" in page.text


@pytest.mark.parametrize(
    ("form", "status", "message"),
    [({"token": "wrong"}, 401, "not the admin token"), ({"token": API_TOKEN}, 401, "not the admin token"),
     ({"token": ""}, 422, "Enter the admin token"), ({}, 422, "Enter the admin token")],
    ids=["wrong", "api-token", "empty", "missing"],
)
async def test_a_bad_token_gets_the_form_again_and_no_cookie(
    database_url: str, form: dict[str, str], status: int, message: str
) -> None:
    async with running_app(make_settings(database_url)) as (_, client):
        response = await client.post("/ui/login", data=form)
        after = await client.get("/ui")
    assert response.status_code == status and message in response.text
    assert "set-cookie" not in response.headers and after.status_code == 303


async def test_a_login_that_is_not_a_form_is_422(database_url: str) -> None:
    async with running_app(make_settings(database_url)) as (_, client):
        response = await client.post("/ui/login", json={"token": ADMIN_TOKEN})
    assert response.status_code == 422 and "set-cookie" not in response.headers


async def test_login_never_redirects_off_the_ui(database_url: str) -> None:
    """`next` pointing elsewhere (another host, a scheme-relative URL) lands on /ui instead."""
    async with running_app(make_settings(database_url)) as (_, client):
        for target in ("https://evil.example/", "//evil.example/ui", "/ui//evil.example", "/metrics"):
            response = await client.post("/ui/login", data={"token": ADMIN_TOKEN, "next": target})
            assert response.headers["location"] == "/ui", target


async def test_forged_and_expired_sessions_are_signed_out(database_url: str) -> None:
    """A cookie with a changed expiry, or one past its 12 hours, sends the browser back to log in."""
    clock = FixedClock(NOW)
    async with running_app(make_settings(database_url), clock=clock) as (_, client):
        await log_in(client)
        value = client.cookies[ui.COOKIE]
        expires, rest = value.split(".", 1)
        client.cookies.set(ui.COOKIE, f"{int(expires) + 10 * ui.SESSION_TTL_S}.{rest}", path="/ui")
        forged = await client.get("/ui")
        client.cookies.set(ui.COOKIE, value, path="/ui")
        clock.advance(ui.SESSION_TTL_S + 1)
        expired = await client.get("/ui")
    assert forged.status_code == expired.status_code == 303


def test_rotating_the_admin_token_ends_every_session() -> None:
    """Sessions are signed with a key derived from the admin token."""
    key = ui.hmac.new(b"token-1", b"k", "sha256").digest()
    other = ui.hmac.new(b"token-2", b"k", "sha256").digest()
    session = ui.new_session(key, NOW)
    assert ui.session_csrf(key, session, NOW) is not None
    assert ui.session_csrf(other, session, NOW) is None
    assert ui.session_csrf(key, "garbage", NOW) is None and ui.session_csrf(key, None, NOW) is None


async def test_curl_reaches_the_ui_with_the_bearer_token(database_url: str) -> None:
    """`Authorization: Bearer <admin token>` works without a cookie; a wrong or API token is 401."""
    async with running_app(make_settings(database_url)) as (_, client):
        ok = await client.get("/ui", headers=ADMIN)
        wrong = await client.get("/ui", headers={"authorization": "Bearer nope"})
        api = await client.get("/ui", headers={"authorization": f"Bearer {API_TOKEN}"})
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/html")
    assert (wrong.status_code, api.status_code) == (401, 401)


async def test_without_an_admin_token_the_ui_is_closed(database_url: str) -> None:
    """No `RELAY_ADMIN_TOKEN`: no token opens the UI (never open because configuration is missing)."""
    async with running_app(make_settings(database_url, admin_token=None)) as (_, client):
        response = await client.post("/ui/login", data={"token": "anything"})
    assert response.status_code == 401 and "set-cookie" not in response.headers


async def test_logout_clears_the_session_and_needs_the_csrf_token(database_url: str) -> None:
    async with running_app(make_settings(database_url)) as (_, client):
        csrf = await log_in(client)
        refused = await client.post("/ui/logout", data={})
        still_in = await client.get("/ui")
        out = await client.post("/ui/logout", data={"csrf": csrf})
        after = await client.get("/ui")
    assert refused.status_code == 403 and still_in.status_code == 200
    assert out.status_code == 303 and out.headers["location"] == "/ui/login?flash=logged_out"
    assert after.status_code == 303


# -- what the pages show --------------------------------------------------------------------------------


async def test_overview_highlights_the_failing_company_first_with_its_reasons(database_url: str) -> None:
    """Failing companies come first, marked `data-failing="true"` and listing why; the healthy one is not."""
    async with seeded(database_url) as (client, _, _, _):
        await log_in(client)
        page = (await client.get("/ui")).text
    failing, healthy = company_row(page, f.FAILING), company_row(page, f.HEALTHY)
    assert page.index(f'data-company-id="{f.FAILING}"') < page.index(f'data-company-id="{f.HEALTHY}"')
    assert 'data-failing="true"' in failing and 'class="company failing"' in failing
    for reason in ("latest orders dataset ended FetchError", "1 dead alert", "2 dead jobs",
                   "last sync 5130: data write error", "1 record conflict"):  # fmt: skip
        assert reason in failing
    assert "payments dataset" not in failing  # its error was cleared by a newer Complete dataset
    assert "5130" in failing and "FetchError 1" in failing and "pending 2" in failing
    assert 'data-failing="false"' in healthy and "healthy" in healthy
    assert "2000" in healthy and "success, data written" in healthy and "synced 3" in healthy
    assert '<b data-testid="failing-count">1</b>' in page


async def test_overview_lists_dead_jobs_and_recent_alerts_with_buttons(database_url: str) -> None:
    async with seeded(database_url) as (client, _, _, ids):
        csrf = await log_in(client)
        page = (await client.get("/ui")).text
    assert f'data-job-id="{ids["push_job"]}"' in page and "CodatAuthError: 401" in page
    assert f'action="/ui/jobs/{ids["alert_job"]}/retry"' in page
    assert f'action="/ui/alerts/{f.DEAD_ALERT}/replay"' in page and 'data-status="dead"' in page
    assert page.index(f'data-alert-id="{f.DEAD_ALERT}"') < page.index('data-alert-id="alert-done-1"')  # newest first
    assert page.count(f'name="csrf" value="{csrf}"') >= 4  # every form carries it
    # Replay where it means something: the dead alert has it, the done one not.
    assert 'action="/ui/alerts/alert-done-1/replay"' not in page


async def test_everything_shown_is_escaped(database_url: str) -> None:
    """Strings from Codat or the merchant's platform never become markup."""
    engine = create_engine(make_settings(database_url))
    async with engine.begin() as conn:
        await conn.run_sync(f.alert, "a<b>", "<script>alert(1)</script>", "dead", NOW,
                            type_='"><img src=x onerror=alert(1)>')  # fmt: skip
    await engine.dispose()
    async with running_app(make_settings(database_url)) as (_, client):
        page = (await client.get("/ui", headers=ADMIN)).text
    assert "<script>alert(1)" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&#34;&gt;&lt;img src=x" in page


async def test_company_page_shows_state_and_a_timeline(database_url: str) -> None:
    """Pushes, datasets, alerts and notifications of the company, newest first; other companies' are absent."""
    async with seeded(database_url) as (client, _, _, _):
        page = (await client.get(f"/ui/companies/{f.FAILING}", headers=ADMIN)).text
    events = re.findall(r'<li class="event (\w+)', page)
    assert events == ["alert", "dataset", "notification", "dataset", "push", "dataset", "dataset"]
    assert "Dataset ds-fetch-error ended FetchError" in page and "CodatRejected: 400" in page
    assert "Codat could not fetch &lt;orders&gt;" in page
    assert "alert-done-1" not in page
    assert "data write error" in page and "latest orders dataset ended FetchError" in page
    assert f'action="/ui/alerts/{f.DEAD_ALERT}/replay"' in page
    assert '<h1 class="id" data-failing="true">' in page


async def test_an_unknown_company_is_404(database_url: str) -> None:
    async with running_app(make_settings(database_url)) as (_, client):
        response = await client.get("/ui/companies/nobody", headers=ADMIN)
    assert response.status_code == 404 and "knows no company nobody" in response.text


@pytest.mark.parametrize(
    ("row", "reason"),
    [({"last_sync_code": 4040}, "last sync 4040: company deleted or de-authorised"),
     ({"connection_deleted_at": NOW}, "connection deleted"), ({"last_sync_code": 2040}, None),
     ({"last_sync_code": 1010}, None), ({}, None)],
)
def test_what_makes_a_company_failing(row: dict[str, object], reason: str | None) -> None:
    """Sync codes of 4000 and above and a deleted connection fail a company; success and progress do not."""
    health = CompanyHealth("co", {"last_sync_code": None, "connection_deleted_at": None, **row})  # type: ignore[arg-type]
    assert health.reasons == ([reason] if reason else [])
    health.records["failed"] = 2
    assert health.failing and "2 records failed" in health.reasons


# -- buttons ---------------------------------------------------------------------------------------------


async def test_replay_button_runs_a_dead_alert_again(database_url: str) -> None:
    """Replay on a dead alert (the API's replay): its dead job ends superseded, one new job waits, the alert
    is pending, and the page says so with no dead alert left."""
    async with seeded(database_url) as (client, engine, _, ids):
        csrf = await log_in(client)
        response = await client.post(f"/ui/alerts/{f.DEAD_ALERT}/replay", data={"csrf": csrf, "next": "/ui"})
        page = (await client.get(response.headers["location"])).text
        async with engine.connect() as conn:
            alert_jobs = (await conn.execute(sa.select(jobs.c.id, jobs.c.status).where(jobs.c.kind == "alert")
                                             .order_by(jobs.c.id))).all()  # fmt: skip
        alert_status = await status_of(engine, alerts, f.DEAD_ALERT)
    assert response.status_code == 303 and response.headers["location"] == "/ui?flash=replayed"
    assert [status for _, status in alert_jobs] == ["done", "waiting"] and alert_jobs[0][0] == ids["alert_job"]
    assert alert_status == "pending"
    assert "Alert queued to be processed again." in page and "1 dead alert" not in page


async def test_replay_button_requeues_an_alert_that_is_not_dead(database_url: str) -> None:
    """An alert without a dead job is queued again as a new job (as `POST /v1/alerts/{id}/replay` does)."""
    async with seeded(database_url) as (client, engine, _, _):
        csrf = await log_in(client)
        here = f"/ui/companies/{f.HEALTHY}"
        response = await client.post("/ui/alerts/alert-done-1/replay", data={"csrf": csrf, "next": here})
        async with engine.connect() as conn:
            queued = (await conn.execute(sa.select(jobs.c.payload).where(jobs.c.status == "waiting"))).scalars().all()
        status = await status_of(engine, alerts, "alert-done-1")
    assert response.headers["location"] == f"{here}?flash=replayed"
    assert queued == [{"alert_id": "alert-done-1"}]
    assert status == "pending"


async def test_retry_button_brings_a_dead_job_back(database_url: str) -> None:
    async with seeded(database_url) as (client, engine, _, ids):
        csrf = await log_in(client)
        first = await client.post(f"/ui/jobs/{ids['push_job']}/retry", data={"csrf": csrf, "next": "/ui"})
        again = await client.post(f"/ui/jobs/{ids['push_job']}/retry", data={"csrf": csrf, "next": "/ui"})
        status = await status_of(engine, jobs, ids["push_job"])
    assert first.headers["location"] == "/ui?flash=retried" and status == "waiting"
    assert again.headers["location"] == "/ui?flash=not_dead"  # already waiting: nothing to retry


@pytest.mark.parametrize("csrf", [None, "", "0" * 64, "other-session"], ids=["missing", "empty", "wrong", "other"])
async def test_buttons_without_this_sessions_csrf_token_are_refused(database_url: str, csrf: str | None) -> None:
    """403 and nothing changes: a form posted from another site cannot replay or retry."""
    async with seeded(database_url) as (client, engine, _, ids):
        await log_in(client)
        if csrf == "other-session":
            # The same clock: another clock's "now" would find this session expired and clear it.
            async with running_app(make_settings(database_url), clock=FixedClock(NOW + 60)) as (_, other):
                csrf = await log_in(other)
        data = {} if csrf is None else {"csrf": csrf}
        replay = await client.post(f"/ui/alerts/{f.DEAD_ALERT}/replay", data=data)
        retry = await client.post(f"/ui/jobs/{ids['push_job']}/retry", data=data)
        states = (await status_of(engine, alerts, f.DEAD_ALERT), await status_of(engine, jobs, ids["push_job"]))
    assert (replay.status_code, retry.status_code) == (403, 403)
    assert "security token" in replay.text
    assert states == ("dead", "dead")


async def test_buttons_of_a_signed_out_browser_go_to_login(database_url: str) -> None:
    async with seeded(database_url) as (client, engine, _, _):
        response = await client.post(f"/ui/alerts/{f.DEAD_ALERT}/replay", data={})
        assert await status_of(engine, alerts, f.DEAD_ALERT) == "dead"
    assert response.status_code == 303 and response.headers["location"].startswith("/ui/login")


@pytest.mark.parametrize(
    ("form", "back_to"),
    [({"next": f"/ui/companies/{f.FAILING}"}, f"/ui/companies/{f.FAILING}"), ({"next": "/ui"}, "/ui"), ({}, "/ui"),
     ({"next": "https://evil.example/ui"}, "/ui"), ({"next": "//evil.example"}, "/ui")],
    ids=["company-page", "overview", "no-next", "offsite", "scheme-relative"],
)  # fmt: skip
async def test_a_signed_out_button_returns_to_its_page_after_login(
    database_url: str, form: dict[str, str], back_to: str
) -> None:
    """Signed out, a Replay/Retry press logs in and lands on the page the button was on (never the POST-only URL)."""
    async with seeded(database_url) as (client, engine, _, ids):
        pressed = await client.post(f"/ui/jobs/{ids['push_job']}/retry", data=form)
        next_ = pressed.headers["location"].removeprefix("/ui/login?next=")
        login = await client.get(f"/ui/login?next={next_}")
        signed_in = await client.post("/ui/login", data={"token": ADMIN_TOKEN, "next": next_of(login.text)})
        landing = await client.get(signed_in.headers["location"])
        assert await status_of(engine, jobs, ids["push_job"]) == "dead"  # a signed-out press does nothing
    assert pressed.status_code == 303 and pressed.headers["location"] == f"/ui/login?next={back_to}"
    assert (signed_in.status_code, signed_in.headers["location"]) == (303, back_to)
    assert landing.status_code == 200


async def test_curl_presses_buttons_with_the_bearer_token(database_url: str) -> None:
    """Bearer clients need no CSRF token (browsers never send that header on their own)."""
    async with seeded(database_url) as (client, engine, _, ids):
        response = await client.post(f"/ui/jobs/{ids['push_job']}/retry", headers=ADMIN, data={})
        assert await status_of(engine, jobs, ids["push_job"]) == "waiting"
    assert response.status_code == 303


@pytest.mark.parametrize("path", ["/ui/alerts/no-such-alert/replay", "/ui/jobs/424242/retry", "/ui/jobs/abc/retry"])
async def test_buttons_for_unknown_things_are_404(database_url: str, path: str) -> None:
    async with running_app(make_settings(database_url)) as (_, client):
        csrf = await log_in(client)
        response = await client.post(path, data={"csrf": csrf})
    assert response.status_code == 404


async def test_pages_forbid_framing_and_caching(database_url: str) -> None:
    """Clickjacking and shared caches are shut out by headers on every page."""
    async with running_app(make_settings(database_url)) as (_, client):
        response = await client.get("/ui/login")
    assert response.headers["x-frame-options"] == "DENY" and response.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


def test_the_pages_know_every_record_state() -> None:
    """The record states the pages count are exactly the outbox's."""
    outbox = pytest.importorskip("service.outbox")
    assert list(ui_data.RECORD_STATES) == [state.value for state in outbox.State]


async def test_logout_ends_the_session_on_the_server(database_url: str) -> None:
    """After logging out, the same cookie (kept by an attacker, say) no longer opens any page or button."""
    async with seeded(database_url) as (client, engine, _, _ids):
        csrf = await log_in(client)
        cookie = client.cookies.get("relay_ui")
        assert cookie is not None
        assert (await client.post("/ui/logout", data={"csrf": csrf})).status_code == 303
        client.cookies.set("relay_ui", cookie, path="/ui")  # the cookie, replayed after logout
        page = await client.get("/ui")
        button = await client.post(f"/ui/alerts/{f.DEAD_ALERT}/replay", data={"csrf": csrf})
        state = await status_of(engine, alerts, f.DEAD_ALERT)
    assert page.status_code == 303 and page.headers["location"].startswith("/ui/login")
    assert button.status_code == 303 and state == "dead"


async def test_failed_logins_and_bearer_guesses_are_throttled_per_address(database_url: str) -> None:
    """Past RELAY_AUTH_FAILURE_LIMIT wrong tokens an address gets 429 with Retry-After, even with the right token,
    until its window ends; webhooks are never throttled."""
    from service.testing import legacy_body
    from tests.conftest import TEST_AUTH_HEADER

    clock = FixedClock(NOW)
    settings = make_settings(database_url, auth_failure_limit=3, auth_failure_window_seconds=60)
    async with running_app(settings, clock=clock) as (_, client):
        wrong = [(await client.post("/ui/login", data={"token": "guess-1234"})).status_code for _ in range(3)]
        login = await client.post("/ui/login", data={"token": ADMIN_TOKEN})
        bearer = await client.get("/v1/alerts", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
        webhook = await client.post("/webhooks/codat", json=legacy_body(), headers={"authorization": TEST_AUTH_HEADER})
        clock.advance(61)
        after = await client.get("/v1/alerts", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
        guesses = [(await client.get("/metrics", headers={"authorization": "Bearer nope-nope"})).status_code
                   for _ in range(4)]  # fmt: skip
    assert wrong == [401, 401, 401]
    assert login.status_code == 429 and login.headers["retry-after"] == "60"
    assert (bearer.status_code, bearer.json()["error"]) == (429, "too_many_attempts")
    assert bearer.headers["retry-after"] == "60"
    assert webhook.status_code == 202
    assert after.status_code == 200
    assert guesses == [401, 401, 401, 429]


# -- the next scheduled sync and the company's name (issues 14 and 15) ---------------------------------


async def test_the_page_shows_the_name_and_next_sync_and_searches_by_name(database_url: str) -> None:
    """The companies table and the company page show Codat's name and the next sync with its schedule;
    the search box matches the name in any case; a company whose schedule is unread says so."""
    async with seeded(database_url) as (client, _, _, _):
        await log_in(client)
        overview = (await client.get("/ui")).text
        row = company_row(overview, f.HEALTHY)
        assert f.HEALTHY_NAME in row and "Daily at 02:00 America/New_York" in row
        assert 'datetime="2025-06-15T18:06:40Z"' in row  # NOW + 3 h, a <time> the page's script makes local
        assert "not read yet" in company_row(overview, f.FAILING)
        found = (await client.get("/ui", params={"search": "harbour bak"})).text
        assert f'data-company-id="{f.HEALTHY}"' in found and f'data-company-id="{f.FAILING}"' not in found
        page = (await client.get(f"/ui/companies/{f.HEALTHY}")).text
        assert f'<p class="company-name">{f.HEALTHY_NAME}</p>' in page
        cell = re.search(r'data-testid="next-sync">(.*?)</td>', page, re.S)
        assert cell is not None and "2025-06-15T18:06:40Z" in cell.group(1) and "America/New_York" in cell.group(1)


async def test_open_problems_are_listed_with_their_age_and_can_be_acknowledged(database_url: str) -> None:
    """The overview lists open problems (kind, company, age); Acknowledge keeps one listed, marked by whom;
    a resolved one leaves the list (the company's page keeps it a week); an unknown one is 404."""
    async with seeded(database_url) as (client, engine, clock, _):
        notifier = Notifier(engine, ["log"], dedupe_s=3600, clock=clock)
        await notifier.notify(Notification(Kind.SYNC_FAILED, "Codat sync failed with 4000", company_id=f.FAILING,
                                           subject="sync-1"))  # fmt: skip
        await notifier.notify(Notification(Kind.UPDATE_CONFLICT, "1 orders record changed", company_id=f.FAILING,
                                           subject="orders:o-1"))  # fmt: skip
        clock.advance(125)
        csrf = await log_in(client)
        page = (await client.get("/ui")).text
        rows = dict(re.findall(r'<tr data-problem-id="([0-9a-f]{32})" data-state="open">(.*?)</tr>', page, re.S))
        sync_failed = next(pid for pid, row in rows.items() if "sync failed" in row)
        pressed = await client.post(f"/ui/problems/{sync_failed}/ack", data={"csrf": csrf, "next": "/ui"})
        after = (await client.get("/ui")).text
        async with writer(engine).begin() as conn:
            await notifier.resolve(conn, "a sync succeeded", kinds=[Kind.SYNC_FAILED], company_id=f.FAILING)
        resolved = (await client.get("/ui")).text
        company = (await client.get(f"/ui/companies/{f.FAILING}")).text
        unknown = await client.post("/ui/problems/nope/ack", data={"csrf": csrf})
    assert len(rows) == 2 and all(f.FAILING in row and "2m 5s" in row for row in rows.values())
    assert pressed.headers["location"] == "/ui?flash=acknowledged"
    assert f'data-problem-id="{sync_failed}" data-state="acknowledged"' in after and "Sync Health page" in after
    assert sync_failed not in resolved and 'data-testid="open-problems">1<' in resolved
    # the company's page keeps the week's resolved ones beside the open ones
    assert f'data-problem-id="{sync_failed}" data-state="resolved"' in company
    assert sum(f'data-problem-id="{pid}" data-state="open"' in company for pid in rows) == 1
    assert unknown.status_code == 404
