"""Operator commands. They use the same functions as the admin API, straight on the database."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service import syncs
from service.alert_search import AlertSearch, BadSearch, search_alerts
from service.alert_views import MAX_LIMIT, alert_json
from service.cli.common import Command, CommandFailed, emit, load_settings_or_fail, with_codat, with_engine
from service.cli.replays import add_filter_arguments, alerts_bulk, has_filter, jobs_retry
from service.clock import SystemClock
from service.db import alerts, create_engine, dispose
from service.dispatch import replay_alert
from service.sandbox.config import add_arguments as add_sandbox_arguments
from service.tracking import follow_sync
from service.types import AlertKind, AlertStatus

ALERT_COLUMNS = ("id", "kind", "type", "companyId", "status", "attempts", "receivedAt")
DEFAULT_LIST_LIMIT = 50  # a screenful; the API's default is 100


async def alerts_list(engine: AsyncEngine, args: argparse.Namespace) -> int:
    """`alerts list` and `alerts search TEXT`: the API's search (service/alert_search.py), newest first.
    A further page is named on stderr (`--cursor …`), so stdout stays the table or the JSON list."""
    search = AlertSearch(
        q=args.q, company=args.company, dataset=args.dataset, delivery=args.delivery, type=args.type,
        kind=args.kind, status=args.status, limit=args.limit, cursor=args.cursor,
    )
    try:
        page = await search_alerts(engine, search)
    except BadSearch as exc:
        raise CommandFailed(str(exc)) from None
    emit([alert_json(r) for r in page.rows], args, ALERT_COLUMNS)
    if page.next_cursor is not None:
        print(f"more: add --cursor {page.next_cursor}", file=sys.stderr)
    return 0


async def alerts_show(engine: AsyncEngine, args: argparse.Namespace) -> int:
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(alerts).where(alerts.c.id == args.id))).mappings().first()
    if row is None:
        raise CommandFailed(f"no alert {args.id}")
    emit(alert_json(row, detail=True), args)
    return 0


async def _replay_one(engine: AsyncEngine, alert_id: str) -> bool:
    return await replay_alert(engine, alert_id, SystemClock().now())


async def alerts_replay(engine: AsyncEngine, args: argparse.Namespace) -> int:
    if args.id is None:
        return await alerts_bulk(engine, args)  # by filter: --dead, --company, --kind, --status, --since, …
    if not await _replay_one(engine, args.id):
        raise CommandFailed(f"no alert {args.id}")
    emit({"status": "queued", "id": args.id}, args)
    return 0


def list_limit(raw: str) -> int:
    """`--limit`: 1 to 1000, as the API's `limit`; anything else is bad usage (exit 2)."""
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)


def cmd_sandbox(args: argparse.Namespace) -> int:
    from service.sandbox import config_from_args, run_sandbox

    run_sandbox(config_from_args(args), args.host, args.port)
    return 0


async def _follow(company_id: str, kind: str, summary: Any) -> None:
    """A sync the CLI started is kept with its range and read by the workers until it ends
    (`tracking.follow_sync`): no webhook tells it."""
    engine = create_engine(load_settings_or_fail(operator=True))
    try:
        await follow_sync(engine, company_id, SystemClock().now(), started=(kind, summary))
    except (OSError, sa.exc.SQLAlchemyError) as exc:
        # Codat has started the sync: its answer is printed; only the daily sync check will see its end.
        print(f"codat-relay: the sync started, but following it failed (database unavailable: "
              f"{type(exc).__name__}); the daily sync check will apply it", file=sys.stderr)  # fmt: skip
    finally:
        await dispose(engine)


