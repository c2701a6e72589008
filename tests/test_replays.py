"""Bulk replay and bulk retry (service/replays.py) on both backends: the dry run counts what the run does,
an interrupted run resumed by its id acts on each item once, and the rate is held (injected clock)."""

from __future__ import annotations

import argparse
import itertools
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service import replays
from service.cli import entry as cli
from service.cli.admin import alerts_replay
from service.cli.replays import jobs_retry
from service.clock import FixedClock
from service.db import create_engine, jobs, replay_runs
from service.errors import InvalidRequest
from service.queue import ALERT_JOB_KIND
from service.testing import running_app
from tests import ui_factories as f
from tests.conftest import ADMIN_TOKEN, make_settings
from tests.queue_helpers import eventually

T0 = 1_750_000_000.0
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
MATCHING = [f"m-{i:02d}" for i in range(12)]  # dead alerts of co-1 inside the range


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """Dead alerts of co-1 in [T0, T0+12), plus ones the filter leaves out: another company, another status,
    before and after the range. Every alert is as the worker leaves a dead one (its job dead too)."""
    created = create_engine(make_settings(database_url))
    async with created.begin() as conn:
        for i, alert_id in enumerate(MATCHING):
            await conn.run_sync(f.dead_alert, alert_id, "co-1", T0 + i)
        await conn.run_sync(f.dead_alert, "other-company", "co-2", T0 + 1)
        await conn.run_sync(f.dead_alert, "too-early", "co-1", T0 - 10)
        await conn.run_sync(f.dead_alert, "too-late", "co-1", T0 + 100)
        await conn.run_sync(f.alert, "done-one", "co-1", "done", T0 + 2)
    try:
        yield created
    finally:
        await created.dispose()


FILTER = replays.Filter(company="co-1", status="dead", since=T0, until=T0 + 50)


async def replayed(engine: AsyncEngine) -> Counter[str]:
    """Waiting alert jobs per alert: one per replay."""
    query = sa.select(jobs.c.payload).where(jobs.c.kind == ALERT_JOB_KIND, jobs.c.status == "waiting")
    async with engine.connect() as conn:
        return Counter(str(p["alert_id"]) for p in (await conn.execute(query)).scalars())


async def test_the_dry_run_counts_exactly_what_the_run_replays(engine: AsyncEngine) -> None:
    """Dry run: the count and the first ids, nothing changed; the run then replays that many, those alerts."""
    clock = FixedClock(T0 + 1000)
    preview = await replays.preview(engine, replays.ALERTS, FILTER, clock.now())
    untouched = await replayed(engine)
    run = await replays.open_run(engine, replays.ALERTS, FILTER, clock.now())
    ended = await replays.execute(engine, run, clock, replays.Pacer(None, clock))
    counts = await replayed(engine)
    assert preview["count"] == len(MATCHING) == ended.done and ended.finished
    assert preview["sample"] == MATCHING[: replays.SAMPLE]
    assert untouched == Counter()
    assert counts == Counter(MATCHING)


class Interrupted(Exception):
    pass


async def test_an_interrupted_run_resumed_by_its_id_replays_each_alert_once(engine: AsyncEngine) -> None:
    """The run stops after 5 alerts (as a kill would); the same run id continues with the 6th: 12 replays in all."""
    clock = FixedClock(T0 + 1000)
    waits = 0

    async def dying_sleep(seconds: float) -> None:
        clock.advance(seconds)

    class DiesAfterFive(replays.Pacer):
        async def wait(self) -> None:
            nonlocal waits
            waits += 1
            if waits == 6:
                raise Interrupted
            await super().wait()

    run = await replays.open_run(engine, replays.ALERTS, FILTER, clock.now(), run_id="nightly-1")
    with pytest.raises(Interrupted):
        await replays.execute(engine, run, clock, DiesAfterFive(100.0, clock, dying_sleep))
    after_crash = await replayed(engine)
    resumed = await replays.open_run(engine, replays.ALERTS, replays.Filter(), clock.now(), run_id="nightly-1")
    left = await replays.remaining(engine, resumed)
    ended = await replays.execute(engine, resumed, clock, replays.Pacer(None, clock))
    counts = await replayed(engine)
    assert after_crash == Counter(MATCHING[:5])
    assert (resumed.done, resumed.cursor_id, left) == (5, MATCHING[4], 7)
    assert ended.done == 12 and counts == Counter(MATCHING)  # each once
    with pytest.raises(InvalidRequest):  # the run keeps its filter: another one with its id is refused
        await replays.open_run(engine, replays.ALERTS, replays.Filter(company="co-2"), clock.now(), run_id="nightly-1")


