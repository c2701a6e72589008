"""What the Codat client asks before and tells after each request: the rate-limit budget's seam.

The client knows no database; the budget shared by every process (`service.budget.SharedBudget`) does.
A call's priority rides on a context variable, so that the job which makes a call says how much it is
worth without every method growing a parameter: pushes and staff-visible checks are `PRIORITY` (the
default), routine polls wrap their calls in `routine()` and give way first when the daily quota thins.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

import httpx


class Priority(enum.IntEnum):
    ROUTINE = 0  # dataset polls, sweeps, sync follow-ups: they can wait, and the webhooks cover them
    PRIORITY = 1  # pushes, handlers of Codat's events, what staff asked for


_PRIORITY: ContextVar[Priority] = ContextVar("codat_call_priority", default=Priority.PRIORITY)


def current_priority() -> Priority:
    return _PRIORITY.get()


@contextmanager
def routine() -> Iterator[None]:
    """Calls made inside are routine: below the quota's reserve they wait for the reset."""
    token = _PRIORITY.set(Priority.ROUTINE)
    try:
        yield
    finally:
        _PRIORITY.reset(token)


@dataclass(frozen=True)
class Lease:
    """What `acquire` hands back, given again to `release`: the company slot held (none for company-less
    calls) and who holds it."""

    company_id: str | None
    slot: int | None
    holder: str


class Budget(Protocol):
    """May a request go now? `acquire` waits a little or raises `service.errors.Deferred`; `release` is
    called once for every lease, with Codat's answer (None when there was none)."""

    async def acquire(self, company_id: str | None, priority: Priority) -> Lease: ...

    async def release(self, lease: Lease, response: httpx.Response | None) -> None: ...