def _checked(parser: argparse.ArgumentParser, command: Command) -> Command:
    """`alerts replay`: an ID, or a filter (--dead, --company, …): exactly one; a mix is bad usage (exit 2)."""

    def run(args: argparse.Namespace) -> int:
        bulk = has_filter(args)
        if bulk == (args.id is not None):
            parser.error("give an alert ID or a filter (--dead, --status, --kind, --company, --since, --until)")
        if args.dead and args.status not in (None, "dead"):
            parser.error("--dead is --status dead")
        if args.id is not None and args.yes:
            parser.error("--yes goes with a filter")
        return command(args)

    return run


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], json_flag: argparse.ArgumentParser) -> None:

    alerts_p = sub.add_parser("alerts", help="inspect and replay received alerts")
    alerts_sub = alerts_p.add_subparsers(dest="alerts_command", required=True, metavar="ACTION")
    lst = alerts_sub.add_parser("list", parents=[json_flag], help="newest first, filtered")
    lst.add_argument("--q", help="text in the body (a substring, any case)")
    search = alerts_sub.add_parser("search", parents=[json_flag], help="alerts whose body holds TEXT, newest first")
    search.add_argument("q", metavar="TEXT", help="text in the body (a substring, any case)")
    for parser in (lst, search):
        parser.add_argument("--status", choices=[s.value for s in AlertStatus])
        parser.add_argument("--kind", choices=[k.value for k in AlertKind])
        parser.add_argument("--company", help="company id")
        parser.add_argument("--dataset", help="dataset id")
        parser.add_argument("--delivery", help="delivery id (the alert's id)")
        parser.add_argument("--type", help="event type exactly as received (e.g. read.completed)")
        parser.add_argument("--limit", type=list_limit, default=DEFAULT_LIST_LIMIT, help=f"1 to {MAX_LIMIT}")
        parser.add_argument("--cursor", help="the next page, as a previous page named it")
        parser.set_defaults(func=with_engine(alerts_list))
    show = alerts_sub.add_parser("show", parents=[json_flag], help="one alert with its raw body")
    show.add_argument("id")
    show.set_defaults(func=with_engine(alerts_show))
    rep = alerts_sub.add_parser("replay", parents=[json_flag],
                                help="process an alert again, or every alert a filter matches (oldest first)")
    rep.add_argument("id", nargs="?", help="alert id (or a filter)")
    rep.add_argument("--dead", action="store_true", help="every dead alert (--status dead)")
    rep.add_argument("--status", choices=[s.value for s in AlertStatus])
    rep.add_argument("--kind", choices=[k.value for k in AlertKind])
    rep.add_argument("--company", help="only this company's")
    rep.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    add_filter_arguments(rep, alerts=True)
    rep.set_defaults(func=_checked(rep, with_engine(alerts_replay)))

    jobs_p = sub.add_parser("jobs", help="the job queue: bulk retry of dead jobs")
    jobs_sub = jobs_p.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    retry = jobs_sub.add_parser("retry", parents=[json_flag], help="run dead jobs again (oldest first)")
    add_filter_arguments(retry, alerts=False)
    retry.set_defaults(func=with_engine(jobs_retry))

    sync = sub.add_parser("sync", help="Codat manual syncs and sync status")
    sync_sub = sync.add_subparsers(dest="sync_command", required=True, metavar="ACTION")
    latest = sync_sub.add_parser("latest", parents=[json_flag], help="sync from the last success up to --to")
    latest.add_argument("company")
    latest.add_argument("--to", help="ISO-8601 instant (default: now)")
    latest.set_defaults(func=with_codat(lambda c, a: syncs.sync_latest(c, a.company, a.to, follow=_follow)))
    historic = sync_sub.add_parser("historic", parents=[json_flag], help="re-sync a past date range")
    historic.add_argument("company")
    historic.add_argument("--start", required=True, help="ISO-8601 instant")
    historic.add_argument("--end", required=True, help="ISO-8601 instant")
    historic.set_defaults(
        func=with_codat(lambda c, a: syncs.sync_historic(c, a.company, a.start, a.end, follow=_follow))
    )
    status = sync_sub.add_parser("status", parents=[json_flag], help="Codat's sync status of a company")
    status.add_argument("company")
    status.set_defaults(func=with_codat(lambda c, a: syncs.sync_status(c, a.company)))

    sandbox = sub.add_parser("sandbox", help="run the local Codat sandbox (a stand-in for api.codat.io)")
    add_sandbox_arguments(sandbox)
    sandbox.set_defaults(func=cmd_sandbox)