async def test_the_rate_is_held_on_an_injected_clock(engine: AsyncEngine) -> None:
    """--rate 4: twelve alerts start 0.25 s apart (the clock only moves when the pacer sleeps)."""
    clock = FixedClock(T0 + 1000)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    started: list[float] = []
    run = await replays.open_run(engine, replays.ALERTS, FILTER, clock.now())
    await replays.execute(engine, run, clock, replays.Pacer(4.0, clock, sleep), progress=lambda *_: started.append(
        clock.now()))  # fmt: skip
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(started)]
    assert len(started) == 12 and gaps == [0.25] * 11
    assert round(sum(slept), 6) == 2.75


@pytest.mark.parametrize("rate", [0.0, -1.0, 1001.0])
def test_a_rate_outside_its_range_is_refused(rate: float) -> None:
    with pytest.raises(InvalidRequest):
        replays.Pacer(rate, FixedClock())


async def test_bulk_retry_of_dead_jobs_by_kind(engine: AsyncEngine) -> None:
    """Dead push jobs of one kind: the dry run counts them, the run brings each back to waiting once."""
    async with engine.begin() as conn:
        pushes = [await conn.run_sync(f.job, "push", {"company_id": f"c{i}"}, "dead", T0 + i) for i in range(3)]
        await conn.run_sync(f.job, "push", {"company_id": "alive"}, "done", T0)
    clock = FixedClock(T0 + 1000)
    flt = replays.Filter(kind="push")
    preview = await replays.preview(engine, replays.JOBS, flt, clock.now())
    run = await replays.open_run(engine, replays.JOBS, flt, clock.now())
    ended = await replays.execute(engine, run, clock, replays.Pacer(None, clock))
    async with engine.connect() as conn:
        states = dict((await conn.execute(sa.select(jobs.c.id, jobs.c.status).where(jobs.c.kind == "push"))).all())
        stored: Any = (await conn.execute(sa.select(replay_runs))).mappings().one()
    assert preview["count"] == 3 == ended.done and preview["sample"] == pushes
    assert [states[i] for i in pushes] == ["waiting"] * 3
    assert stored["finished_at"] is not None and stored["cursor_id"] == str(pushes[-1])


async def test_the_admin_api_dry_runs_then_replays_in_the_background(engine: AsyncEngine, database_url: str) -> None:
    """`POST /v1/alerts/replay` with `dryRun` answers the count; without, 202 and the run goes on in the
    background until `GET /v1/replays/{id}` says finished, having replayed exactly that many; bad filters 422."""
    body = {"companyId": "co-1", "status": "dead", "since": "2025-06-15T15:06:40Z", "until": "2025-06-15T15:07:30Z"}
    async with running_app(make_settings(database_url), clock=FixedClock(T0 + 1000)) as (_, client):
        dry = await client.post("/v1/alerts/replay", json={**body, "dryRun": True}, headers=ADMIN)
        started = await client.post("/v1/alerts/replay", json={**body, "runId": "api-run"}, headers=ADMIN)

        async def finished() -> bool:
            shown = await client.get("/v1/replays/api-run", headers=ADMIN)
            return bool(shown.json()["finished"])

        await eventually(finished, 30)
        shown = (await client.get("/v1/replays/api-run", headers=ADMIN)).json()
        bad = [await client.post("/v1/alerts/replay", json=b, headers=ADMIN) for b in (
            {"status": "gone"}, {"since": "yesterday"}, {"rate": 0}, {"limit": 3}, {"runId": "x" * 40},
            {"since": "2025-06-15T15:07:30Z", "until": "2025-06-15T15:06:40Z"})]  # fmt: skip
        jobs_dry = await client.post("/v1/jobs/retry", json={"kind": "alert", "dryRun": True}, headers=ADMIN)
        missing = await client.get("/v1/replays/nope", headers=ADMIN)
        anonymous = await client.post("/v1/alerts/replay", json={"dryRun": True})
    assert dry.status_code == 200 and dry.json()["count"] == len(MATCHING)
    assert started.status_code == 202 and started.json()["remaining"] == len(MATCHING)
    assert shown["done"] == len(MATCHING) and shown["cursor"]["id"] == MATCHING[-1]
    assert await replayed(engine) == Counter(MATCHING)
    assert [r.status_code for r in bad] == [422] * 6
    assert jobs_dry.json()["count"] == 3  # the dead alert jobs left: another company's, and two outside the range
    assert (missing.status_code, anonymous.status_code) == (404, 401)


