"""`codat-relay companies show / pause / resume / repush / purge`: the admin API's company actions, from a shell.

They call the same functions as the API (service/companies.py, service/outbox.py) straight on the
database; a running worker picks up the pushes they schedule.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from service.cli.common import CommandFailed, emit, print_table, with_engine
from service.cli.progress import ProgressBar
from service.clock import SystemClock
from service.companies import REPUSH_COUNTS_COLUMNS, company_view, full_repush, pause_company, resume_company
from service.errors import NotFound
from service.health import MAX_PAGE, PROBLEM_KINDS, CompanyQuery, list_companies
from service.outbox import MANUAL_PAUSE, State
from service.purge import purge_company
from service.records import DATA_TYPES, MODELS

LIST_COLUMNS = ("id", "name", "paused", "connection", "failing", "next sync", "records", "problems")
DATASET_COLUMNS = ("id", "dataType", "status", "records", "requestedAt", "completedAt", "errorMessage")


def last_sync_text(sync: dict[str, Any]) -> str:
    """The API's `lastSync` in words: `checkedAt` is when codat-relay last asked Codat."""
    if sync["code"] is not None:
        seen = f"{sync['code']} {sync['meaning'] or ''} at {sync['at']}"
    elif sync["checkedAt"] is not None:
        seen = "no sync yet"
    else:
        return "never checked"
    checked = f", checked at {sync['checkedAt']}" if sync["checkedAt"] else ""
    return f"{seen} (last success {sync['lastSuccessAt'] or 'never'}{checked})"


def schedule_text(schedule: dict[str, Any] | None) -> str:
    """The API's `syncSchedule` in words: `Daily at 02:00 America/New_York`, or why there is none."""
    if schedule is None:
        return "not read from Codat yet"
    if schedule["frequency"] is None:
        return f"none ({schedule['error']})"
    return f"{schedule['frequency']} at {schedule['syncHour']:02d}:00 {schedule['timeZone']}"


def _show_readable(view: dict[str, Any]) -> None:
    conn = view["connection"]
    paused = f"yes ({view['pauseReason']})" if view["paused"] else "no"
    deleted = f", deleted at {conn['deletedAt']}" if conn["deletedAt"] else ""
    problems = "; ".join(p["message"] for p in view["problems"]) or "none"
    emit({"company": view["id"], "name": view["name"] or "-", "paused": paused, "connection": f"{conn['id'] or '-'} "
          f"({conn['status'] or 'unknown'}{deleted})", "failing": view["failing"], "problems": problems,
          "open pushes": view["openPushes"], "last sync": last_sync_text(view["lastSync"]),
          "next sync": view["nextSyncAt"] or "unknown", "sync schedule": schedule_text(view["syncSchedule"]),
          "known from": view["known"], "created": view["createdAt"], "updated": view["updatedAt"]},
         argparse.Namespace())  # fmt: skip
    print("\nRecords by state:")
    print_table([{"dataType": t, **c} for t, c in view["records"].items()], ("dataType", *(s.value for s in State)))
    print("\nRecent datasets:")
    print_table(view["recentDatasets"], DATASET_COLUMNS)


async def companies_show(engine: AsyncEngine, args: argparse.Namespace) -> int:
    view = await company_view(engine, args.id)
    if view is None:
        raise CommandFailed(f"no company {args.id}")
    if args.json:
        emit(view, args)
    else:
        _show_readable(view)
    return 0


def _list_row(company: dict[str, Any]) -> dict[str, Any]:
    counts = company["records"]
    return {"id": company["id"], "name": company["name"] or "", "paused": company["paused"],
            "next sync": company["nextSyncAt"] or "",
            "connection": company["connection"]["status"] or "unknown", "failing": company["failing"],
            "records": " ".join(f"{state} {n}" for state, n in counts.items() if n) or "none",
            "problems": "; ".join(p["message"] for p in company["problems"])}  # fmt: skip


async def companies_list(engine: AsyncEngine, args: argparse.Namespace) -> int:
    query = CompanyQuery(search=args.search, paused=True if args.paused else None,
                         failing=True if args.failing else None, problem=args.problem, limit=args.limit)  # fmt: skip
    page = await list_companies(engine, query)
    if args.json:
        emit(page.answer(), args)
        return 0
    print_table([_list_row(c) for c in page.answer()["results"]], LIST_COLUMNS)
    more = " (raise --limit or narrow the filters to see the rest)" if page.next_cursor else ""
    print(f"\nshowing {len(page.results)} of {page.total}{more}")
    return 0


async def companies_pause(engine: AsyncEngine, args: argparse.Namespace) -> int:
    if not await pause_company(engine, args.id, SystemClock().now()):
        raise CommandFailed(f"no company {args.id}")
    emit({"id": args.id, "paused": True, "pauseReason": MANUAL_PAUSE}, args)
    return 0


async def companies_resume(engine: AsyncEngine, args: argparse.Namespace) -> int:
    if not await resume_company(engine, args.id, SystemClock().now()):
        raise CommandFailed(f"no company {args.id}")
    emit({"id": args.id, "paused": False, "pauseReason": None}, args)
    return 0


