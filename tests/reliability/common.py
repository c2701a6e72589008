"""Shared pieces of the reliability suite: sizes, figures, relay processes, signed deliveries, a sender.

Sizes: the default run (also part of `make test`) uses small counts; `RELIABILITY_FULL=1` (set by
`make reliability`) enables the `slow` variants with the issue's full sizes. Not a `RELAY_*` name: the
service refuses unknown `RELAY_*` variables, and these processes inherit the environment.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import sqlalchemy as sa

from service.db import alerts
from service.testing import CONNECTION_ID, legacy_body, read_completed_body, signed_headers
from tests.conftest import TEST_AUTH_HEADER, TEST_SECRET
from tests.integration.harness import ROOT
from tests.pgbouncer import engine_for
from tests.reliability.recording_handlers import processed, runs

FULL = os.environ.get("RELIABILITY_FULL") == "1"
BENCH_DIR = ROOT / ".bench"
START_DEADLINE_S = 120.0  # an upper bound, not a wait: a loaded 2-core machine starts a process slowly
MAX_TRIES_IN_STREAM = 50

# The long variants: marked `slow`, and run only when asked for (make reliability).
slow = [
    pytest.mark.slow,
    pytest.mark.skipif(not FULL, reason="full size: RELIABILITY_FULL=1 (make reliability)"),
]

T = TypeVar("T")


def report(name: str, figures: Mapping[str, Any]) -> None:
    """Print the figures (shown with -s) and keep them in .bench/reliability-<name>.json."""
    print(f"\n[reliability:{name}] " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    BENCH_DIR.mkdir(exist_ok=True)
    (BENCH_DIR / f"reliability-{name}.json").write_text(json.dumps(dict(figures), indent=2, sort_keys=True) + "\n")


def backend(database_url: str) -> str:
    return "postgres" if database_url.startswith("postgresql") else "sqlite"


async def until(check: Callable[[], Awaitable[T]], done: Callable[[T], bool], deadline_s: float, what: str) -> T:
    """Poll `check` until `done(value)`; fail naming `what` (and the last value) at the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = await check()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {deadline_s} s (last: {value!r})"[:2000])
        await asyncio.sleep(0.1)


# -- relay processes --------------------------------------------------------------------------------


