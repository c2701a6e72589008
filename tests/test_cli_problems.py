"""`codat-relay problems list|ack`, in-process on both backends: the API's filters and shape, a readable age."""

from __future__ import annotations

import argparse
import json
import time

import pytest

from service.cli import entry as cli
from service.cli.common import CommandFailed
from service.cli.problems import problems_ack, problems_list
from service.clock import FixedClock
from service.db import create_engine
from service.notifications import Kind, Notification, Notifier
from service.problems import age
from tests.conftest import make_settings


def parsed(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["problems", *argv])


async def test_problems_are_listed_filtered_and_acknowledged(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`list --json` is the API's Problem; `--status`/`--company` filter; `ack` marks it, an unknown id exits 1."""
    engine = create_engine(make_settings(database_url))
    clock = FixedClock(time.time() - 7200)  # opened two hours ago
    notifier = Notifier(engine, ["log"], dedupe_s=3600, clock=clock)
    try:
        await notifier.notify(Notification(Kind.SYNC_FAILED, "sync failed", company_id="co-1", subject="s-1"))
        await notifier.notify(Notification(Kind.UPDATE_CONFLICT, "conflict", company_id="co-2", subject="orders:o-1"))
        assert await problems_list(engine, parsed("list", "--json")) == 0
        everything = json.loads(capsys.readouterr().out)
        assert await problems_list(engine, parsed("list", "--company", "co-1", "--json")) == 0
        of_one = json.loads(capsys.readouterr().out)
        target = of_one[0]["id"]
        assert await problems_ack(engine, parsed("ack", target, "--by", "sam", "--json")) == 0
        acked = json.loads(capsys.readouterr().out)
        assert await problems_list(engine, parsed("list", "--status", "acknowledged")) == 0
        table = capsys.readouterr().out
        with pytest.raises(CommandFailed):
            await problems_ack(engine, parsed("ack", "no-such-problem"))
    finally:
        await engine.dispose()
    assert sorted(p["kind"] for p in everything) == ["sync_failed", "update_conflict"]
    assert all(p["state"] == "open" and 7100 < p["ageSeconds"] < 7300 for p in everything)
    assert [p["companyId"] for p in of_one] == ["co-1"]
    assert (acked["state"], acked["acknowledgedBy"]) == ("acknowledged", "sam")
    assert target in table and "2h 0m" in table and "co-2" not in table


@pytest.mark.parametrize(("seconds", "shown"), [(0, "0s"), (59.9, "59s"), (61, "1m 1s"), (3600, "1h 0m"),
                                                (90061, "1d 1h")])  # fmt: skip
def test_age_is_readable(seconds: float, shown: str) -> None:
    assert age(seconds) == shown


def test_a_status_outside_the_three_is_bad_usage() -> None:
    with pytest.raises(SystemExit) as exited:
        parsed("list", "--status", "closed")
    assert exited.value.code == 2
