"""Alert handlers end to end: real relay and sandbox processes over HTTP, on SQLite and PostgreSQL.

Each test uses its own company on one stack per backend (module-scoped), so processes start once. The
relay runs with RELAY_DATASET_POLLS=0 and a daily sweep: nothing but a webhook (or an alert a test
delivers) tells it how a dataset ended, so every outcome below proves the alert path.
The sweeper's own test runs on a stack of its own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.testing import read_completed_body
from tests.conftest import TEST_AUTH_HEADER, _admin, fresh_postgres
from tests.integration.e2e import ADMIN, Stack, stack, until

ORDERS, PAYMENTS = "commerce-orders", "commerce-payments"
WEBHOOKS_ONLY = {"RELAY_DATASET_POLLS": "0", "RELAY_PUSH_INTERVAL_SECONDS": "86400"}


def order(i: int, amount: float = 10.0, created: str = "2026-01-01T09:00:00Z") -> dict[str, Any]:
    return {"id": f"o-{i}", "orderNumber": str(i), "currency": "GBP", "totalAmount": amount,
            "createdDate": created, "sourceModifiedDate": "2026-01-01T10:00:00Z"}


def an_hour_ago() -> str:
    """A `createdDate` a sync started now covers (the sandbox's first `latest` starts a month back)."""
    return datetime.fromtimestamp(time.time() - 3600, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def payment(i: int) -> dict[str, Any]:
    return {"id": f"p-{i}", "amount": 5.0, "currency": "GBP", "createdDate": "2026-01-01T09:00:00Z",
            "sourceModifiedDate": "2026-01-01T10:00:00Z"}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("e2e")
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        db = tmp / "relay.db"
        db.write_bytes(template.read_bytes())
        with stack(f"sqlite+aiosqlite:///{db}", tmp, **WEBHOOKS_ONLY) as running:
            yield running
        return
    name, url = fresh_postgres(request.getfixturevalue("postgres_template"))
    try:
        with stack(url, tmp, **WEBHOOKS_ONLY) as running:
            yield running
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def s(env: Stack) -> Stack:
    env.new_company()
    env.sandbox("DELETE", "/_sandbox/faults")
    env.sandbox("PUT", "/_sandbox/faults/webhooks", json={"duplicates": 1})
    return env


def settled(s: Stack, data_type: str, state: str, count: int) -> dict[str, int]:
    return until(lambda: s.record_states(data_type), lambda c: c == {state: count}, f"{count} {data_type} {state}")


def error_alert(s: Stack, dataset_id: str, status: str = "FetchError") -> dict[str, Any]:
    """A legacy *Data Sync Status Changed To Error* body about one dataset."""
    return {"ClientId": "c", "CompanyId": s.company, "AlertId": str(uuid.uuid4()),
            "RuleType": "Data Sync Status Changed To Error",
            "Data": {"dataType": ORDERS, "datasetStatus": status, "datasetId": dataset_id}}  # fmt: skip


def alerts_done(s: Stack, count: int) -> list[dict[str, Any]]:
    return until(s.alerts, lambda a: len(a) >= count and all(x["status"] == "done" for x in a), f"{count} alerts done")


def test_error_webhook_makes_the_relay_ask_codat_repush_and_complete(s: Stack) -> None:
    """FetchError told only by webhook (each sent 3 times under one id): Codat asked, one re-push, Complete."""
    s.sandbox("PUT", "/_sandbox/faults/webhooks", json={"duplicates": 3})
    s.sandbox("POST", "/_sandbox/script/dataset", json={"companyId": s.company, "dataType": ORDERS,
                                                         "status": "FetchError", "times": 1})
    s.put("orders", [order(i) for i in range(3)])
    settled(s, ORDERS, "accepted", 3)
    pushes = s.pushes(ORDERS)
    assert len(pushes) == 2 and sorted(pushes[1]["recordIds"]) == ["o-0", "o-1", "o-2"]
    alerts = alerts_done(s, 2)
    assert [a["kind"] for a in alerts] == ["dataset_status"] * 2  # 3 copies of each webhook, each stored once
    sent = [d for d in s.sandbox("GET", "/_sandbox/webhooks")["results"]
            if d["body"]["payload"]["referenceCompany"]["id"] == s.company]  # fmt: skip
    assert len(sent) == 6 and len({d["messageId"] for d in sent}) == 2
    assert s.codat_requests("dataset") >= 2  # each dataset's status was asked of Codat, not taken from the alert
    assert s.target.of(s.company) == []  # cleared by a re-push: no person needed


def test_one_error_told_three_times_under_different_ids_repushes_once(s: Stack) -> None:
    """One error alert under three delivery ids (and one repeated id) causes exactly one re-push."""
    s.sandbox("POST", "/_sandbox/config", json={"webhookUrl": None})
    try:
        s.sandbox("POST", "/_sandbox/script/dataset", json={"companyId": s.company, "dataType": ORDERS,
                                                             "status": "FetchError", "times": 1})
        s.put("orders", [order(1), order(2)])
        [failed] = s.ended_at_codat(ORDERS, 1)
        body = error_alert(s, failed["id"])
        answers = [s.deliver(body) for _ in range(3)]
        assert [a.status_code for a in answers] == [202, 202, 202]
        again = s.deliver(body, msg_id=answers[0].json()["id"])
        assert (again.status_code, again.json()["status"]) == (200, "duplicate")
        alerts_done(s, 3)
        s.ended_at_codat(ORDERS, 2)
        assert s.deliver(read_completed(s, (ORDERS, "Complete"))).status_code == 202
        settled(s, ORDERS, "accepted", 2)
    finally:
        s.sandbox("POST", "/_sandbox/config", json={"webhookUrl": f"{s.relay_url}/webhooks/codat"})
    assert len(s.pushes(ORDERS)) == 2
    assert s.rows("SELECT count(*) FROM jobs WHERE kind = 'push' AND status = 'waiting'") == [(0,)]
    assert [a["status"] for a in s.alerts()] == ["done"] * 4


def read_completed(s: Stack, *data_types: tuple[str, str]) -> dict[str, Any]:
    body = read_completed_body(*data_types)
    body["payload"]["referenceCompany"]["id"] = s.company
    return body


def test_stale_error_alert_after_complete_does_not_repush(s: Stack) -> None:
    """An error alert for a dataset Codat says is Complete changes nothing."""
    s.put("orders", [order(1)])
    settled(s, ORDERS, "accepted", 1)
    [push] = s.pushes(ORDERS)
    stale = {"ClientId": "c", "CompanyId": s.company, "AlertId": str(uuid.uuid4()),
             "RuleType": "Data Sync Status Changed To Error",
             "Data": {"dataType": ORDERS, "datasetStatus": "FetchError", "datasetId": push["datasetId"]}}
    answer = s.deliver(stale)
    assert answer.status_code == 202
    until(s.alerts, lambda a: any(x["id"] == answer.json()["id"] and x["status"] == "done" for x in a), "stale alert")
    assert len(s.pushes(ORDERS)) == 1 and s.record_states(ORDERS) == {"accepted": 1}


def test_read_completed_with_two_types_repushes_only_the_failed_one(s: Stack) -> None:
    """read.completed naming orders (Complete) and payments (FetchError): only payments go again."""
    s.sandbox("POST", "/_sandbox/config", json={"webhookUrl": None})
    try:
        s.sandbox("POST", "/_sandbox/script/dataset", json={"companyId": s.company, "dataType": PAYMENTS,
                                                             "status": "FetchError", "times": 1})
        s.put("orders", [order(1)])
        s.put("payments", [payment(1)])
        s.ended_at_codat(ORDERS, 1)
        s.ended_at_codat(PAYMENTS, 1)
        assert s.deliver(read_completed(s, (ORDERS, "Complete"), (PAYMENTS, "FetchError"))).status_code == 202
        settled(s, ORDERS, "accepted", 1)
        s.ended_at_codat(PAYMENTS, 2)  # the re-push, answered by Codat but not yet told
        assert s.record_states(PAYMENTS) == {"pushed": 1}
        assert s.deliver(read_completed(s, (PAYMENTS, "Complete"))).status_code == 202
        settled(s, PAYMENTS, "accepted", 1)
    finally:
        s.sandbox("POST", "/_sandbox/config", json={"webhookUrl": f"{s.relay_url}/webhooks/codat"})
    assert (len(s.pushes(ORDERS)), len(s.pushes(PAYMENTS))) == (1, 2)
    assert s.codat_requests("dataset") == 3  # orders, payments, and the re-pushed payments: each asked once


def test_repeated_failures_repush_exactly_max_times_then_tell_once(s: Stack) -> None:
    """Four FetchErrors in a row: three re-pushes (RELAY_REPUSH_MAX_ATTEMPTS), then one repush_exhausted."""
    s.sandbox("POST", "/_sandbox/script/dataset", json={"companyId": s.company, "dataType": ORDERS,
                                                         "status": "FetchError", "times": 10})
    s.put("orders", [order(1), order(2)])
    told = until(lambda: s.target.of(s.company, "repush_exhausted"), bool, "repush_exhausted")
    settled(s, ORDERS, "failed", 2)
    assert len(s.pushes(ORDERS)) == 4
    assert len(told) == 1 and told[0]["details"]["repushes"] == 3 and told[0]["severity"] == "critical"


@pytest.mark.parametrize(("status", "kind"), [("AuthError", "auth_required"), ("ValidationError", "dataset_failed")])
def test_errors_a_repush_cannot_clear_are_told_not_repushed(s: Stack, status: str, kind: str) -> None:
    """AuthError → auth_required; ValidationError → dataset_failed with Codat's message; no re-push."""
    s.sandbox("POST", "/_sandbox/script/dataset", json={
        "companyId": s.company, "dataType": ORDERS, "status": status, "times": 1,
        "errorMessage": "Tax rate 'ZZ' does not exist"})
    s.put("orders", [order(1)])
    [note] = until(lambda: s.target.of(s.company, kind), bool, kind)
    settled(s, ORDERS, "failed", 1)
    assert len(s.pushes(ORDERS)) == 1
    assert note["details"]["status"] == status and "Tax rate 'ZZ'" in (note["details"]["message"] or "")
    assert len(s.target.of(s.company)) == 1


def test_connection_deleted_pauses_and_reconnection_pushes_the_backlog(s: Stack) -> None:
    """Deleted → paused, nothing pushed, told once; reconnected → resumed, the backlog pushed, told resolved."""
    s.put("orders", [order(1)])
    settled(s, ORDERS, "accepted", 1)
    s.sandbox("POST", f"/_sandbox/companies/{s.company}/delete-connection")
    until(s.company_view, lambda c: c.get("paused") is True, "company paused")
    s.put("orders", [order(2), order(1, amount=11.0)])
    until(lambda: s.record_states(ORDERS), lambda c: c.get("pending") == 2, "backlog pending")
    assert len(s.pushes(ORDERS)) == 1
    [told] = until(lambda: s.target.of(s.company, "connection_deleted"), bool, "connection_deleted")
    s.sandbox("POST", f"/_sandbox/companies/{s.company}/reconnect")
    until(s.company_view, lambda c: c.get("paused") is False, "company resumed")
    settled(s, ORDERS, "accepted", 2)
    assert len(s.pushes(ORDERS)) == 2 and sorted(s.pushes(ORDERS)[1]["recordIds"]) == ["o-1", "o-2"]
    assert told["severity"] == "critical" and len(s.target.of(s.company, "connection_deleted")) == 1
    # The reconnection ended the problem: staff are told so, about the same problem.
    [over] = until(lambda: s.target.of(s.company, "connection_deleted", "resolved"), bool, "resolved")
    assert over["problemId"] == told["problemId"] and over["severity"] == "info"
    # Nothing was even tried while paused: Codat would have answered 404 (the sandbox does not list those).
    assert s.codat_requests("push", 404) == 0 and s.codat_requests("push", 200) == 2
    outcomes = s.rows("SELECT outcome, count(*) FROM pushes WHERE company_id = :company GROUP BY outcome")
    assert [tuple(row) for row in outcomes] == [("pushed", 2)]


def test_notifications_wait_out_a_target_outage_and_arrive_once(s: Stack) -> None:
    """The notification target refuses for a while: the notification arrives once it is back, once."""
    s.target.down = True
    try:
        s.sandbox("POST", "/_sandbox/script/dataset", json={"companyId": s.company, "dataType": ORDERS,
                                                             "status": "PrerequisiteNotMet", "times": 1})
        s.put("orders", [order(1)])
        until(lambda: s.target.refused, lambda n: n >= 2, "refused deliveries")
    finally:
        s.target.down = False
    until(lambda: s.target.of(s.company), bool, "notification after the outage")
    settled(s, ORDERS, "failed", 1)
    assert len(s.target.of(s.company)) == 1


def start_sync(s: Stack) -> dict[str, Any]:
    """A manual sync through codat-relay's admin API (which then follows it by polling)."""
    answer = httpx.post(f"{s.relay_url}/v1/companies/{s.company}/sync/latest", json={}, headers=ADMIN, timeout=10)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


@pytest.mark.parametrize("shape", ["envelope", "legacy"])
def test_a_sync_is_learned_by_polling_with_no_webhook(s: Stack, shape: str) -> None:
    """No webhook says a Sync for Commerce sync ended (FACTS §6): a 2000 sync makes records synced within a
    minute, a 4200 one is told as sync_failed (map error) — learned by polling sync status, in every shape."""
    s.sandbox("POST", "/_sandbox/config", json={"webhookShape": shape, "legacyAuthHeader": TEST_AUTH_HEADER})
    try:
        # Dated within the sync's range: a sync takes only the records its range covers (sync-commerce-current.json).
        s.put("orders", [order(1, created=an_hour_ago()), order(2, created=an_hour_ago())])
        settled(s, ORDERS, "accepted", 2)
        s.sandbox("POST", "/_sandbox/script/sync", json={"companyId": s.company, "code": 2000})
        start_sync(s)
        until(lambda: s.record_states(ORDERS), lambda c: c == {"synced": 2}, "2 orders synced", deadline_s=60)
        s.sandbox("POST", "/_sandbox/script/sync", json={"companyId": s.company, "code": 4200,
                                                      "errorMessage": "Account 400 is missing"})  # fmt: skip
        failed = start_sync(s)
        [note] = until(lambda: s.target.of(s.company, "sync_failed"), bool, "sync_failed", deadline_s=60)
    finally:
        s.sandbox("POST", "/_sandbox/config", json={"webhookShape": "envelope"})
    assert (note["details"]["syncStatusCode"], note["details"]["meaning"]) == (4200, "map error")
    assert note["details"]["errorMessage"] == "Account 400 is missing"
    assert note["details"]["syncId"] == failed["commerceSyncId"]
    sent = {d["eventType"] for d in s.sandbox("GET", "/_sandbox/webhooks")["results"]}
    assert not sent & {"SyncCompleted", "SyncFailed"}  # Expenses rules: the sandbox sends them for nothing
    assert s.record_states(ORDERS) == {"synced": 2}


def test_a_late_legacy_deletion_after_a_reconnection_changes_nothing(s: Stack) -> None:
    """Legacy rules: deleted → paused, reconnected → resumed; the deletion redelivered late leaves it resumed."""
    s.sandbox("POST", "/_sandbox/config", json={"webhookShape": "legacy", "legacyAuthHeader": TEST_AUTH_HEADER})
    try:
        s.put("orders", [order(1)])
        settled(s, ORDERS, "accepted", 1)
        s.sandbox("POST", f"/_sandbox/companies/{s.company}/delete-connection")
        until(s.company_view, lambda c: c.get("paused") is True, "company paused")
        s.sandbox("POST", f"/_sandbox/companies/{s.company}/reconnect")
        until(s.company_view, lambda c: c.get("paused") is False, "company resumed")
        [deletion] = [d["body"] for d in s.sandbox("GET", "/_sandbox/webhooks")["results"]
                      if d["eventType"] == "SyncConnectionDeleted" and d["body"]["CompanyId"] == s.company]
        late = s.deliver({**deletion, "AlertId": str(uuid.uuid4())})  # another rule's copy, delivered late
        assert late.status_code == 202
        until(s.alerts, lambda a: any(x["id"] == late.json()["id"] and x["status"] == "done" for x in a), "late alert")
    finally:
        s.sandbox("POST", "/_sandbox/config", json={"webhookShape": "envelope"})
    view = s.company_view()
    assert view["paused"] is False and view["connection"]["status"] == "linked"
    assert len(s.target.of(s.company, "connection_deleted")) == 1


@pytest.fixture(params=["sqlite", "postgres"])
def sweeping(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """A stack whose datasets are never polled one by one, with a sweep every second and no webhooks."""
    settings = {"RELAY_DATASET_POLLS": "0", "RELAY_PUSH_INTERVAL_SECONDS": "1"}
    if request.param == "sqlite":
        db = tmp_path / "relay.db"
        db.write_bytes(request.getfixturevalue("sqlite_template").read_bytes())
        with stack(f"sqlite+aiosqlite:///{db}", tmp_path, **settings) as running:
            running.sandbox("POST", "/_sandbox/config", json={"webhookUrl": None})
            running.new_company()
            yield running
        return
    name, url = fresh_postgres(request.getfixturevalue("postgres_template"))
    try:
        with stack(url, tmp_path, **settings) as running:
            running.sandbox("POST", "/_sandbox/config", json={"webhookUrl": None})
            running.new_company()
            yield running
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_dataset_whose_webhook_never_comes_is_resolved_by_the_sweeper(sweeping: Stack) -> None:
    """No webhooks and no per-dataset polls: the periodic sweep asks Codat and the records end accepted."""
    s = sweeping
    s.put("orders", [order(i) for i in range(5)])
    settled(s, ORDERS, "accepted", 5)
    assert s.alerts() == []
    assert s.codat_requests("dataset") >= 1
    assert s.rows("SELECT count(*) FROM jobs WHERE kind = 'push_sweep' AND status = 'done'")[0][0] >= 1
