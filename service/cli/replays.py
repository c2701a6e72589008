"""`codat-relay alerts replay` by filter and `codat-relay jobs retry`: dry run, confirmation, pace, resume.

Both run `service.replays` straight on the database, as the admin API does. A run prints its id first
(stderr): after an interruption, the same command with `--run ID` continues where it stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from service import replays
from service.cli.common import CommandFailed, emit
from service.cli.progress import ProgressBar
from service.clock import SystemClock
from service.errors import InvalidRequest


def instant(raw: str) -> float:
    """`--since`/`--until`: an ISO-8601 instant with a zone; anything else is bad usage (exit 2)."""
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError("not an ISO-8601 date-time") from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError("needs a time zone (e.g. Z or +00:00)")
    return parsed.timestamp()


def rate(raw: str) -> float:
    """`--rate N` or `N/s`: items per second."""
    text = raw.removesuffix("/s")
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("items per second, e.g. 20 or 20/s") from None
    if not 0 < value <= replays.MAX_RATE:
        raise argparse.ArgumentTypeError(f"more than 0 and at most {replays.MAX_RATE:g} a second")
    return value


def add_filter_arguments(parser: argparse.ArgumentParser, *, alerts: bool) -> None:
    parser.add_argument("--since", type=instant, help="ISO-8601 instant, inclusive (received / created)")
    parser.add_argument("--until", type=instant, help="ISO-8601 instant, exclusive (default: when the run starts)")
    parser.add_argument("--dry-run", action="store_true", help="show the count and the first ids; change nothing")
    parser.add_argument("--rate", type=rate, help="at most N a second (N or N/s); default: as fast as it goes")
    parser.add_argument("--run", dest="run_id", help="a run's id: continue it (or start one under that id)")
    if not alerts:
        parser.add_argument("--kind", help="job kind (e.g. push, alert, notify)")
        parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def _confirmed(count: int, noun: str, args: argparse.Namespace) -> bool:
    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise CommandFailed(f"{count} {noun} would be {'replayed' if 'alert' in noun else 'retried'}: "
                            "pass --yes to confirm")  # fmt: skip
    return input(f"{count} {noun}: go ahead? [y/N] ").strip().lower() in ("y", "yes")


async def bulk(engine: AsyncEngine, args: argparse.Namespace, target: str, flt: replays.Filter, noun: str) -> int:
    """The dry run, or the run (confirmed, paced, with a progress bar), of one filter."""
    clock = SystemClock()
    try:
        if args.dry_run:
            emit(await replays.preview(engine, target, flt, clock.now()), args)
            return 0
        pacer = replays.Pacer(args.rate, clock)
        run = await replays.open_run(engine, target, flt, clock.now(), args.run_id)
    except InvalidRequest as exc:
        raise CommandFailed(str(exc)) from None
    count = await replays.remaining(engine, run)
    if count and not _confirmed(count, noun, args):
        raise CommandFailed("not confirmed; nothing done")
    print(f"run {run.id} ({count} to go; `--run {run.id}` continues it if interrupted)", file=sys.stderr)
    bar = ProgressBar(f"{'replaying' if target == replays.ALERTS else 'retrying'} {noun}", count)
    start = run.done
    try:
        ended = await replays.execute(engine, run, clock, pacer, lambda done, item: bar.update(done - start, item))
    except (KeyboardInterrupt, asyncio.CancelledError):
        raise CommandFailed(f"interrupted: `--run {run.id}` continues where it stopped") from None
    except replays.RunTaken as exc:
        raise CommandFailed(str(exc)) from None
    finally:
        if count:
            bar.close()
    acted = ended.done - start
    emit({"status": "queued", "runId": ended.id, "replayed" if target == replays.ALERTS else "retried": acted,
          "done": ended.done, "filter": replays.filter_json(ended.filter)} if args.json else
         f"{acted} {noun} queued for processing again (run {ended.id})", args)  # fmt: skip
    return 0


async def alerts_bulk(engine: AsyncEngine, args: argparse.Namespace) -> int:
    status = "dead" if args.dead else args.status
    flt = replays.Filter(kind=args.kind, company=args.company, status=status, since=args.since, until=args.until)
    return await bulk(engine, args, replays.ALERTS, flt, f"{status} alerts" if status else "alerts")


async def jobs_retry(engine: AsyncEngine, args: argparse.Namespace) -> int:
    flt = replays.Filter(kind=args.kind, since=args.since, until=args.until)
    return await bulk(engine, args, replays.JOBS, flt, f"dead {args.kind} jobs" if args.kind else "dead jobs")


def has_filter(args: argparse.Namespace) -> bool:
    return any(getattr(args, name, None) not in (None, False) for name in
               ("dead", "company", "kind", "status", "since", "until", "dry_run", "rate", "run_id"))  # fmt: skip
