"""Sync Health v2 pages: an alert's page, the notifications, the activity charts (and their SQL buckets)."""

from __future__ import annotations

import json
import re

import pytest
import sqlalchemy as sa

from service.clock import FixedClock
from service.db import create_engine, jobs, notifications, pushes
from service.testing import running_app
from service.web import ui_charts
from tests import ui_factories as f
from tests.conftest import make_settings
from tests.test_ui import ADMIN, NOW, log_in, seeded

HOUR = 3600.0


# -- an alert's page --------------------------------------------------------------------------------------


async def test_alert_page_shows_the_body_jobs_outcome_and_replay(database_url: str) -> None:
    """A dead alert: its body pretty-printed, its dead job with the error, why it is dead, and Replay
    posting back to this page."""
    async with seeded(database_url) as (client, _, _, ids):
        csrf = await log_in(client)
        page = (await client.get(f"/ui/alerts/{f.DEAD_ALERT}")).text
        replayed = await client.post(f"/ui/alerts/{f.DEAD_ALERT}/replay",
                                     data={"csrf": csrf, "next": f"/ui/alerts/{f.DEAD_ALERT}"})  # fmt: skip
        after = (await client.get(replayed.headers["location"])).text
    body = re.search(r'<pre class="body" data-testid="alert-body">(.*?)</pre>', page, re.S)
    assert body is not None and json.loads(body.group(1).replace("&#34;", '"'))["AlertId"] == f.DEAD_ALERT
    assert '\n  &#34;AlertId&#34;: &#34;alert-dead-1&#34;' in page  # indented: pretty-printed
    assert f'<tr data-job-id="{ids["alert_job"]}">' in page and "RuntimeError: the handler kept failing" in page
    assert "failed on every attempt" in page and "none for kind <code>other</code>" in page
    assert f'action="/ui/alerts/{f.DEAD_ALERT}/replay"' in page and f'href="/ui/companies/{f.FAILING}"' in page
    assert replayed.headers["location"] == f"/ui/alerts/{f.DEAD_ALERT}?flash=replayed"
    assert 'data-status="pending"' in after and "Alert queued to be processed again." in after
    assert 'data-testid="no-replay"' in after  # pending: about to run, nothing to replay
    assert after.count("<tr data-job-id=") == 2  # the dead job (superseded) and the new one


async def test_alert_page_names_the_handler_and_offers_no_replay_for_a_done_alert(database_url: str) -> None:
    async with seeded(database_url) as (client, _, _, _):
        page = (await client.get("/ui/alerts/alert-done-1", headers=ADMIN)).text
    assert "<code>handlers.dataset_status.on_dataset_status</code>" in page
    assert "ran to the end" in page
    assert "/replay" not in page and 'data-testid="no-replay"' in page


async def test_alert_page_escapes_and_reaches_ids_with_slashes(database_url: str) -> None:
    """An id holding `/`, `?` and markup: its links are one encoded segment, and it reads as text."""
    alert_id = "a/../b?<i>x</i>"
    engine = create_engine(make_settings(database_url))
    async with engine.begin() as conn:
        await conn.run_sync(f.alert, alert_id, "co-<b>", "ignored", NOW, type_="<script>alert(1)</script>")
    await engine.dispose()
    async with running_app(make_settings(database_url)) as (_, client):
        overview = (await client.get("/ui", headers=ADMIN)).text
        link = re.search(r'href="(/ui/alerts/a[^"]*)"', overview)
        assert link is not None
        page = await client.get(link.group(1), headers=ADMIN)
    assert link.group(1) == "/ui/alerts/a%2F..%2Fb%3F%3Ci%3Ex%3C%2Fi%3E"
    assert page.status_code == 200 and "<script>alert(1)" not in page.text and "<i>x" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert 'action="/ui/alerts/a%2F..%2Fb%3F%3Ci%3Ex%3C%2Fi%3E/replay"' in page.text  # ignored: replayable


