"""The handler seam is typed: `Context` and `Deps` name real types, so mypy strict sees inside handlers."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any, get_args, get_type_hints

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from service.clock import Clock
from service.codat.client import CodatClient
from service.notifications import Notifier
from service.settings import Settings
from service.tracking import Tracker
from service.types import Context, Deps

# What service/types.py imports under TYPE_CHECKING, to resolve its annotations here.
NAMES = {"AsyncEngine": AsyncEngine, "Clock": Clock, "CodatClient": CodatClient, "Notifier": Notifier,
         "Settings": Settings, "Tracker": Tracker, "structlog": structlog}  # fmt: skip


def _mentions_any(hint: object) -> bool:
    return hint is Any or any(_mentions_any(arg) for arg in get_args(hint))


def test_no_field_of_context_is_any() -> None:
    """Every field of the handler `Context` resolves to a real type, none is (or holds) `Any`."""
    hints = get_type_hints(Context, localns=NAMES)
    assert [f.name for f in dataclasses.fields(Context)] == list(hints)
    assert {name: hint for name, hint in hints.items() if _mentions_any(hint)} == {}
    assert hints["codat"] is CodatClient and hints["notifier"] is Notifier and hints["tracker"] is Tracker
    assert hints["store"] is AsyncEngine


def test_context_holds_what_handlers_use_and_no_settings() -> None:
    """Handlers reach the push pipeline through `ctx.tracker`; settings are not theirs to read."""
    assert {f.name for f in dataclasses.fields(Context)} == {
        "store", "codat", "notifier", "tracker", "clock", "log", "attempt"
    }  # fmt: skip


def test_no_member_of_deps_is_any() -> None:
    """`Deps`, what jobs take from the process, is typed as fully: its codat client, notifier and tracker too."""
    members = {name: get_type_hints(value.fget, localns=NAMES)["return"]
               for name, value in vars(Deps).items() if isinstance(value, property)}  # fmt: skip
    assert set(members) == {"engine", "clock", "settings", "codat", "notifier", "tracker"}
    assert {name: hint for name, hint in members.items() if _mentions_any(hint)} == {}


def test_mypy_strict_covers_the_handlers() -> None:
    """`make test` type-checks `handlers` (through `Context`) with mypy --strict, and no `Any` may be written there."""
    config = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["tool"]["mypy"]
    assert config["strict"] is True and {"service", "handlers"} <= set(config["packages"])
    [handlers] = [o for o in config["overrides"] if "handlers.*" in o["module"]]
    assert handlers["disallow_any_explicit"] is True
    assert not (Path(__file__).parent.parent / "handlers" / "_deps.py").exists()  # no side door to a second Tracker
