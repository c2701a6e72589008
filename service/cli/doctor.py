"""`codat-relay doctor`: the after-deploy checklist (service/doctor.py); exit 0 only when every line passes."""

from __future__ import annotations

import argparse
import asyncio

import httpx

from service import doctor
from service.cli.common import check_database_exists, emit, load_settings_or_fail
from service.clock import SystemClock
from service.codat.client import CodatClient
from service.db import create_engine, dispose
from service.settings import Settings


async def run_checks(
    settings: Settings, now: float, transport: httpx.AsyncBaseTransport | None = None
) -> list[doctor.Check]:
    async with httpx.AsyncClient(transport=transport) as http, CodatClient.from_settings(settings, transport) as codat:
        checks = await doctor.codat_checks(codat, settings, http)
    engine = create_engine(settings)
    try:
        checks += await doctor.database_checks(engine, settings, now, sandbox=doctor.is_sandbox(settings))
    except Exception as exc:  # an unreachable database is one failed line, not a traceback
        checks.append(doctor.Check("database migrated", False, f"database unavailable: {type(exc).__name__}",
                                   "check RELAY_DATABASE_URL, then `codat-relay migrate`"))  # fmt: skip
    finally:
        await dispose(engine)
    return checks


def show(checks: list[doctor.Check]) -> None:
    for check in checks:
        print(f"{'✓' if check.ok else '✗'} {check.name}: {check.detail}")
        if not check.ok and check.fix:
            print(f"    fix: {check.fix}")


def cmd_doctor(args: argparse.Namespace) -> int:
    settings = load_settings_or_fail(operator=True)
    check_database_exists(settings)
    checks = asyncio.run(run_checks(settings, SystemClock().now()))
    if args.json:
        emit({"ok": all(c.ok for c in checks), "checks": [c.to_json() for c in checks]}, args)
    else:
        show(checks)
    return 0 if all(c.ok for c in checks) else 1


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], json_flag: argparse.ArgumentParser) -> None:
    sub.add_parser("doctor", parents=[json_flag], help="check a deployment end to end: ✓ or ✗ with the fix"
                   ).set_defaults(func=cmd_doctor)  # fmt: skip