async def test_alert_page_unknown_is_404_and_signed_out_goes_to_login(database_url: str) -> None:
    async with running_app(make_settings(database_url)) as (_, client):
        missing = await client.get("/ui/alerts/nope", headers=ADMIN)
        signed_out = await client.get("/ui/alerts/nope")
    assert missing.status_code == 404 and "no alert nope" in missing.text
    assert signed_out.status_code == 303 and signed_out.headers["location"] == "/ui/login?next=/ui/alerts/nope"


# -- notifications ----------------------------------------------------------------------------------------


def _notes(conn: sa.Connection, count: int) -> None:
    for i in range(count):
        conn.execute(notifications.insert().values(
            id=f"note-{i:03}", kind="alert_dead" if i % 2 else "dataset_failed",
            severity="critical" if i % 2 else "warning", company_id="co-a" if i < 10 else "co-b",
            dedupe_key=f"k{i}", summary=f"summary {i} <b>", details={"alertId": "al/1"} if i == 1 else {},
            occurred_at=NOW - i * 60,
        ))  # fmt: skip
    for sender, status in (("log", "done"), ("webhook", "dead")):
        conn.execute(jobs.insert().values(kind="notify", payload={"notification_id": "note-001", "sender": sender},
                                          status=status, attempts=1, run_at=NOW, created_at=NOW))  # fmt: skip


async def test_notifications_newest_first_with_delivery_filters_and_paging(database_url: str) -> None:
    engine = create_engine(make_settings(database_url))
    async with engine.begin() as conn:
        await conn.run_sync(_notes, 55)
    await engine.dispose()
    async with running_app(make_settings(database_url)) as (_, client):
        first = (await client.get("/ui/notifications", headers=ADMIN)).text
        older = re.search(r'<a class="next" href="([^"]+)"', first)
        assert older is not None
        second = (await client.get(older.group(1).replace("&amp;", "&"), headers=ADMIN)).text
        critical_a = (await client.get("/ui/notifications?severity=critical&company=co-a", headers=ADMIN)).text
        bad = await client.get("/ui/notifications?kind=nonsense", headers=ADMIN)
    shown = re.findall(r'data-notification-id="(note-\d+)"', first)
    assert shown == [f"note-{i:03}" for i in range(50)] and "showing 50 of 55" in first
    assert re.findall(r'data-notification-id="(note-\d+)"', second) == [f"note-{i:03}" for i in range(50, 55)]
    assert 'class="next"' not in second
    assert "log: done" in first and "webhook: dead" in first and 'href="/ui/alerts/al%2F1"' in first
    assert "summary 1 &lt;b&gt;" in first
    assert re.findall(r'data-notification-id="(note-\d+)"', critical_a) == [f"note-{i:03}" for i in (1, 3, 5, 7, 9)]
    assert "showing 5 of 5" in critical_a
    assert bad.status_code == 422 and "kind: one of" in bad.text


# -- activity charts --------------------------------------------------------------------------------------

WINDOW_24H = ui_charts.WINDOWS["24h"]
START, END = ui_charts.bounds(WINDOW_24H, NOW)


