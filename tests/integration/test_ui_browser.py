"""The Sync Health page in headless Chromium against a real `codat-relay serve` process on SQLite.

An operator logs in, sees the failing company highlighted, replays a dead alert with its button and
watches its state change as the server's worker processes it. Screenshots land in tests/artifacts/.
Chromium is Debian's package (`make test` installs it); Playwright drives it and never downloads one.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from service import migrate
from tests import ui_factories as f
from tests.conftest import ADMIN_TOKEN
from tests.integration.harness import ROOT, free_port, relay, relay_env

pytestmark = pytest.mark.integration

ARTIFACTS = ROOT / "tests" / "artifacts"
DEADLINE_S = 20.0
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def chromium_path() -> str:
    """Debian's Chromium, or a skip (a failure under CI, where `make test` must have installed it)."""
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    problem = None if path else "Chromium is not installed (apt-get install chromium; `make test` does it)"
    try:
        import playwright.sync_api  # noqa: F401 - only whether it is there
    except ImportError:
        problem = "Playwright is not installed (it is in requirements-dev.lock; `make test` installs it)"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{problem}: CI never skips the browser test")
        pytest.skip(problem)
    assert path is not None
    return path


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """A migrated SQLite file seeded with a failing and a healthy company, served by `codat-relay serve`."""
    db = tmp_path / "relay.db"
    migrate.upgrade(f"sqlite+aiosqlite:///{db}")
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        f.world(conn, time.time())
    engine.dispose()
    env = relay_env(f"sqlite+aiosqlite:///{db}", free_port())
    with relay(["serve"], env, tmp_path / "relay.log"):
        yield f"http://127.0.0.1:{env['RELAY_PORT']}"


def wait_for_status(page: Any, alert_id: str, wanted: str) -> str:
    """Reload until the alert's row shows `wanted`; returns the last status seen."""
    cell = page.locator(f'tr[data-alert-id="{alert_id}"] .alert-status [data-status]')
    give_up = time.monotonic() + DEADLINE_S
    while (status := cell.get_attribute("data-status")) != wanted and time.monotonic() < give_up:
        page.wait_for_timeout(200)  # a reload cadence within the deadline, not a wait for an outcome
        page.reload()
    return str(status)


def test_operator_logs_in_sees_the_failing_company_and_replays_a_dead_alert(server: str) -> None:
    """Login → failing company first and red → Replay on the dead alert → its status leaves `dead` for `ignored`."""
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.set_default_timeout(DEADLINE_S * 1000)
            page.goto(f"{server}/ui")
            assert "/ui/login" in page.url
            page.fill("#token", ADMIN_TOKEN)
            page.click("button[type=submit]")
            page.wait_for_url(f"{server}/ui")

            rows = page.locator("tr.company")
            failing = page.locator(f'tr[data-company-id="{f.FAILING}"]')
            assert rows.first.get_attribute("data-company-id") == f.FAILING
            assert failing.get_attribute("data-failing") == "true"
            assert page.locator(f'tr[data-company-id="{f.HEALTHY}"]').get_attribute("data-failing") == "false"
            assert "dead alert" in failing.inner_text() and "data write error" in failing.inner_text()
            red = failing.locator("td").first.evaluate("td => getComputedStyle(td).backgroundColor")
            assert red == "rgb(254, 243, 242)"  # the failing rows' background, --bad-bg
            page.screenshot(path=str(ARTIFACTS / "sync-health.png"), full_page=True)

            alert_row = page.locator(f'tr[data-alert-id="{f.DEAD_ALERT}"]')
            assert alert_row.locator("[data-status]").get_attribute("data-status") == "dead"
            alert_row.locator("button", has_text="Replay").click()
            page.wait_for_url(f"{server}/ui?flash=replayed")
            assert "Alert queued to be processed again." in page.inner_text("body")
            assert wait_for_status(page, f.DEAD_ALERT, "ignored") == "ignored"
            assert "1 dead alert" not in page.locator(f'tr[data-company-id="{f.FAILING}"]').inner_text()
            page.screenshot(path=str(ARTIFACTS / "sync-health-replayed.png"), full_page=True)

            phone = browser.new_page(viewport={"width": 390, "height": 844})
            phone.context.add_cookies(page.context.cookies())
            phone.goto(f"{server}/ui")
            assert phone.locator("table.companies thead").evaluate("t => getComputedStyle(t).display") == "none"
            assert phone.evaluate("document.documentElement.scrollWidth") <= 390 + 1  # cards, no sideways scroll
            phone.screenshot(path=str(ARTIFACTS / "sync-health-phone.png"), full_page=True)
        finally:
            browser.close()
    assert (ARTIFACTS / "sync-health.png").stat().st_size > 10_000
