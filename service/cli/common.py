"""What every operator command shares: settings, a one-line failure, output as a table or JSON, resources."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from service.codat.client import CodatClient, CodatError
from service.db import create_engine, dispose
from service.errors import InvalidRequest, RetryLater
from service.local_env import with_local_env
from service.settings import Settings, SettingsError, load_settings

Command = Callable[[argparse.Namespace], int]


class CommandFailed(Exception):
    """A one-line reason; the command exits 1."""


def load_settings_or_fail(*, operator: bool = False) -> Settings:
    """The settings from the environment; an operator command also reads `make run`'s `.relay-local.env`.

    Operator commands receive no webhooks, so they need no webhook authentication; `serve`, `web` and
    `worker` read the environment alone (a deployment never picks up a developer's file).
    """
    from service.logs import configure_logging

    try:
        settings = load_settings(with_local_env(), serving=False) if operator else load_settings()
    except SettingsError as exc:
        raise CommandFailed(str(exc)) from None
    configure_logging(settings, sys.stderr, capture_stdlib=True)
    return settings


def readable(value: Any) -> str:
    """One vocabulary for people: yes/no for booleans (as `companies show` and the page say), "" for none."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "" if value is None else str(value)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    if not rows:
        print("(none)")
        return
    cells = [[readable(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def emit(data: Any, args: argparse.Namespace, columns: Sequence[str] | None = None) -> None:
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, indent=2, default=str)
        print()
    elif columns is not None and isinstance(data, list):
        print_table(data, columns)
    elif isinstance(data, list):
        for item in data:
            emit(item, args)
            print()
    elif isinstance(data, dict):
        width = max((len(k) for k in data), default=0)
        for key, value in data.items():
            shown = json.dumps(value) if isinstance(value, dict | list) else readable(value)
            print(f"{key.ljust(width)}  {shown}")
    else:
        print(data)


def shown_url(database_url: str) -> str:
    """The database URL as an error may print it: never its password."""
    try:
        return make_url(database_url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "(unparsable RELAY_DATABASE_URL)"


def check_database_exists(settings: Settings) -> None:
    """Operator commands never create a database: an SQLite file that is not there is a one-line failure.

    (Opening a missing SQLite file creates an empty one, which then only says "no such table".)
    """
    if not settings.is_sqlite:
        return  # PostgreSQL never creates a database on connect; its own error names the problem
    path = make_url(settings.database_url).database
    if path and path != ":memory:" and not path.startswith("file:") and not Path(path).is_file():
        raise CommandFailed(
            f"no database at {shown_url(settings.database_url)}: start `make run` (or run `codat-relay migrate`) "
            "first, or set RELAY_DATABASE_URL"
        )


def with_engine(func: Callable[[AsyncEngine, argparse.Namespace], Awaitable[int]]) -> Command:
    def run(args: argparse.Namespace) -> int:
        settings = load_settings_or_fail(operator=True)
        check_database_exists(settings)

        async def go() -> int:
            engine = create_engine(settings)
            try:
                return await func(engine, args)
            except BrokenPipeError:
                raise  # the reader went away (`| head`): not the database's fault; main() ends quietly
            except (OSError, sa.exc.SQLAlchemyError) as exc:
                raise CommandFailed(
                    f"database unavailable at {shown_url(settings.database_url)}: {type(exc).__name__}"
                ) from None
            finally:
                await dispose(engine)

        return asyncio.run(go())

    return run


def codat_failure(exc: CodatError) -> str:
    """The one line a Codat refusal prints; a "come back later" says when, as the client translated it."""
    line = f"Codat refused: {type(exc).__name__}: {exc.error or exc}"
    return f"{line} (try again in {exc.after_s} s)" if isinstance(exc, RetryLater) else line


def with_codat(func: Callable[[CodatClient, argparse.Namespace], Awaitable[Any]]) -> Command:
    """Run `func` with a Codat client from the settings; Codat's refusals become a one-line failure."""

    def run(args: argparse.Namespace) -> int:
        settings = load_settings_or_fail(operator=True)

        async def go() -> Any:
            async with CodatClient.from_settings(settings) as codat:
                return await func(codat, args)

        try:
            emit(asyncio.run(go()), args)
        except InvalidRequest as exc:
            print(f"codat-relay: {exc.detail}", file=sys.stderr)
            return 2
        except CodatError as exc:
            raise CommandFailed(codat_failure(exc)) from None
        except httpx.HTTPError as exc:
            raise CommandFailed(f"Codat unreachable: {type(exc).__name__}") from None
        return 0

    return run