def _activity(conn: sa.Connection) -> None:
    """Rows at known times: bucket i of the 24 h window is [START + i h, START + (i+1) h)."""
    f.alert(conn, "before-window", "co", "done", START - 1)  # in the 7 d window only
    f.alert(conn, "first-bucket", "co", "done", START)  # exactly on the boundary: bucket 0
    f.alert(conn, "b5-1", "co", "done", START + 5 * HOUR + 10)
    f.alert(conn, "b5-2", "co", "done", START + 6 * HOUR - 0.5)
    f.alert(conn, "dead-now", "co", "dead", NOW)  # a delivery and a failure, in the last bucket
    for i, (outcome, at) in enumerate([("accepted", 5.5), ("rejected", 6.2), ("accepted", 6.4)]):
        conn.execute(pushes.insert().values(id=f"p{i}", company_id="co", data_type="orders", record_count=1,
                                            reason="push", started_at=START + at * HOUR,
                                            finished_at=START + at * HOUR + 1, outcome=outcome))  # fmt: skip
    f.dataset(conn, "ds-bad", "co", "ValidationError", START + 10 * HOUR + 1)
    f.dataset(conn, "ds-ok", "co", "Complete", START + 10 * HOUR + 2)
    for run_at, lag in ((START + 7 * HOUR, 12.5), (START + 7 * HOUR + 60, 3.0)):
        conn.execute(jobs.insert().values(kind="push", payload={}, status="done", attempts=1, run_at=run_at,
                                          started_at=run_at + lag, created_at=run_at,
                                          finished_at=run_at + 20))  # fmt: skip
    f.job(conn, "push", {}, "dead", START + 8 * HOUR)  # a failure
    f.job(conn, "alert", {"alert_id": "dead-now"}, "dead", START + 8 * HOUR)  # counted as its alert instead


async def test_activity_buckets_are_counted_in_sql_on_known_rows(database_url: str) -> None:
    """Hourly buckets aligned on UTC hours, the last holding now; a row on a boundary falls in the later bucket."""
    engine = create_engine(make_settings(database_url))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_activity)
        day = await ui_charts.activity(engine, WINDOW_24H, NOW)
        week = await ui_charts.activity(engine, ui_charts.WINDOWS["7d"], NOW)
    finally:
        await engine.dispose()
    assert END - NOW < HOUR and END % HOUR == 0 and len(day.buckets) == 24
    by_index = {i: b for i, b in enumerate(day.buckets)}
    assert [i for i, b in by_index.items() for _ in range(b.deliveries)] == [0, 5, 5, 23]
    assert {i: b.pushes for i, b in by_index.items() if b.pushes} == {5: 1, 6: 2}
    assert {i: b.failures for i, b in by_index.items() if b.failures} == {6: 1, 8: 1, 10: 1, 23: 1}
    assert {i: b.lag_s for i, b in by_index.items() if b.lag_s is not None} == {7: 12.5}
    assert sum(b.deliveries for b in week.buckets) == 5 and sum(b.failures for b in week.buckets) == 4
    assert all(b.start % (6 * HOUR) == 0 for b in week.buckets) and len(week.buckets) == 28


def test_chart_geometry_scales_bars_to_a_round_maximum() -> None:
    """The tallest value fills the plot only when it is round; every bar has a title saying its numbers."""
    starts = [START + i * HOUR for i in range(24)]
    chart = ui_charts.chart("d", "Deliveries", "alerts", [0.0] * 23 + [7.0], starts, WINDOW_24H)
    plot_h = ui_charts.CHART_H - ui_charts.PAD_TOP - ui_charts.PAD_BOTTOM
    assert chart.top == "10" and chart.bars[-1].h == pytest.approx(plot_h * 0.7, abs=0.01)
    assert chart.bars[0].h == 0 and chart.total == "7" and len(chart.ticks) == 8
    assert chart.bars[-1].title.endswith("UTC: 7 alerts")
    lag = ui_charts.chart("q", "Lag", "seconds", [None] * 24, starts, WINDOW_24H)
    assert lag.top == "1" and lag.bars[0].title.endswith("no jobs started") and lag.total == "0 s max"


async def test_activity_page_renders_svg_charts_and_a_table(database_url: str) -> None:
    engine = create_engine(make_settings(database_url))
    async with engine.begin() as conn:
        await conn.run_sync(_activity)
    await engine.dispose()
    async with running_app(make_settings(database_url), clock=FixedClock(NOW)) as (_, client):
        page = (await client.get("/ui/activity", headers=ADMIN)).text
        week = (await client.get("/ui/activity?window=7d", headers=ADMIN)).text
        bad = await client.get("/ui/activity?window=1y", headers=ADMIN)
    assert page.count("<svg ") == 4 and page.count('<rect class="bar"') == 4 * 24
    assert page.count("</title></rect>") == 4 * 24 and 'role="img"' in page and "time (UTC)" in page
    assert re.search(r"UTC: 2 alerts</title>", page) and "Queue lag" in page
    row = re.search(rf'<tr data-bucket-start="{int(START + 5 * HOUR)}">(.*?)</tr>', page, re.S)
    assert row is not None and re.findall(r">(\d+|—|[\d.]+)</td>", row.group(1)) == ["2", "0", "1", "—"]
    assert week.count('<rect class="bar"') == 4 * 28
    assert bad.status_code == 422


