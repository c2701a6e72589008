"""Sync Health v2 in Debian's Chromium against `codat-relay serve`: search, filters, "showing N of M", a
company's failed records, and its action buttons (confirmation + CSRF), at desktop and phone widths.
Screenshots land in .bench/ (kept as CI artifacts)."""

from __future__ import annotations

from typing import Any

import pytest

from tests import ui_factories as f
from tests.conftest import ADMIN_TOKEN
from tests.integration.harness import ROOT
from tests.integration.test_ui_browser import CHROMIUM_ARGS, DEADLINE_S, chromium_path, server  # noqa: F401

pytestmark = pytest.mark.integration
SHOTS = ROOT / ".bench"


def test_search_filter_and_act_on_a_company_at_desktop_and_phone_widths(server: str) -> None:  # noqa: F811
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.set_default_timeout(DEADLINE_S * 1000)
            page.goto(f"{server}/ui")
            page.fill("#token", ADMIN_TOKEN)
            page.click("button[type=submit]")
            page.wait_for_url(f"{server}/ui")
            assert page.get_by_test_id("showing").inner_text() == "showing 2 of 2"

            page.fill("input[name=search]", "HEALTH")  # any case, part of the id
            page.click("form.filters button[type=submit]")
            page.wait_for_url("**/ui?search=HEALTH*")
            assert [r.get_attribute("data-company-id") for r in page.locator("tr.company").all()] == [f.HEALTHY]
            page.fill("input[name=search]", "harbour BAKERY")  # Codat's name of the company, any case
            page.click("form.filters button[type=submit]")
            page.wait_for_url("**/ui?search=harbour*")
            assert [r.get_attribute("data-company-id") for r in page.locator("tr.company").all()] == [f.HEALTHY]
            row = page.locator(f'tr[data-company-id="{f.HEALTHY}"]')
            assert f.HEALTHY_NAME in row.inner_text()
            assert "Daily at 02:00 America/New_York" in row.locator('td[data-label="Next sync"]').inner_text()
            page.screenshot(path=str(SHOTS / "ui-v2-search-by-name.png"), full_page=True)
            page.select_option("select[name=failing]", "true")
            page.fill("input[name=search]", "")
            page.click("form.filters button[type=submit]")
            assert [r.get_attribute("data-company-id") for r in page.locator("tr.company").all()] == [f.FAILING]
            assert page.get_by_test_id("showing").inner_text() == "showing 1 of 1"
            page.screenshot(path=str(SHOTS / "ui-v2-filtered.png"), full_page=True)

            page.click(f'tr[data-company-id="{f.FAILING}"] a')
            page.wait_for_url(f"**/ui/companies/{f.FAILING}")
            bad = page.locator("table.bad-records tbody tr")
            assert bad.count() == 1 and "changed after it was synced" in bad.inner_text()
            pause = page.locator("form[data-action=pause]")
            pause.locator("button").click()  # not confirmed: the browser refuses the form, nothing happens
            assert page.url.endswith(f"/ui/companies/{f.FAILING}")
            pause.locator("input[name=confirm]").check()
            pause.locator("button").click()
            page.wait_for_url("**flash=paused")
            assert "Company paused" in page.inner_text("body") and page.locator("form[data-action=resume]").count()
            page.screenshot(path=str(SHOTS / "ui-v2-company-paused.png"), full_page=True)
            resume = page.locator("form[data-action=resume]")
            resume.locator("input[name=confirm]").check()
            resume.locator("button").click()
            page.wait_for_url("**flash=resumed")
            assert page.locator("form[data-action=pause]").count() == 1

            phone = browser.new_page(viewport={"width": 390, "height": 844})
            phone.context.add_cookies(page.context.cookies())
            phone.goto(f"{server}/ui/companies/{f.FAILING}")
            assert phone.evaluate("document.documentElement.scrollWidth") <= 390 + 1  # no sideways scroll
            phone.screenshot(path=str(SHOTS / "ui-v2-company-phone.png"), full_page=True)
            phone.goto(f"{server}/ui?search=co-")
            assert phone.evaluate("document.documentElement.scrollWidth") <= 390 + 1
            phone.screenshot(path=str(SHOTS / "ui-v2-overview-phone.png"), full_page=True)
        finally:
            browser.close()
    assert all((SHOTS / name).stat().st_size > 10_000 for name in ("ui-v2-filtered.png", "ui-v2-company-phone.png"))


def _no_sideways_scroll(page: Any) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"))


