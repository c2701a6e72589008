"""Issue 12, "never a wrong number in the books": each stress reproduction as a deterministic test.

The relay's push pipeline runs step by step against the in-process Codat sandbox, both on one injected
clock (datasets and syncs take PACE_S of it). The sandbox is the oracle: its breach log must stay
empty of `update_after_sync`, `concurrent_push` and `duplicate_record`, and what it holds must be
every record's latest version unless the record is a conflict.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from service import queue
from service.clock import FixedClock
from service.codat.client import CodatError
from service.companies import full_repush
from service.db import create_engine, datasets, push_records, pushes, records
from service.outbox import IntakeResult, store_records
from service.pusher import Pusher
from service.records import validate_records
from service.runtime import build_runtime
from service.testing import SANDBOX_API_KEY, SANDBOX_AUTH, running_sandbox
from service.tracking import POLL_KIND
from tests.conftest import make_settings
from tests.queue_helpers import leased_job

CO, ORDERS = "co-books", "commerce-orders"
PACE_S = 10.0  # how long a dataset or a sync takes in the sandbox (on the shared fixed clock)
START = 1_800_000_000.0


def order(record_id: str, version: int = 1) -> dict[str, Any]:
    return {"id": record_id, "currency": "GBP", "totalAmount": 10.0 + version,
            "createdDate": "2027-01-01T09:00:00Z", "sourceModifiedDate": f"2027-01-0{version}T10:00:00Z"}  # fmt: skip


class World:
    """The relay's pieces, driven one step at a time, and the sandbox they push to."""

    def __init__(self, runtime: Any, sandbox: httpx.AsyncClient, clock: FixedClock) -> None:
        self.runtime, self.engine, self.sandbox, self.clock = runtime, runtime.engine, sandbox, clock
        self.pusher = Pusher(runtime)

    async def put(
        self, items: list[dict[str, Any]], after: Callable[..., Awaitable[None]] | None = None
    ) -> IntakeResult:
        valid, errors = validate_records(ORDERS, items)
        assert errors == []
        return await store_records(self.engine, CO, ORDERS, valid, now=self.clock.now(), after=after or _nothing)

    async def push(self, lease_s: float = 3600.0) -> None:
        job = await leased_job(self.engine, "push", {"company_id": CO, "data_type": ORDERS}, self.clock.now(), lease_s)
        await self.pusher.run(job, 1)

    async def poll(self) -> None:
        """Poll every unfinished dataset once (what the poll jobs do)."""
        async with self.engine.connect() as conn:
            ids = (await conn.execute(sa.select(datasets.c.id).where(datasets.c.terminal.is_(False)))).scalars().all()
        for dataset_id in ids:
            payload = {"dataset_id": dataset_id, "company_id": CO}
            job = await leased_job(self.engine, POLL_KIND, payload, self.clock.now())
            await self.pusher.tracker.poll_dataset(job, 1)

    async def settle(self) -> None:
        """Let PACE_S pass, then learn how every dataset ended."""
        self.clock.advance(PACE_S + 1)
        await self.sandbox.post("/_sandbox/tick")
        await self.poll()

    async def start_sync(self) -> None:
        answer = await self.sandbox.post(f"/companies/{CO}/sync/commerce/latest", json={})
        assert answer.status_code == 200, answer.text

    async def script(self, status: str) -> None:
        script = {"companyId": CO, "dataType": ORDERS, "status": status}
        await self.sandbox.post("/_sandbox/script/dataset", json=script)

    async def breaches(self, *kinds: str) -> list[dict[str, Any]]:
        found = (await self.sandbox.get("/_sandbox/breaches", params={"companyId": CO})).json()["results"]
        return [b for b in found if not kinds or b["kind"] in kinds]

    async def held(self) -> dict[str, Any]:
        found = (await self.sandbox.get("/_sandbox/records", params={"companyId": CO})).json()["results"]
        return {r["id"]: r["data"] for r in found}

    async def pushes(self) -> list[dict[str, Any]]:
        return list((await self.sandbox.get("/_sandbox/pushes", params={"companyId": CO})).json()["results"])

    async def states(self) -> dict[str, str]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(records.c.record_id, records.c.state).where(records.c.company_id == CO))
            return {row.record_id: row.state for row in rows}


BAD = ("update_after_sync", "concurrent_push", "duplicate_record")


def sandbox_client(transport: httpx.AsyncBaseTransport) -> httpx.AsyncClient:
    """A client of the in-process sandbox, for its `/_sandbox/` API and Codat's endpoints alike."""
    return httpx.AsyncClient(transport=transport, base_url="http://sandbox", headers=SANDBOX_AUTH)


