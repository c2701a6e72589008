"""The Activity page's charts: deliveries, failures, pushes and queue lag over the last 24 h or 7 d.

Buckets are counted by the database (one grouped query per table, on both backends), then laid out
here as bar geometry for server-rendered SVG: the page reads without JavaScript, and every chart has
a table of the same numbers beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.codat.models import ERROR_STATUSES
from service.db import alerts, datasets, jobs, pushes
from service.dispatch import ALERT_JOB_KIND  # a dead alert job is already counted as its dead alert

BAD_PUSH_OUTCOMES = ("abandoned", "rejected")
DEAD = "dead"
CHART_W, CHART_H = 720, 170  # SVG user units
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 48, 8, 10, 34


# What counts as a failure, each at the time it ended: (time column, condition).
FAILURES: list[tuple[Any, list[Any]]] = [
    (alerts.c.updated_at, [alerts.c.status == DEAD]),
    (jobs.c.finished_at, [jobs.c.status == DEAD, jobs.c.kind != ALERT_JOB_KIND]),
    (sa.func.coalesce(pushes.c.finished_at, pushes.c.started_at), [pushes.c.outcome.in_(BAD_PUSH_OUTCOMES)]),
    (sa.func.coalesce(datasets.c.completed_at, datasets.c.updated_at), [datasets.c.status.in_(sorted(ERROR_STATUSES))]),
]


@dataclass(frozen=True)
class Window:
    name: str  # the `?window=` value
    label: str
    bucket_s: int
    buckets: int
    tick_every: int  # an x-axis label every this many buckets
    tick_format: str  # strftime of the tick labels (UTC)


WINDOWS = {
    "24h": Window("24h", "last 24 hours, hourly", 3600, 24, 3, "%H:%M"),
    "7d": Window("7d", "last 7 days, every 6 hours", 6 * 3600, 28, 4, "%a %d"),
}
DEFAULT_WINDOW = "24h"


@dataclass
class Bucket:
    start: float
    deliveries: int = 0  # webhook alerts received
    failures: int = 0  # dead alerts + dead jobs + rejected/abandoned pushes + datasets ended in error
    pushes: int = 0  # pushes started
    lag_s: float | None = None  # the longest a due job waited for a worker (None: no job started)


@dataclass
class Activity:
    window: Window
    start: float
    end: float
    buckets: list[Bucket] = field(default_factory=list)


def bounds(window: Window, now: float) -> tuple[float, float]:
    """Buckets aligned on whole units of UTC time, the last one holding `now`."""
    end = (math.floor(now / window.bucket_s) + 1) * window.bucket_s
    return float(end - window.bucket_s * window.buckets), float(end)


def _index(column: Any, start: float, width: int, dialect: str) -> sa.ColumnElement[Any]:
    """Which bucket a time falls in. CAST truncates on SQLite (towards zero: times here are >= start) but
    rounds on PostgreSQL, so PostgreSQL floors explicitly; SQLite has no floor() in every build."""
    offset = (column - sa.literal(start, sa.Double)) / sa.literal(float(width), sa.Double)
    return sa.func.floor(offset) if dialect == "postgresql" else sa.cast(offset, sa.Integer)


async def _counts(conn: AsyncConnection, at: Any, where: list[Any], start: float, end: float,
                  width: int, measure: Any = None) -> dict[int, Any]:  # fmt: skip
    """{bucket index: count (or `measure`)} of the rows whose time `at` falls in [start, end)."""
    idx = _index(at, start, width, conn.dialect.name).label("idx")
    value = sa.func.count() if measure is None else measure
    query = sa.select(idx, value).where(at >= start, at < end, *where).group_by(idx)
    return {int(i): v for i, v in await conn.execute(query)}


async def activity(engine: AsyncEngine, window: Window, now: float) -> Activity:
    start, end = bounds(window, now)
    width = window.bucket_s
    out = Activity(window, start, end, [Bucket(start + i * width) for i in range(window.buckets)])
    async with engine.connect() as conn:
        deliveries = await _counts(conn, alerts.c.received_at, [], start, end, width)
        started = await _counts(conn, pushes.c.started_at, [], start, end, width)
        failures = [await _counts(conn, at, where, start, end, width) for at, where in FAILURES]
        # A job's lag: from when it was due (run_at) to when its latest attempt started.
        lag = await _counts(conn, jobs.c.started_at, [jobs.c.started_at.is_not(None)], start, end, width,
                            sa.func.max(jobs.c.started_at - jobs.c.run_at))  # fmt: skip
    for i, bucket in enumerate(out.buckets):
        bucket.deliveries = int(deliveries.get(i, 0))
        bucket.pushes = int(started.get(i, 0))
        bucket.failures = sum(int(counts.get(i, 0)) for counts in failures)
        bucket.lag_s = None if i not in lag else max(0.0, float(lag[i]))
    return out


# -- SVG geometry ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    w: float
    h: float
    title: str  # the bar's <title>: what a screen reader (or a hover) says


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class Chart:
    key: str
    title: str
    unit: str  # the y axis's label
    top: str  # the y axis's highest value, as printed
    bars: list[Bar]
    ticks: list[Tick]
    total: str  # for the heading: the window's sum (or max, for lag)
    width: int = CHART_W
    height: int = CHART_H
    left: int = PAD_LEFT
    base: float = CHART_H - PAD_BOTTOM  # the x axis's y


def _nice_top(peak: float) -> float:
    """A round axis maximum at or above `peak` (1, 2 or 5 times a power of ten), never 0."""
    if peak <= 0:
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(peak))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= peak)


def _number(value: float) -> str:
    return f"{round(value, 1):g}" if value < 10 else f"{value:,.0f}"


def utc(ts: float, fmt: str = "%Y-%m-%d %H:%M") -> str:
    return datetime.fromtimestamp(ts, UTC).strftime(fmt)


def chart(key: str, title: str, unit: str, values: list[float | None], starts: list[float], window: Window) -> Chart:
    """Bars for `values` (one per bucket starting at `starts`), scaled to a round maximum."""
    top = _nice_top(max((v for v in values if v is not None), default=0.0))
    plot_w, plot_h = CHART_W - PAD_LEFT - PAD_RIGHT, CHART_H - PAD_TOP - PAD_BOTTOM
    slot = plot_w / len(values)
    bars, ticks = [], []
    for i, (value, at) in enumerate(zip(values, starts, strict=True)):
        h = 0.0 if value is None else plot_h * value / top
        shown = "no jobs started" if value is None else f"{_number(value)} {unit}"
        label = f"{utc(at)} to {utc(at + window.bucket_s, '%H:%M')} UTC: {shown}"
        x = PAD_LEFT + i * slot
        bars.append(Bar(round(x + slot * 0.1, 2), round(PAD_TOP + plot_h - h, 2), round(slot * 0.8, 2),
                        round(h, 2), label))  # fmt: skip
        if i % window.tick_every == 0:
            ticks.append(Tick(round(x + slot / 2, 2), utc(at, window.tick_format)))
    present = [v for v in values if v is not None]
    total = _number(max(present, default=0.0)) + " s max" if unit == "seconds" else _number(sum(present))
    return Chart(key, title, unit, _number(top), bars, ticks, total)


def charts(data: Activity) -> list[Chart]:
    starts = [b.start for b in data.buckets]
    series: list[tuple[str, str, str, list[float | None]]] = [
        ("deliveries", "Deliveries (webhook alerts received)", "alerts", [b.deliveries for b in data.buckets]),
        ("failures", "Failures (dead alerts and jobs, rejected pushes, failed datasets)", "failures",
         [b.failures for b in data.buckets]),
        ("pushes", "Pushes to Codat", "pushes", [b.pushes for b in data.buckets]),
        ("queue-lag", "Queue lag (longest wait of a due job for a worker)", "seconds",
         [b.lag_s for b in data.buckets]),
    ]  # fmt: skip
    return [chart(key, title, unit, values, starts, data.window) for key, title, unit, values in series]
