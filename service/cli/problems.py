"""`codat-relay problems list|ack`: the problems staff were told of, with their age (as `GET /v1/problems`)."""

from __future__ import annotations

import argparse
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from service import problems
from service.cli.admin import list_limit
from service.cli.common import CommandFailed, emit, with_engine
from service.clock import SystemClock
from service.db import writer

COLUMNS = ("id", "kind", "state", "companyId", "subject", "count", "age", "openedAt")
DEFAULT_LIST_LIMIT = 50
DEFAULT_BY = "cli"


def _shown(row: Any, now: float, args: argparse.Namespace) -> dict[str, Any]:
    view = problems.problem_json(row, now)
    return view if args.json else {**view, "age": problems.age(view["ageSeconds"])}


async def problems_list(engine: AsyncEngine, args: argparse.Namespace) -> int:
    state = problems.State(args.status) if args.status else None
    query = problems.listing(state=state, company_id=args.company, limit=args.limit)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    now = SystemClock().now()
    emit([_shown(row, now, args) for row in rows], args, COLUMNS)
    return 0


async def problems_ack(engine: AsyncEngine, args: argparse.Namespace) -> int:
    now = SystemClock().now()
    async with writer(engine).begin() as conn:
        row = await problems.acknowledge(conn, args.id, args.by, now)
    if row is None:
        raise CommandFailed(f"no problem {args.id}")
    emit(_shown(row, now, args), args)
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], json_flag: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("problems", help="problems staff were told of: open, acknowledged, resolved")
    actions = parser.add_subparsers(dest="problems_command", required=True, metavar="ACTION")
    lst = actions.add_parser("list", parents=[json_flag], help="newest first, with their age")
    lst.add_argument("--status", "--state", dest="status", choices=[s.value for s in problems.State],
                     help="open: every unresolved one")  # fmt: skip
    lst.add_argument("--company", help="company id")
    lst.add_argument("--limit", type=list_limit, default=DEFAULT_LIST_LIMIT, help="1 to 1000")
    lst.set_defaults(func=with_engine(problems_list))
    ack = actions.add_parser("ack", parents=[json_flag], help="acknowledge: it stays open until it clears")
    ack.add_argument("id")
    ack.add_argument("--by", default=DEFAULT_BY, help=f"who is on it (default {DEFAULT_BY})")
    ack.set_defaults(func=with_engine(problems_ack))
