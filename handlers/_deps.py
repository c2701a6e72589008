"""What the push pipeline's Tracker needs, taken from a handler's Context (no other door in)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from service.clock import Clock
from service.policies import poll_policy, repush_policy
from service.settings import Settings
from service.tracking import Tracker
from service.types import Context


@dataclass(frozen=True)
class _Deps:
    engine: AsyncEngine
    clock: Clock
    settings: Settings
    codat: Any
    notifier: Any


def tracker(ctx: Context) -> Tracker:
    deps = _Deps(ctx.store, ctx.clock, ctx.settings, ctx.codat, ctx.notifier)
    return Tracker(deps, poll_policy(ctx.settings), repush_policy(ctx.settings))
