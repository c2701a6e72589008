"""`codat-relay subscribe` and `codat-relay subscriptions list|delete`: this relay's Codat webhook consumers."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from service import subscriptions
from service.cli.common import Command, CommandFailed, codat_failure, emit, load_settings_or_fail
from service.codat.client import CodatClient, CodatError
from service.settings import Settings

CONSUMER_COLUMNS = ("id", "url", "eventTypes", "disabled", "companyTags")


def run_codat(func: Callable[[CodatClient, Settings, argparse.Namespace], Awaitable[int]]) -> Command:
    """`func` with a Codat client; Codat's refusals and an unreachable Codat become a one-line failure."""

    def run(args: argparse.Namespace) -> int:
        settings = load_settings_or_fail(operator=True)

        async def go() -> int:
            async with CodatClient.from_settings(settings) as codat:
                return await func(codat, settings, args)

        try:
            return asyncio.run(go())
        except subscriptions.TooManyConsumers as exc:
            raise CommandFailed(str(exc)) from None
        except CodatError as exc:
            raise CommandFailed(codat_failure(exc)) from None
        except httpx.HTTPError as exc:
            raise CommandFailed(f"Codat unreachable: {type(exc).__name__}") from None

    return run


def target_url(args: argparse.Namespace, settings: Settings) -> str:
    if args.url:
        return str(args.url)
    if settings.public_url is None:
        raise CommandFailed("no --url and no RELAY_PUBLIC_URL: give the relay's public webhook URL")
    return subscriptions.webhook_url(settings.public_url)


def _rows(consumers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c | {"eventTypes": ",".join(c["eventTypes"]), "companyTags": ",".join(c["companyTags"])}
            for c in consumers]  # fmt: skip


def _show_plan(planned: subscriptions.Plan, dry_run: bool) -> None:
    verb = "would" if dry_run else "will"
    print(f"webhook consumers at {planned.url}:")
    for consumer in planned.keep:
        print(f"  = keep    {consumer.id}  {','.join(consumer.event_types)}")
    for consumer in planned.differing:
        action = f"{verb} delete" if planned.replace else "differs "
        print(f"  ! {action} {consumer.id}  {','.join(consumer.event_types)}"
              f"{'  (disabled)' if consumer.disabled else ''}"
              f"{'  tags ' + ','.join(consumer.company_tags) if consumer.company_tags else ''}")  # fmt: skip
    for wanted in planned.create:
        print(f"  + {verb} create  {wanted.event_type}{'  tags ' + ','.join(wanted.tags) if wanted.tags else ''}")


async def subscribe(codat: CodatClient, settings: Settings, args: argparse.Namespace) -> int:
    url = target_url(args, settings)
    planned = subscriptions.plan(await codat.list_webhook_consumers(), url, tags=args.company_tag or (),
                                 replace=args.replace)  # fmt: skip
    created = [] if args.dry_run else await subscriptions.apply(codat, planned)
    if args.json:
        emit(planned.to_json() | {"dryRun": args.dry_run, "created": [c.to_json() for c in created]}, args)
    else:
        _show_plan(planned, args.dry_run)
    if planned.blocked:
        raise CommandFailed(f"{len(planned.differing)} consumer(s) at {url} differ from what the relay needs; "
                            "nothing changed: rerun with --replace to replace them")  # fmt: skip
    if not args.json:
        if not planned.create and not planned.delete:
            print("nothing to do: every needed event type has its consumer")
        elif args.dry_run:
            print("dry run: nothing changed")
        else:
            print(f"created {len(created)}, deleted {len(planned.delete)}")
        print(subscriptions.NEXT_STEP)
    return 0


async def subscriptions_list(codat: CodatClient, settings: Settings, args: argparse.Namespace) -> int:
    consumers = [c.to_json() for c in await codat.list_webhook_consumers()]
    if args.url:
        consumers = [c for c in consumers if subscriptions.same_url(c["url"], args.url)]
    emit(consumers if args.json else _rows(consumers), args, CONSUMER_COLUMNS)
    return 0


async def subscriptions_delete(codat: CodatClient, settings: Settings, args: argparse.Namespace) -> int:
    for consumer_id in args.ids:
        await codat.delete_webhook_consumer(consumer_id)
    emit({"deleted": args.ids} if args.json else f"deleted {len(args.ids)} consumer(s)", args)
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], json_flag: argparse.ArgumentParser) -> None:
    sp = sub.add_parser("subscribe", parents=[json_flag],
                        help="create this relay's Codat webhook consumers (one per event type it acts on)")  # fmt: skip
    sp.add_argument("--url", help="the relay's public webhook URL (default: $RELAY_PUBLIC_URL/webhooks/codat)")
    sp.add_argument("--company-tag", action="append", metavar="KEY:VALUE",
                    help="only companies with this tag (repeatable, at most 10)")  # fmt: skip
    sp.add_argument("--replace", action="store_true", help="delete consumers at the URL that differ, then create")
    sp.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    sp.set_defaults(func=run_codat(subscribe))

    subs = sub.add_parser("subscriptions", help="list or delete Codat webhook consumers")
    subs_sub = subs.add_subparsers(dest="subscriptions_command", required=True, metavar="ACTION")
    lst = subs_sub.add_parser("list", parents=[json_flag], help="every consumer of this Codat client")
    lst.add_argument("--url", help="only consumers at this URL")
    lst.set_defaults(func=run_codat(subscriptions_list))
    rm = subs_sub.add_parser("delete", parents=[json_flag], help="delete consumers by id")
    rm.add_argument("ids", nargs="+", metavar="ID")
    rm.set_defaults(func=run_codat(subscriptions_delete))