def sandbox_settings(database_url: str, **overrides: Any) -> Any:
    """The relay's settings against the in-process sandbox (which needs a Codat key)."""
    return make_settings(database_url, codat_base_url="http://sandbox", codat_api_key=SANDBOX_API_KEY,
                         dataset_polls=0, **overrides)  # fmt: skip


@pytest.fixture
async def world(database_url: str) -> AsyncIterator[World]:
    clock = FixedClock(START)
    async with running_sandbox(companies=[CO], clock=clock, pace_seconds=PACE_S) as (_, transport):
        settings = sandbox_settings(database_url)
        engine = create_engine(settings)
        runtime = await build_runtime(settings, engine, clock, transport=transport)
        runtime.codat._sleep = _nothing  # Codat client retries without waiting (the clock is fixed anyway)
        try:
            async with sandbox_client(transport) as sandbox:
                yield World(runtime, sandbox, clock)
        finally:
            await runtime.close()
            await engine.dispose()


async def accepted(w: World, *ids: str) -> None:
    await w.put([order(i) for i in ids])
    await w.push()
    await w.settle()
    assert set((await w.states()).values()) == {"accepted"}


async def test_a_repush_never_sends_a_record_the_books_hold_another_version_of(world: World) -> None:
    """v1 synced while v2's dataset is in flight; v2's dataset fails: the re-push makes v2 a conflict, unsent."""
    w = world
    await accepted(w, "a")
    await w.start_sync()  # takes v1
    await w.script("FetchError")
    await w.put([order("a", 2)])
    await w.push()  # D2 in flight while the sync runs
    w.clock.advance(PACE_S + 1)
    await w.sandbox.post("/_sandbox/tick")
    await w.pusher.tracker.check_sync(CO)  # learnt while D2 is still in flight for the relay
    await w.poll()  # D2 ends FetchError: the re-push policy runs
    w.clock.advance(3600)
    await w.push()
    assert await w.breaches(*BAD) == []
    assert (await w.states())["a"] == "conflict"


async def test_a_push_during_a_sync_never_hides_what_the_books_hold(world: World) -> None:
    """v2 accepted while the sync that took v1 ran: the sync still puts v1 in the books, and v3 is a conflict."""
    w = world
    await accepted(w, "a")
    await w.start_sync()  # takes v1
    await w.put([order("a", 2)])
    await w.push()
    await w.settle()  # v2 Complete after the sync started; the sync succeeded (no webhook: envelope shape)
    await w.pusher.tracker.check_sync(CO)
    answer = await w.put([order("a", 3)])
    await w.push()
    assert await w.breaches(*BAD) == []
    assert answer.conflicts == [{"id": "a", "reason": "already_synced"}]
    assert (await w.states())["a"] == "conflict"


async def test_an_open_push_is_dropped_once_the_books_hold_an_older_version(world: World) -> None:
    """A push written down but never answered holds v2; a sync then takes v1: the push is never resent."""
    w = world
    await accepted(w, "a", "b")
    await w.put([order("a", 2)])
    await w.sandbox.put("/_sandbox/faults/push", json={"errorRate": 1.0, "errorStatuses": [503]})
    with pytest.raises(CodatError):
        await w.push()  # written down, answered 503 (each retry too): it stays open; then a restart
    await w.sandbox.delete("/_sandbox/faults")
    await w.start_sync()
    w.clock.advance(PACE_S + 1)
    await w.sandbox.post("/_sandbox/tick")
    await w.push()  # reads the sync first (Codat holds data of this company), then the open push
    assert await w.breaches(*BAD) == []
    assert len(await w.pushes()) == 1
    assert (await w.states()) == {"a": "conflict", "b": "synced"}


async def test_a_full_repush_after_an_unseen_sync_leaves_the_books_content_synced(world: World) -> None:
    """A full re-push, then the sync is learnt of: records equal to the books' are synced, not conflicts."""
    w = world
    await accepted(w, "a", "b")
    await w.start_sync()
    w.clock.advance(PACE_S + 1)
    await w.sandbox.post("/_sandbox/tick")
    await full_repush(w.engine, CO, [ORDERS], w.clock.now())
    await w.push()
    assert await w.states() == {"a": "synced", "b": "synced"}
    assert (await w.put([order("a"), order("b")])).conflicts == []
    assert await w.breaches(*BAD) == []