def start_relay(args: list[str], env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`codat-relay ARGS` with the recording handler installed (tests/reliability/relay_proc.py)."""
    with log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.relay_proc", *args],
            env=dict(env), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


async def wait_healthy(port: int, proc: subprocess.Popen[bytes], deadline_s: float = START_DEADLINE_S) -> None:
    """Without blocking the event loop, so senders sharing it keep sending while a relay restarts."""

    async def probe() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"relay exited with {proc.returncode} before answering /healthz")
        try:
            async with httpx.AsyncClient(timeout=1.0) as client:
                return (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    await until(probe, bool, deadline_s, f"relay on port {port} healthy")


# -- deliveries -------------------------------------------------------------------------------------

FINAL = ("done", "dead", "ignored")
STATUSES = ("ProcessingError", "FetchError", "AuthError", "Complete")


@dataclass(frozen=True)
class Delivery:
    """One Codat delivery; `request(now)` builds it as Codat would send it at `now` (signed afresh)."""

    id: str
    body: bytes
    status: str
    mode: str  # "signed" (webhook-*), "svix" (svix-*), "legacy" (unsigned, Authorization)

    def request(self, now: int) -> tuple[bytes, dict[str, str]]:
        if self.mode == "legacy":
            return self.body, {"authorization": TEST_AUTH_HEADER, "content-type": "application/json"}
        prefix = "svix-" if self.mode == "svix" else "webhook-"
        headers = signed_headers(self.body, TEST_SECRET, msg_id=self.id, at=now, prefix=prefix)
        return self.body, {"content-type": "application/json", **headers}


def delivery(index: int, prefix: str, *, mixed: bool = False, companies: int = 50) -> Delivery:
    """A `dataset_status` delivery; `mixed` cycles through the three shapes (FACTS.md §4a, 4b, 4c)."""
    msg_id = f"{prefix}-{index:06d}"
    company = f"co-rel-{index % companies:03d}"
    status = STATUSES[index % len(STATUSES)]
    shape = index % 3 if mixed else 1
    if shape == 2:  # 4c: a read.completed envelope, signed with the older svix-* header names
        body = read_completed_body(("commerce-orders", status))
        body["id"] = msg_id
        body["payload"]["referenceCompany"]["id"] = company
        return Delivery(msg_id, json.dumps(body).encode(), status, "svix")
    data = {"dataType": "commerce-orders", "datasetStatus": status, "datasetId": f"ds-{msg_id}"}
    body = legacy_body(AlertId=msg_id, CompanyId=company, DataConnectionId=CONNECTION_ID, Data=data)
    return Delivery(msg_id, json.dumps(body).encode(), status, "legacy" if shape == 0 else "signed")


@dataclass
class Tally:
    """What the sender saw: the ids that got a 2xx, every status code, transport failures."""

    acked: set[str] = field(default_factory=set)
    codes: Counter[int] = field(default_factory=Counter)
    answers: Counter[tuple[str, str]] = field(default_factory=Counter)  # (id, "accepted"|"duplicate"|…)
    transport_errors: int = 0
    missing_retry_after: int = 0  # 503 answers without a usable Retry-After (Codat needs one)
    sent: int = 0

    @property
    def server_errors(self) -> int:
        return sum(n for code, n in self.codes.items() if code >= 500)

    @property
    def errors_other_than_503(self) -> int:
        return sum(n for code, n in self.codes.items() if code >= 500 and code != 503)


async def post(client: httpx.AsyncClient, url: str, item: Delivery, tally: Tally) -> int | None:
    """Send one delivery; the status code, or None when the connection failed (not acknowledged)."""
    body, headers = item.request(int(time.time()))
    tally.sent += 1
    try:
        response = await client.post(url, content=body, headers=headers)
    except httpx.TransportError:
        tally.transport_errors += 1
        return None
    tally.codes[response.status_code] += 1
    if 200 <= response.status_code < 300:
        tally.acked.add(item.id)
        tally.answers[(item.id, response.json()["status"])] += 1
    elif response.status_code == 503 and not response.headers.get("retry-after", "").isdigit():
        tally.missing_retry_after += 1
    return response.status_code


async def send(
    url: str,
    items: Iterable[Delivery],
    tally: Tally,
    *,
    concurrency: int,
    requeue: bool = False,
    pause_after_failure_s: float = 0.05,
) -> None:
    """Send every item, `concurrency` at a time, at full speed; a failure pauses that sender briefly.

    With `requeue`, a delivery without a 2xx goes to the back of the queue (Codat retries at once, then
    later), so a stream keeps flowing across a server restart; without it, each item is sent once.
    """
    queue = list(items)
    queue.reverse()
    tries: Counter[str] = Counter()

    async def one(client: httpx.AsyncClient) -> None:
        while queue:
            item = queue.pop()
            tries[item.id] += 1
            code = await post(client, url, item, tally)
            if code is None or code >= 500:
                if requeue and tries[item.id] < MAX_TRIES_IN_STREAM:
                    queue.insert(0, item)
                await asyncio.sleep(pause_after_failure_s)  # a refused connection returns at once: don't spin

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=15.0, limits=limits) as client:  # Codat waits 15 s for a 2xx
        await asyncio.gather(*(one(client) for _ in range(concurrency)))


async def redeliver_until_acked(
    url: str, items: list[Delivery], tally: Tally, *, concurrency: int, deadline_s: float = 60.0
) -> int:
    """Codat-style redelivery: send again whatever has no 2xx yet, until all have one; returns the rounds."""
    rounds = 0
    deadline = time.monotonic() + deadline_s
    while missing := [d for d in items if d.id not in tally.acked]:
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(missing)} deliveries still without a 2xx after {deadline_s} s")
        rounds += 1
        await send(url, missing, tally, concurrency=concurrency)
    return rounds


def shuffled(items: list[T], seed: int) -> list[T]:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items


# -- reading the outcome ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    stored: dict[str, str]  # alert id → alert status
    attempts: dict[str, int]  # alert id → processing runs started (the alerts.attempts column)
    effects: dict[str, str | None]  # alert id → the status recorded by the handler's idempotent effect
    runs: Counter[str]  # alert id → committed handler runs

    def not_done(self, ids: Iterable[str]) -> list[str]:
        return [i for i in ids if self.stored.get(i) != "done"]

    def processed_twice(self) -> int:
        return sum(1 for n in self.runs.values() if n > 1)


async def read_outcome(database_url: str) -> Outcome:
    engine = engine_for(database_url)
    try:
        async with engine.connect() as conn:
            stored = (await conn.execute(sa.select(alerts.c.id, alerts.c.status, alerts.c.attempts))).all()
            effects = (await conn.execute(sa.select(processed.c.alert_id, processed.c.status))).all()
            counted = (await conn.execute(sa.select(runs.c.alert_id, sa.func.count()).group_by(runs.c.alert_id))).all()
    finally:
        await engine.dispose()
    return Outcome(
        stored={row.id: row.status for row in stored},
        attempts={row.id: row.attempts for row in stored},
        effects={row.alert_id: row.status for row in effects},
        runs=Counter({alert_id: int(n) for alert_id, n in counted}),
    )


async def until_processed(database_url: str, ids: set[str], deadline_s: float) -> Outcome:
    """Poll until every alert in `ids` has left pending/processing; the outcome at that point.

    The database is private to the test, so counting finished alerts is enough (and cheap to poll).
    """
    finished = sa.select(sa.func.count()).where(alerts.c.id.in_(sorted(ids)), alerts.c.status.in_(FINAL))
    engine = engine_for(database_url)

    async def check() -> int:
        async with engine.connect() as conn:
            return int(await conn.scalar(finished) or 0)

    try:
        await until(check, lambda n: n >= len(ids), deadline_s, "every alert processed")
    except AssertionError:
        outcome = await read_outcome(database_url)
        late = Counter(outcome.stored.get(i, "missing") for i in ids)
        raise AssertionError(f"alerts not finished within {deadline_s} s: {dict(late)}") from None
    finally:
        await engine.dispose()
    return await read_outcome(database_url)
