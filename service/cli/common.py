"""What every operator command shares: settings, a one-line failure, output as a table or JSON, resources."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service.codat.client import CodatClient, CodatError
from service.db import create_engine
from service.errors import InvalidRequest, RetryLater
from service.settings import Settings, SettingsError, load_settings

Command = Callable[[argparse.Namespace], int]


class CommandFailed(Exception):
    """A one-line reason; the command exits 1."""


def load_settings_or_fail() -> Settings:
    from service.logs import configure_logging

    try:
        settings = load_settings()
    except SettingsError as exc:
        raise CommandFailed(str(exc)) from None
    configure_logging(settings, sys.stderr, capture_stdlib=True)
    return settings


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    if not rows:
        print("(none)")
        return
    cells = [[("" if row.get(c) is None else str(row.get(c))) for c in columns] for row in rows]
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
            shown = json.dumps(value) if isinstance(value, dict | list) else value
            print(f"{key.ljust(width)}  {shown}")
    else:
        print(data)


def with_engine(func: Callable[[AsyncEngine, argparse.Namespace], Awaitable[int]]) -> Command:
    def run(args: argparse.Namespace) -> int:
        settings = load_settings_or_fail()

        async def go() -> int:
            engine = create_engine(settings)
            try:
                return await func(engine, args)
            except (OSError, sa.exc.SQLAlchemyError) as exc:
                raise CommandFailed(f"database unavailable: {type(exc).__name__}") from None
            finally:
                await engine.dispose()

        return asyncio.run(go())

    return run


def codat_failure(exc: CodatError) -> str:
    """The one line a Codat refusal prints; a "come back later" says when, as the client translated it."""
    line = f"Codat refused: {type(exc).__name__}: {exc.error or exc}"
    return f"{line} (try again in {exc.after_s} s)" if isinstance(exc, RetryLater) else line


def with_codat(func: Callable[[CodatClient, argparse.Namespace], Awaitable[Any]]) -> Command:
    """Run `func` with a Codat client from the settings; Codat's refusals become a one-line failure."""

    def run(args: argparse.Namespace) -> int:
        settings = load_settings_or_fail()

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