async def test_a_record_reverted_while_another_version_is_in_flight_is_not_sent_again(world: World) -> None:
    """Codat holds v1, v2's dataset is in flight, v1 comes back: when v2 fails, v1 is what Codat holds — no push."""
    w = world
    await accepted(w, "a")
    await w.script("FetchError")
    await w.put([order("a", 2)])
    await w.push()
    await w.put([order("a", 1)])  # back to what Codat holds, while v2 is in flight
    await w.settle()
    w.clock.advance(3600)
    await w.push()
    assert await w.breaches(*BAD) == []
    assert (await w.states())["a"] == "accepted"
    assert (await w.held())["a"] == order("a", 1)


async def test_a_delete_repeated_while_an_undelete_is_in_flight_is_not_sent_again(world: World) -> None:
    """The same with deletes: Codat holds the delete, an undelete fails in flight, the delete comes back."""
    w = world
    await accepted(w, "a")
    await w.put([{"id": "a"}])
    await w.push()
    await w.settle()
    await w.script("FetchError")
    await w.put([order("a", 2)])
    await w.push()
    await w.put([{"id": "a"}])
    await w.settle()
    w.clock.advance(3600)
    await w.push()
    assert await w.breaches(*BAD) == []
    assert (await w.held())["a"] == {"id": "a"}


async def test_a_push_job_that_lost_its_lease_stops_before_its_next_codat_call(database_url: str) -> None:
    """The first chunk is sent, then the lease runs out and another worker takes the job: no second chunk."""
    clock = FixedClock(START)
    settings = sandbox_settings(database_url, max_push_records=2)
    engine = create_engine(settings)
    runtime = None
    inner: list[httpx.AsyncBaseTransport] = []  # the sandbox's own transport, once it runs

    class Stalling(httpx.AsyncBaseTransport):
        """After the first push answer, this worker stalls past its lease and a successor claims the job."""

        sent = 0

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await inner[0].handle_async_request(request)
            if request.method == "POST" and "/sync/commerce-" in request.url.path:
                Stalling.sent += 1
                if Stalling.sent == 1:
                    clock.advance(5.0)
                    assert [j.id for j in await queue.claim(engine, "successor", 1, clock.now(), 30.0)] == [job.id]
            return response

    async with running_sandbox(companies=[CO], clock=clock, pace_seconds=PACE_S) as (_, sandbox_transport):
        inner.append(sandbox_transport)
        runtime = await build_runtime(settings, engine, clock, transport=Stalling())
        try:
            sandbox = sandbox_client(inner[0])
            w = World(runtime, sandbox, clock)
            await w.put([order(i) for i in "abcd"])
            job = await leased_job(engine, "push", {"company_id": CO, "data_type": ORDERS}, clock.now(), lease_s=2.0)
            await w.pusher.run(job, 1)
            assert Stalling.sent == 1
            assert len(await w.pushes()) == 1
            await w.sandbox.aclose()
        finally:
            await runtime.close()
            await engine.dispose()


async def test_intake_never_reads_not_synced_while_a_sync_check_marks_its_rows(postgres_url: str) -> None:
    """PostgreSQL: a sync check starts while an intake of v2 holds its rows: the v2s are conflicts, none pushed."""
    clock = FixedClock(START)
    async with running_sandbox(companies=[CO], clock=clock, pace_seconds=PACE_S) as (_, transport):
        settings = sandbox_settings(postgres_url)
        engine = create_engine(settings)
        runtime = await build_runtime(settings, engine, clock, transport=transport)
        try:
            async with sandbox_client(transport) as sandbox:
                w = World(runtime, sandbox, clock)
                ids = [f"r-{i:03d}" for i in range(50)]
                await accepted(w, *ids)
                await w.start_sync()
                w.clock.advance(PACE_S + 1)
                await w.sandbox.post("/_sandbox/tick")
                checking: list[asyncio.Task[Any]] = []

                async def during_intake(conn: AsyncConnection, _result: IntakeResult) -> None:
                    checking.append(asyncio.ensure_future(w.pusher.tracker.check_sync(CO)))
                    await _until_blocked(engine)  # the check waits on what this intake holds

                await w.put([order(i, 2) for i in ids], after=during_intake)
                await checking[0]
                await w.push()
                assert await w.breaches(*BAD) == []
                assert set((await w.states()).values()) == {"conflict"}
        finally:
            await runtime.close()
            await engine.dispose()