def test_alert_page_notifications_activity_times_and_auto_refresh(server: str) -> None:  # noqa: F811
    """From the overview's dead alert to its page (body, jobs, Replay); times local and relative with UTC on
    hover; auto-refresh reloads and is remembered; the notifications and activity pages; phone widths too."""
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            # Tokyo is never UTC: a local time there cannot pass for the UTC one.
            context = browser.new_context(viewport={"width": 1366, "height": 900}, timezone_id="Asia/Tokyo",
                                          locale="en-GB")  # fmt: skip
            page = context.new_page()
            page.set_default_timeout(DEADLINE_S * 1000)
            page.clock.install()  # the auto-refresh timer runs when the test moves the clock, not in 30 real s
            page.goto(f"{server}/ui")
            page.fill("#token", ADMIN_TOKEN)
            page.click("button[type=submit]")
            page.wait_for_url(f"{server}/ui")

            received = page.locator(f'tr[data-alert-id="{f.DEAD_ALERT}"] time')
            assert received.get_attribute("class") == "local"
            assert (received.get_attribute("title") or "").endswith(" UTC")
            assert "UTC" not in received.inner_text() and "hour ago" in received.inner_text()

            page.click(f'tr[data-alert-id="{f.DEAD_ALERT}"] a[href="/ui/alerts/{f.DEAD_ALERT}"]')
            page.wait_for_url(f"**/ui/alerts/{f.DEAD_ALERT}")
            assert f'"AlertId": "{f.DEAD_ALERT}"' in page.inner_text("pre.body")
            jobs = page.locator("table.alert-jobs tbody tr")
            assert jobs.count() == 1 and "the handler kept failing" in jobs.inner_text()
            assert "failed on every attempt" in page.get_by_test_id("outcome").inner_text()
            assert page.locator("button", has_text="Replay").count() == 1
            page.screenshot(path=str(SHOTS / "ui-v2-alert.png"), full_page=True)

            box = page.locator("#auto-refresh")
            assert box.is_visible() and not box.is_checked()
            box.check()
            page.evaluate("window.notReloaded = true")
            with page.expect_navigation():
                page.clock.fast_forward(31_000)
            assert page.evaluate("window.notReloaded === undefined")  # a fresh document
            assert page.locator("#auto-refresh").is_checked()  # remembered across the reload
            assert page.evaluate("document.documentElement.dataset.autoRefresh") == "on"
            page.screenshot(path=str(SHOTS / "ui-v2-auto-refresh-on.png"))
            page.locator("#auto-refresh").uncheck()

            page.click("nav.top a:text('Notifications')")
            page.wait_for_url("**/ui/notifications")
            row = page.locator('tr[data-notification-id="n-1"]')
            assert "Dataset ds-fetch-error ended FetchError" in row.inner_text()
            assert page.get_by_test_id("showing").inner_text() == "showing 1 of 1"
            page.select_option("select[name=severity]", "critical")
            page.click("form.filters button[type=submit]")
            page.wait_for_url("**severity=critical*")
            assert page.get_by_test_id("showing").inner_text() == "showing 0 of 0"
            page.goto(f"{server}/ui/notifications")
            page.screenshot(path=str(SHOTS / "ui-v2-notifications.png"), full_page=True)

            page.click("nav.top a:text('Activity')")
            page.wait_for_url("**/ui/activity")
            assert page.locator("figure.chart svg").count() == 4
            bars = page.locator("figure.deliveries rect.bar title")
            counts = [int(t.rsplit(": ", 1)[1].split()[0]) for t in bars.all_text_contents()]
            assert len(counts) == 24 and sum(counts) == 2  # the world's two alerts, whichever hours they fell in
            page.screenshot(path=str(SHOTS / "ui-v2-activity.png"), full_page=True)

            phone = context.new_page()
            phone.set_viewport_size({"width": 390, "height": 844})
            for path, name in ((f"/ui/alerts/{f.DEAD_ALERT}", "alert"), ("/ui/notifications", "notifications"),
                               ("/ui/activity?window=7d", "activity")):  # fmt: skip
                phone.goto(f"{server}{path}")
                assert _no_sideways_scroll(phone), path
                phone.screenshot(path=str(SHOTS / f"ui-v2-{name}-phone.png"), full_page=True)
            assert phone.locator("figure.chart svg").count() == 4
        finally:
            browser.close()
    assert all((SHOTS / f"ui-v2-{name}.png").stat().st_size > 10_000
               for name in ("alert", "notifications", "activity", "alert-phone", "activity-phone"))  # fmt: skip
