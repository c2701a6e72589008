"""The intake API and the company endpoints, in-process (no workers): answers and what is stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from service.clock import FixedClock
from service.db import jobs, notifications, records, writer
from service.testing import running_app
from service.web import records_api as intake
from tests.conftest import ADMIN_TOKEN, API_TOKEN, make_settings

API = {"authorization": f"Bearer {API_TOKEN}"}
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
COMPANY = "co-intake"
DEBOUNCE_S = 5.0


def order(order_id: str, amount: float = 10.0) -> dict[str, Any]:
    return {"id": order_id, "currency": "GBP", "totalAmount": amount, "createdDate": "2025-06-01T09:00:00Z"}


class Relay:
    def __init__(self, client: httpx.AsyncClient, engine: Any, clock: FixedClock) -> None:
        self.client, self.engine, self.clock = client, engine, clock

    async def put(self, items: Any, data_type: str = "orders", headers: dict[str, str] = API) -> httpx.Response:
        return await self.client.put(f"/v1/companies/{COMPANY}/records/{data_type}", json={"records": items},
                                     headers=headers)  # fmt: skip

    async def rows(self) -> dict[str, sa.RowMapping]:
        async with self.engine.connect() as conn:
            return {r["record_id"]: r for r in (await conn.execute(sa.select(records))).mappings()}

    async def push_jobs(self) -> list[sa.RowMapping]:
        async with self.engine.connect() as conn:
            query = sa.select(jobs).where(jobs.c.kind == "push").order_by(jobs.c.id)
            return list((await conn.execute(query)).mappings())


@pytest.fixture
async def relay(database_url: str) -> AsyncIterator[Relay]:
    clock = FixedClock()
    settings = make_settings(database_url, push_debounce_seconds=DEBOUNCE_S)
    async with running_app(settings, clock=clock) as (app, client):
        yield Relay(client, app.state.runtime.engine, clock)


async def test_intake_needs_the_api_token(relay: Relay) -> None:
    """No token or the admin token: 401, nothing stored."""
    assert (await relay.put([order("a")], headers={})).status_code == 401
    assert (await relay.put([order("a")], headers=ADMIN)).status_code == 401
    assert (await relay.client.get(f"/v1/companies/{COMPANY}", headers=API)).status_code == 401
    assert await relay.rows() == {}


async def test_new_records_are_stored_and_one_debounced_push_is_queued(relay: Relay) -> None:
    """A burst of intakes collapses into one push job, due `RELAY_PUSH_DEBOUNCE_SECONDS` after the first."""
    answer = await relay.put([order("a"), order("b"), {"id": "c"}])
    assert answer.status_code == 202
    assert answer.json() == {"accepted": 2, "unchanged": 0, "deleted": 1, "conflicts": []}
    relay.clock.advance(1)
    assert (await relay.put([order("d")], data_type="commerce-orders")).status_code == 202
    rows = await relay.rows()
    assert sorted(rows) == ["a", "b", "c", "d"] and {r["state"] for r in rows.values()} == {"pending"}
    assert rows["c"]["is_delete"] and rows["c"]["body"] == b'{"id":"c"}'
    push_jobs = await relay.push_jobs()
    assert len(push_jobs) == 1
    assert push_jobs[0]["lock_key"] == f"push:{COMPANY}:commerce-orders"
    assert push_jobs[0]["run_at"] == pytest.approx(1_750_000_000.0 + DEBOUNCE_S)


async def test_unchanged_resubmits_are_no_ops(relay: Relay) -> None:
    """The same content again (in any key order) is counted unchanged and keeps its version."""
    await relay.put([order("a"), order("b")])
    again = [dict(reversed(list(order("a").items()))), order("b", 11.0)]
    assert (await relay.put(again)).json() == {"accepted": 1, "unchanged": 1, "deleted": 0, "conflicts": []}
    rows = await relay.rows()
    assert rows["a"]["version"] == 1 and rows["b"]["version"] == 2


async def test_invalid_records_get_422_and_nothing_is_stored(relay: Relay) -> None:
    """One bad record refuses the whole request, naming each bad record by index, id and field."""
    answer = await relay.put([order("ok"), {**order("bad"), "colour": "red"}, {"id": "worse", "totalAmount": "1"}])
    assert answer.status_code == 422
    assert [(e["index"], e["id"], e["field"]) for e in answer.json()["errors"]] == [
        (1, "bad", "colour"), (2, "worse", "totalAmount")]
    assert await relay.rows() == {} and await relay.push_jobs() == []


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"{not json", 400, "malformed_payload"),
        (b"[]", 422, None),
        (b'{"records": {}}', 422, None),
        (b'{"records": [], "extra": 1}', 422, None),
    ],
)
async def test_malformed_bodies_are_client_errors(relay: Relay, body: bytes, status: int, error: str | None) -> None:
    """Never a 500 for what a client sends."""
    answer = await relay.client.put(f"/v1/companies/{COMPANY}/records/orders", content=body, headers=API)
    assert answer.status_code == status
    if error:
        assert answer.json()["error"] == error
    else:
        assert answer.json()["errors"][0]["message"]


async def test_over_5000_records_is_413(relay: Relay) -> None:
    """5,001 records in one request: 413, nothing stored."""
    answer = await relay.put([order(f"r-{i}") for i in range(5_001)])
    assert answer.status_code == 413 and answer.json()["error"] == "payload_too_large"
    assert await relay.rows() == {}


async def test_oversized_body_is_413(relay: Relay, monkeypatch: pytest.MonkeyPatch) -> None:
    """The body size is capped before parsing."""
    monkeypatch.setattr(intake, "MAX_BODY_BYTES", 100)
    assert (await relay.put([order(f"r-{i}") for i in range(5)])).status_code == 413


async def test_unknown_data_type_is_404(relay: Relay) -> None:
    assert (await relay.put([order("a")], data_type="invoices")).status_code == 404


async def test_changes_to_synced_records_are_conflicts(relay: Relay) -> None:
    """A change to a synced record is kept, reported in `conflicts`, never queued, and staff are told."""
    await relay.put([order("s"), order("t")])
    async with writer(relay.engine).begin() as conn:  # as if both were accepted, then synced
        await conn.execute(records.update().values(state="synced", accepted_hash=records.c.content_hash,
                                                   accepted_version=1, accepted_at=1.0, synced_at=2.0,
                                                   synced_hash=records.c.content_hash, synced_version=1))  # fmt: skip
    answer = (await relay.put([order("s", 99.0), order("t"), order("u")])).json()
    assert answer == {"accepted": 1, "unchanged": 1, "deleted": 0,
                      "conflicts": [{"id": "s", "reason": "already_synced"}]}  # fmt: skip
    rows = await relay.rows()
    assert rows["s"]["state"] == "conflict" and rows["s"]["version"] == 2 and rows["u"]["state"] == "pending"
    assert (await relay.put([order("s", 99.0)])).json()["conflicts"] == [{"id": "s", "reason": "already_synced"}]
    assert (await relay.put([order("s")])).json()["unchanged"] == 1  # back to what the books hold
    assert (await relay.rows())["s"]["state"] == "synced"
    async with relay.engine.connect() as conn:
        told = (await conn.execute(sa.select(notifications.c.kind, notifications.c.event)
                                   .order_by(notifications.c.occurred_at, notifications.c.event))).all()
    # Told once (the second report falls in the dedupe window), then, the books' content sent again, resolved.
    assert [tuple(row) for row in told] == [("update_conflict", "opened"), ("update_conflict", "resolved")]


async def test_pause_resume_and_company_view(relay: Relay) -> None:
    """Pause and resume answer 200 (404 while the company is unknown); the view shows state and counts."""
    assert (await relay.client.get(f"/v1/companies/{COMPANY}", headers=ADMIN)).status_code == 404
    assert (await relay.client.post(f"/v1/companies/{COMPANY}/resume", headers=ADMIN)).status_code == 404
    unknown = await relay.client.post(f"/v1/companies/{COMPANY}/pause", headers=ADMIN)
    assert (unknown.status_code, unknown.json()["error"]) == (404, "not_found")
    assert (await relay.client.get(f"/v1/companies/{COMPANY}", headers=ADMIN)).status_code == 404  # none invented
    await relay.put([order("a"), order("b")])
    paused = await relay.client.post(f"/v1/companies/{COMPANY}/pause", headers=ADMIN)
    assert paused.status_code == 200 and paused.json()["paused"] is True
    await relay.put([{"id": "p-1", "amount": 1}], data_type="payments")
    view = (await relay.client.get(f"/v1/companies/{COMPANY}", headers=ADMIN)).json()
    assert view["paused"] is True and view["pauseReason"] == "manual"
    assert view["records"]["commerce-orders"]["pending"] == 2
    assert view["records"]["commerce-payments"]["pending"] == 1
    assert view["records"]["commerce-transactions"]["pending"] == 0
    assert view["recentDatasets"] == [] and view["lastSync"]["code"] is None
    resumed = await relay.client.post(f"/v1/companies/{COMPANY}/resume", headers=ADMIN)
    assert resumed.status_code == 200 and resumed.json()["paused"] is False
    due = {j["lock_key"] for j in await relay.push_jobs() if j["run_at"] <= relay.clock.now()}
    assert due == {f"push:{COMPANY}:commerce-{t}" for t in ("orders", "payments", "transactions")}


async def test_a_string_field_over_the_cap_is_422_and_nothing_is_stored(relay: Relay) -> None:
    """Six 1 MiB strings (the issue sent 10 MiB ones): 422 naming the field, nothing stored; 16,384 characters pass."""
    from service.records import MAX_STRING_CHARS

    huge = [{**order(f"big-{i}"), "orderNumber": "x" * 1_048_576} for i in range(6)]
    answer = await relay.put(huge)
    assert answer.status_code == 422
    assert {e["field"] for e in answer.json()["errors"]} == {"orderNumber"}
    assert await relay.rows() == {}
    assert (await relay.put([{**order("fits"), "orderNumber": "x" * MAX_STRING_CHARS}])).status_code == 202


@pytest.mark.parametrize("path", ["sync/latest", "sync/historic", "repush"])
async def test_admin_bodies_are_read_capped(relay: Relay, path: str) -> None:
    """An admin body over its cap is 413 once the cap is passed, the rest never read (it was read whole: 200 MiB)."""
    pulled = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(1024):  # 64 MiB offered in 64 KiB chunks
            pulled += 65_536
            yield b" " * 65_536

    answer = await relay.client.post(f"/v1/companies/{COMPANY}/{path}", content=body(), headers=ADMIN)
    assert (answer.status_code, answer.json()["error"]) == (413, "payload_too_large")
    assert pulled <= 2 * 65_536