async def companies_repush(engine: AsyncEngine, args: argparse.Namespace) -> int:
    data_types = [DATA_TYPES[args.data_type]] if args.data_type else list(MODELS)
    bar = ProgressBar(f"re-push {args.id}", 0)

    def progress(data_type: str, done: int, total: int) -> None:
        bar.total = total
        bar.update(done, data_type)

    try:
        result = await full_repush(engine, args.id, data_types, SystemClock().now(), progress)
    except NotFound:
        raise CommandFailed(f"no company {args.id}") from None
    finally:
        bar.close()
    answer = result.answer()
    if args.json:
        emit(answer, args)
        return 0
    print_table([{"dataType": t, **c} for t, c in answer["byDataType"].items()], ("dataType", *REPUSH_COUNTS_COLUMNS))
    print(f"\n{answer['requeued'] + answer['alreadyPending']} records will be pushed again; "
          f"{answer['skippedSynced']} synced records skipped (Codat never takes synced data again), "
          f"{answer['skippedConflicts']} conflicts skipped, {answer['inFlight']} still in flight.")  # fmt: skip
    if answer["paused"]:
        print(f"The company is paused: the push waits for `codat-relay companies resume {args.id}`.")
    return 0


def _purge_confirmed(company_id: str, counts: dict[str, int], args: argparse.Namespace) -> bool:
    if args.yes:
        return True
    rows = sum(counts.values())
    if not sys.stdin.isatty():
        raise CommandFailed(f"{rows} rows of company {company_id} would be deleted for good: pass --yes to confirm")
    answer = input(f"Delete {rows} rows of company {company_id} for good (only an audit line stays)? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


async def companies_purge(engine: AsyncEngine, args: argparse.Namespace) -> int:
    """Delete everything of a company but an audit line; `--dry-run` counts what would go, per table."""
    clock = SystemClock()
    who = f"cli {getpass.getuser()}"
    survey = await purge_company(engine, args.id, requested_by=who, clock=clock, dry_run=True)
    if not survey.found:
        raise CommandFailed(f"no company {args.id}")
    if args.dry_run or not _purge_confirmed(args.id, survey.counts, args):
        if not args.dry_run:
            raise CommandFailed("not confirmed; nothing deleted")
        result = survey
    else:
        result = await purge_company(engine, args.id, requested_by=who, clock=clock)
    if args.json:
        emit(result.answer(), args)
        return 0
    print_table([{"table": table, "rows": rows} for table, rows in result.counts.items()], ("table", "rows"))
    verb = "would be deleted (dry run: nothing was)" if result.dry_run else f"deleted; audit line {result.purge_id}"
    print(f"\n{sum(result.counts.values())} rows of company {args.id} {verb}.")
    if result.running_jobs:
        print(f"{result.running_jobs} of its jobs were running and are left to finish.")
    return 0


DEFAULT_LIST_LIMIT = 100


def page_limit(raw: str) -> int:
    """`--limit`: 1 to MAX_PAGE, as the API's `limit`; anything else is bad usage (exit 2)."""
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PAGE:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_PAGE}")
    return int(raw)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], json_flag: argparse.ArgumentParser) -> None:
    companies = sub.add_parser("companies", help="known companies: list, show, pause, resume, full re-push")
    actions = companies.add_subparsers(dest="companies_command", required=True, metavar="ACTION")
    lst = actions.add_parser("list", parents=[json_flag], help="known companies in id order, failing ones marked")
    lst.add_argument("--failing", action="store_true", help="only companies a person should look at")
    lst.add_argument("--paused", action="store_true", help="only paused companies")
    lst.add_argument("--problem", choices=PROBLEM_KINDS, help="only companies with this problem")
    lst.add_argument("--search", help="part of the company id or of its name in Codat (any case)")
    lst.add_argument("--limit", type=page_limit, default=DEFAULT_LIST_LIMIT, help=f"1 to {MAX_PAGE}")
    lst.set_defaults(func=with_engine(companies_list))
    show = actions.add_parser("show", parents=[json_flag], help="connection, pause, record counts, datasets")
    show.set_defaults(func=with_engine(companies_show))
    pause = actions.add_parser("pause", parents=[json_flag], help="stop pushing (intake continues)")
    pause.set_defaults(func=with_engine(companies_pause))
    resume = actions.add_parser("resume", parents=[json_flag], help="resume pushing; the backlog is pushed now")
    resume.set_defaults(func=with_engine(companies_resume))
    repush = actions.add_parser(
        "repush", parents=[json_flag],
        help="push every record again, except synced ones (rule 7), conflicts and those in flight",
    )  # fmt: skip
    repush.add_argument("--data-type", choices=sorted(DATA_TYPES), help="only this data type")
    repush.set_defaults(func=with_engine(companies_repush))
    prg = actions.add_parser(
        "purge", parents=[json_flag],
        help="delete every record, alert, dataset, push and notification of a company, and cancel its jobs; "
             "an audit line stays",
    )  # fmt: skip
    prg.add_argument("--dry-run", action="store_true", help="count what would be deleted, per table; delete nothing")
    prg.add_argument("--yes", action="store_true", help="do not ask for confirmation (needed off a terminal)")
    prg.set_defaults(func=with_engine(companies_purge))
    for parser in (show, pause, resume, repush, prg):
        parser.add_argument("id", metavar="ID", help="Codat company id")