def parsed(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


async def test_the_cli_dry_run_then_the_run_by_filter(engine: AsyncEngine, capsys: pytest.CaptureFixture[str]) -> None:
    """`alerts replay --company --status --since --until --dry-run --json` counts; with `--yes --rate 1000/s`
    it replays those and prints its run; `jobs retry --kind alert --dry-run` counts the dead jobs left."""
    window = ("--since", "2025-06-15T15:06:40Z", "--until", "2025-06-15T15:07:30Z")
    dry = parsed("alerts", "replay", "--company", "co-1", "--dead", *window, "--dry-run", "--json")
    assert await alerts_replay(engine, dry) == 0
    counted = json.loads(capsys.readouterr().out)
    real = parsed("alerts", "replay", "--company", "co-1", "--status", "dead", *window, "--yes", "--rate", "1000/s",
                  "--json")  # fmt: skip
    assert await alerts_replay(engine, real) == 0
    out = capsys.readouterr()
    assert await jobs_retry(engine, parsed("jobs", "retry", "--kind", "alert", "--dry-run", "--json")) == 0
    jobs_left = json.loads(capsys.readouterr().out)
    assert counted["count"] == len(MATCHING) == json.loads(out.out)["replayed"]
    assert f"run {json.loads(out.out)['runId']} ({len(MATCHING)} to go" in out.err
    assert await replayed(engine) == Counter(MATCHING)
    assert jobs_left["count"] == 3


@pytest.mark.parametrize("argv", [("alerts", "replay"), ("alerts", "replay", "a-1", "--dead"),
                                  ("alerts", "replay", "a-1", "--yes"), ("alerts", "replay", "--rate", "0"),
                                  ("alerts", "replay", "--since", "yesterday"), ("jobs", "retry", "--rate", "x"),
                                  ("alerts", "replay", "--dead", "--status", "done")])  # fmt: skip
def test_bad_bulk_usage_exits_2(argv: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(list(argv))
    assert exited.value.code == 2


async def test_one_run_taken_up_twice_at_once_replays_each_alert_once(engine: AsyncEngine) -> None:
    """Two processes resume the same run from the same cursor: the first carries it; the second finds the
    cursor moved on its first item and stops (RunTaken) having replayed nothing."""
    clock = FixedClock(T0 + 1000)
    # No status in the filter: replayed alerts still match it, so only the cursor tells the second run.
    every = replays.Filter(company="co-1", since=T0, until=T0 + 50)
    await replays.open_run(engine, replays.ALERTS, every, clock.now(), run_id="twice")
    first = await replays.open_run(engine, replays.ALERTS, replays.Filter(), clock.now(), run_id="twice")
    second = await replays.open_run(engine, replays.ALERTS, replays.Filter(), clock.now(), run_id="twice")
    ended = await replays.execute(engine, first, clock, replays.Pacer(None, clock))
    with pytest.raises(replays.RunTaken):
        await replays.execute(engine, second, clock, replays.Pacer(None, clock))
    assert ended.done == len(MATCHING) + 1  # and the done alert of co-1 in the range
    assert await replayed(engine) == Counter([*MATCHING, "done-one"])  # each once
