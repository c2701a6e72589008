"""`codat-relay`: serve, web, worker, migrate, sandbox, and the operator commands.

Exit codes: 0 success, 1 failure with a one-line reason, 2 bad usage (argparse's own).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog

from service import db, migrate, tracing
from service.cli import admin as admin_commands
from service.cli import companies as companies_commands
from service.cli import doctor as doctor_commands
from service.cli import problems as problem_commands
from service.cli import subscriptions as subscription_commands
from service.cli.common import Command, CommandFailed, load_settings_or_fail
from service.settings import Settings

if TYPE_CHECKING:
    import uvicorn
    from starlette.applications import Starlette

log = structlog.get_logger("service.cli")

# How long a thread may hold the GIL while another waits for it (Python's default: 5 ms). SQLite's receiver thread
# gives the GIL up around every statement and must take it back from the busy event loop. bench_ingest
# --backends sqlite (32 connections, 6 s, three each, interleaved): 0.5 ms 4,105-4,325 req/s (0.23-0.25x bare),
# 0.1 ms 4,460-4,713 (0.25-0.26x; the process then at 99 % of a core instead of 80-84 %), 2 ms 4,058-4,331.
# PostgreSQL's durable ack and the end to end at 500/s on both backends were the same at 0.5 and 0.1 ms.
GIL_SWITCH_INTERVAL_S = 0.0001


def _migrate(settings: Settings) -> None:
    """Apply pending migrations; any failure (an unreachable database, say) is one line, not a traceback."""
    try:
        migrate.upgrade(db.database_url(settings))
    except Exception as exc:  # the operator needs the reason in one line
        reason = next(iter(str(exc).splitlines()), "") or "no detail"
        raise CommandFailed(f"migration failed: {type(exc).__name__}: {reason}") from None


def _warn_if_unauthenticated(settings: Settings) -> None:
    if not settings.webhook_auth_configured:
        log.warning(
            "webhooks_unauthenticated",
            message="RELAY_ALLOW_UNAUTHENTICATED_WEBHOOKS=true: anyone can post alerts. Development only!",
        )


def _configure_tracing() -> None:
    """OpenTelemetry from the standard OTEL_* variables (service/tracing.py); off unless an exporter is named."""
    try:
        on = tracing.configure_from_env()
    except tracing.TracingConfigError as exc:
        raise CommandFailed(str(exc)) from None
    if on:
        log.info("tracing_on", exporters=os.environ.get("OTEL_TRACES_EXPORTER"))


def _uvicorn_config(app: Starlette, settings: Settings) -> uvicorn.Config:
    from service.web.server import server_config  # the server's limits live beside the web layer

    return server_config(app, settings)


def _serve(args: argparse.Namespace, *, workers: bool) -> int:
    import uvicorn

    from service.web.app import AppOptions, create_app

    settings = load_settings_or_fail()
    _configure_tracing()
    # The ingest writer thread hands each batch back through the GIL; at the default 5 ms switch
    # interval a busy event loop made every batch wait up to 5 ms per hand-over (measured: 0.17x).
    # See GIL_SWITCH_INTERVAL_S for the value.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    _warn_if_unauthenticated(settings)
    if workers:  # `serve` is a whole deployment; `web` replicas leave migrations to `codat-relay migrate`
        _migrate(settings)
    app = create_app(settings, options=AppOptions(run_workers=workers, freeze_heap=True))
    log.info("serving", host=settings.host, port=settings.port, workers=workers)
    uvicorn.Server(_uvicorn_config(app, settings)).run()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    return _serve(args, workers=True)


def cmd_web(args: argparse.Namespace) -> int:
    return _serve(args, workers=False)


def cmd_worker(_args: argparse.Namespace) -> int:
    """The job-processing half; it serves /healthz, /readyz and /metrics only, for probes and scrapes."""
    import uvicorn

    from service.web.app import AppOptions, create_worker_app

    settings = load_settings_or_fail()
    _configure_tracing()
    failures: list[str] = []

    def worker_exited(error: BaseException | None) -> None:
        reason = next(iter(str(error).splitlines()), "") if error is not None else ""
        failures.append(f"worker stopped: {type(error).__name__}: {reason}" if error else "worker stopped")
        server.should_exit = True

    app = create_worker_app(settings, options=AppOptions(freeze_heap=True), on_worker_exit=worker_exited)
    server = uvicorn.Server(_uvicorn_config(app, settings))
    log.info("serving", host=settings.host, port=settings.port, role="worker")
    server.run()
    if failures:
        raise CommandFailed(failures[0])
    return 0


def cmd_migrate(_args: argparse.Namespace) -> int:
    settings = load_settings_or_fail()
    _migrate(settings)
    print(f"database at revision {migrate.head_revision()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codat-relay", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sub.add_parser("serve", help="web + in-process workers (a complete deployment)").set_defaults(func=cmd_serve)
    sub.add_parser("web", help="the HTTP half only").set_defaults(func=cmd_web)
    sub.add_parser("worker", help="the job-processing half only").set_defaults(func=cmd_worker)
    sub.add_parser("migrate", help="apply database migrations, then exit").set_defaults(func=cmd_migrate)
    admin_commands.add_commands(sub, json_flag)
    companies_commands.add_commands(sub, json_flag)
    subscription_commands.add_commands(sub, json_flag)
    doctor_commands.add_commands(sub, json_flag)
    problem_commands.add_commands(sub, json_flag)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Command = args.func
    try:
        return func(args)
    except CommandFailed as exc:
        print(f"codat-relay: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_gone()


def _reader_gone() -> int:
    """`codat-relay alerts list --json | head`: the reader had enough. End quietly, as `git log | head` does.

    stdout is pointed at /dev/null so that Python's own flush at exit does not complain about the pipe.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 0
