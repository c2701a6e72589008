"""`codat-relay alerts list`, in-process on both backends: the API's order (newest first, id breaking ties)
and its `limit` range."""

from __future__ import annotations

import argparse
import json

import pytest

from service.cli import entry as cli
from service.cli.admin import alerts_list
from service.cli.common import CommandFailed, codat_failure
from service.codat.models import CodatError, CodatNotFound, CodatRateLimited, CodatUnavailable
from service.db import create_engine
from tests import ui_factories as f
from tests.conftest import make_settings

AT = 1_750_000_000.0


def parsed(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["alerts", "list", *argv])


async def test_alerts_received_together_are_listed_by_id_newest_first(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Alerts of one instant come in id order (descending, as the API), after newer ones; --limit cuts the list."""
    engine = create_engine(make_settings(database_url))
    try:
        async with engine.begin() as conn:
            for alert_id in ("b", "d", "a", "c"):
                await conn.run_sync(f.alert, alert_id, "co-1", "done", AT)
            await conn.run_sync(f.alert, "newest", "co-1", "done", AT + 1)
        assert await alerts_list(engine, parsed("--json")) == 0
        everything = [a["id"] for a in json.loads(capsys.readouterr().out)]
        assert await alerts_list(engine, parsed("--json", "--limit", "3")) == 0
        first_three = [a["id"] for a in json.loads(capsys.readouterr().out)]
    finally:
        await engine.dispose()
    assert everything == ["newest", "d", "c", "b", "a"]
    assert first_three == ["newest", "d", "c"]


async def test_alerts_search_and_list_q_find_text_in_the_body_and_page_on(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`alerts search TEXT` = `alerts list --q TEXT`, with the API's filters; a further page is named on stderr."""
    engine = create_engine(make_settings(database_url))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(f.alert, "needle-1", "co-1", "done", AT)
            await conn.run_sync(f.alert, "needle-2", "co-2", "done", AT + 1, type_="read.completed")
            await conn.run_sync(f.alert, "hay-3", "co-1", "done", AT + 2)
        assert await alerts_list(engine, searched("NEEDLE", "--json")) == 0
        found = [a["id"] for a in json.loads(capsys.readouterr().out)]
        assert await alerts_list(engine, parsed("--q", "needle", "--json", "--company", "co-1")) == 0
        of_co_1 = [a["id"] for a in json.loads(capsys.readouterr().out)]
        assert await alerts_list(engine, searched("needle", "--json", "--type", "read.completed")) == 0
        of_type = [a["id"] for a in json.loads(capsys.readouterr().out)]
        assert await alerts_list(engine, searched("needle", "--json", "--limit", "1")) == 0
        first = capsys.readouterr()
        cursor = first.err.split("--cursor ", 1)[1].strip()
        assert await alerts_list(engine, searched("needle", "--json", "--limit", "1", "--cursor", cursor)) == 0
        second = capsys.readouterr()
        with pytest.raises(CommandFailed, match=r"^cursor: "):
            await alerts_list(engine, searched("needle", "--cursor", "garbage"))
    finally:
        await engine.dispose()
    assert found == ["needle-2", "needle-1"]
    assert of_co_1 == ["needle-1"]
    assert of_type == ["needle-2"]
    assert [a["id"] for a in json.loads(first.out)] == ["needle-2"]
    assert [a["id"] for a in json.loads(second.out)] == ["needle-1"] and second.err == ""


def searched(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["alerts", "search", *argv])


@pytest.mark.parametrize("bad", ["0", "-1", "1001", "ten", "1e3", " 5"])
def test_limit_outside_1_to_1000_is_bad_usage(bad: str) -> None:
    """--limit outside the API's 1-1000 (or not a whole number) is an argparse error: exit 2."""
    with pytest.raises(SystemExit) as exited:
        parsed("--limit", bad)
    assert exited.value.code == 2


def test_limit_bounds_are_accepted() -> None:
    """1 and 1000 are fine; the default is 50."""
    assert (parsed("--limit", "1").limit, parsed("--limit", "1000").limit, parsed().limit) == (1, 1000, 50)


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (CodatRateLimited("Codat answered 429", after_s=120),
         "Codat refused: CodatRateLimited: Codat answered 429 (try again in 120 s)"),
        (CodatUnavailable("Codat unreachable", after_s=5),
         "Codat refused: CodatUnavailable: Codat unreachable (try again in 5 s)"),
        (CodatNotFound("Codat answered 404", status_code=404), "Codat refused: CodatNotFound: Codat answered 404"),
    ],
)
def test_a_codat_refusal_is_one_line_saying_when_to_come_back(error: CodatError, line: str) -> None:
    """`sync …` failing on Codat prints one line; a 429/503 says when to retry, the client's `after_s` as is."""
    assert codat_failure(error) == line