# -- every page ---------------------------------------------------------------------------------------------


async def test_pages_run_only_the_static_script_and_show_times_in_utc(database_url: str) -> None:
    """No inline script (the CSP allows scripts from 'self' only); times are <time> elements in UTC."""
    async with seeded(database_url) as (client, _, _, _):
        pages = [await client.get(path, headers=ADMIN) for path in
                 ("/ui", f"/ui/companies/{f.FAILING}", f"/ui/alerts/{f.DEAD_ALERT}", "/ui/notifications",
                  "/ui/activity")]  # fmt: skip
        script = await client.get("/ui/static/ui.js")
    for page in pages:
        assert page.status_code == 200
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert re.findall(r"<script[^>]*>", page.text) == ['<script src="/ui/static/ui.js" defer>']
        assert 'id="auto-refresh"' in page.text
    assert re.search(r'<time datetime="2025-06-15T14:06:40Z" title="2025-06-15 14:06:40 UTC">'
                     r"2025-06-15 14:06:40 UTC</time>", pages[2].text)  # fmt: skip
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert b"auto-refresh" in script.content


# -- the alerts, searched ---------------------------------------------------------------------------------


async def test_alerts_page_searches_the_body_and_pages_on(database_url: str) -> None:
    """The search box finds text in the body (any case) with the exact filters beside it, 50 a page, and
    an "Older alerts" link carries the filters and the cursor; what was typed comes back escaped."""
    engine = create_engine(make_settings(database_url))
    async with engine.begin() as conn:
        for n in range(52):
            await conn.run_sync(f.alert, f"needle-{n:02d}", "co-find", "ignored", NOW + n)
        await conn.run_sync(f.alert, "hay-1", "co-find", "ignored", NOW + 100)
        await conn.run_sync(f.alert, "needle-other", "co-else", "ignored", NOW + 101, type_="read.completed")
    await engine.dispose()
    async with running_app(make_settings(database_url), clock=FixedClock(NOW)) as (_, client):
        first = (await client.get("/ui/alerts?q=NEEDLE&company=co-find", headers=ADMIN)).text
        older = re.search(r'<a href="([^"]+)" rel="next">', first)
        assert older is not None
        second = (await client.get(older.group(1).replace("&amp;", "&"), headers=ADMIN)).text
        by_type = (await client.get("/ui/alerts?type=read.completed", headers=ADMIN)).text
        escaped = (await client.get("/ui/alerts?q=%3Cb%3Ebold", headers=ADMIN)).text
        bad = await client.get("/ui/alerts?q=" + "x" * 201, headers=ADMIN)
        overview = (await client.get("/ui", headers=ADMIN)).text
    shown = re.findall(r'<tr data-alert-id="([^"]+)">', first)
    assert shown == [f"needle-{n:02d}" for n in range(51, 1, -1)]
    assert "q=NEEDLE" in older.group(1) and "company=co-find" in older.group(1)
    assert re.findall(r'<tr data-alert-id="([^"]+)">', second) == ["needle-01", "needle-00"]
    assert 'rel="next"' not in second
    assert re.findall(r'<tr data-alert-id="([^"]+)">', by_type) == ["needle-other"]
    assert 'value="&lt;b&gt;bold"' in escaped and "<b>bold" not in escaped and "No alerts." in escaped
    assert bad.status_code == 422 and "q: 1 to 200 characters" in bad.text
    assert 'href="/ui/alerts"' in overview