async def _until_blocked(engine: Any, deadline_s: float = 10.0, done: asyncio.Future[Any] | None = None) -> None:
    """Until another session of this database waits on a lock, or `done` is done (polled, with a deadline)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline_s
    query = sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'")  # fmt: skip
    while loop.time() < give_up:
        if done is not None and done.done():
            return
        async with engine.connect() as conn:
            if await conn.scalar(query):
                return
        await asyncio.sleep(0.01)
    raise AssertionError("the other transaction neither finished nor waited on this one")


def before_claim_update(monkeypatch: pytest.MonkeyPatch, hook: Callable[[], Awaitable[None]]) -> None:
    """Run `hook` once, inside the pusher's claim transaction, just before it writes `records` (its claim).

    The pusher's `writer(engine).begin()` hands out a connection whose first UPDATE of `records` awaits
    `hook` first: a deterministic seat for "another transaction commits between the claim's read and
    its write". Works on any version of the pusher that claims through `writer(...).begin()`.
    """
    import service.pusher as pusher_module

    real_writer, fired = pusher_module.writer, []

    class Conn:
        def __init__(self, conn: Any) -> None:
            self._conn = conn

        def __getattr__(self, name: str) -> Any:
            return getattr(self._conn, name)

        async def execute(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
            if not fired and isinstance(statement, sa.Update) and statement.table is records:
                fired.append(True)
                await hook()
            return await self._conn.execute(statement, *args, **kwargs)

    class Begin:
        def __init__(self, context: Any) -> None:
            self._context = context

        async def __aenter__(self) -> Conn:
            return Conn(await self._context.__aenter__())

        async def __aexit__(self, *exc: Any) -> Any:
            return await self._context.__aexit__(*exc)

    class Engine:
        def __init__(self, engine: Any) -> None:
            self._engine = engine

        def __getattr__(self, name: str) -> Any:
            return getattr(self._engine, name)

        def begin(self) -> Begin:
            return Begin(self._engine.begin())

    monkeypatch.setattr(pusher_module, "writer", lambda engine: Engine(real_writer(engine)))


async def pushed_as_recorded(w: World) -> dict[str, tuple[list[str], list[str]]]:
    """dataset id → (record ids the relay says went into its push, record ids Codat received in it)."""
    async with w.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(pushes.c.dataset_id, push_records.c.record_id)
            .join(push_records, push_records.c.push_id == pushes.c.id)
            .where(pushes.c.company_id == CO, pushes.c.dataset_id.is_not(None))
        )  # fmt: skip
        ours: dict[str, list[str]] = {}
        for dataset_id, record_id in rows:
            ours.setdefault(dataset_id, []).append(record_id)
    return {p["datasetId"]: (sorted(ours.get(p["datasetId"], [])), sorted(p["recordIds"])) for p in await w.pushes()}


async def test_a_dataset_ending_between_claim_and_mark_never_puts_a_held_back_record_in_a_push(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: D1 (a, b, c) ends while the next claim is between reading pending rows and marking them;
    b's held-back v2 must not join that push (whose payload holds only d), and Codat ends up holding v2."""
    clock = FixedClock(START)
    async with running_sandbox(companies=[CO], clock=clock, pace_seconds=PACE_S) as (_, transport):
        settings = sandbox_settings(postgres_url)
        engine = create_engine(settings)
        runtime = await build_runtime(settings, engine, clock, transport=transport)
        runtime.codat._sleep = _nothing
        try:
            async with sandbox_client(transport) as sandbox:
                w = World(runtime, sandbox, clock)
                await w.put([order(i) for i in "abc"])
                await w.push()  # D1: a, b, c v1
                await w.put([order("b", 2), order("d")])  # b v2 held back behind D1; d new
                clock.advance(PACE_S + 1)
                await sandbox.post("/_sandbox/tick")  # D1 is Complete in Codat; the relay has not polled
                finishing: list[asyncio.Future[Any]] = []

                async def d1_ends() -> None:
                    finishing.append(asyncio.ensure_future(w.poll()))
                    await _until_blocked(engine, done=finishing[0])  # it finishes, or waits for the claim

                before_claim_update(monkeypatch, d1_ends)
                await w.push()  # claims d; D1 ends in the middle of that claim
                await finishing[0]
                for _ in range(3):  # whatever waits goes, and every dataset ends
                    await w.settle()
                    await w.push()
                await w.settle()
                recorded = await pushed_as_recorded(w)
                assert all(ours == theirs for ours, theirs in recorded.values()), recorded
                assert await w.held() == {i: order(i) for i in "acd"} | {"b": order("b", 2)}
                assert await w.states() == dict.fromkeys("abcd", "accepted")
                assert await w.breaches(*BAD) == []
        finally:
            await runtime.close()
            await engine.dispose()


async def _nothing(*_: Any) -> None:
    return None
