"""Sync Health v2 in Debian's Chromium against `codat-relay serve`: search, filters, "showing N of M", a
company's failed records, and its action buttons (confirmation + CSRF), at desktop and phone widths.
Screenshots land in .bench/ (kept as CI artifacts)."""

from __future__ import annotations

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
