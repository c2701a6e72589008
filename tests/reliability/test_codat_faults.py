"""Codat faults: a real relay pushing to a real sandbox that fails 20 % of calls, rate-limits, lags and hangs.

Issue 8: with the sandbox answering 500/503 to a fifth of the push, dataset and sync-status calls,
bursts of 429 with `Retry-After`, 2 s of latency on every sync-status call (and, in the full variant,
every dataset call), hangs longer than `RELAY_CODAT_TIMEOUT_SECONDS` (answered 504 when the relay has
long given up), and — for the
first pushes — a push that takes longer to process than the relay waits (so the relay's retry meets
Codat's idempotency cache: 409 while in flight, then the cached answer; the push endpoint's other
faults start once those are answered, see `run`), every record handed to the
relay ends `accepted` in the relay's view, every dataset the sandbox created ends `Complete`, and the
sandbox records no breach of Codat's push rules (no concurrent push, none over the chunk size, no
update after sync, no non-sparse delete) and no warning either (nothing pushed twice unchanged: a
retried push is answered from the idempotency cache, never turned into a second dataset).

`codat-relay serve` and `codat-relay sandbox` are real processes (tests/integration/e2e.py's stack).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.testing import sandbox_company
from tests.integration.e2e import ADMIN, Stack, stack, until
from tests.reliability.common import backend, report, slow

DATA_TYPES = {"orders": "commerce-orders", "payments": "commerce-payments", "transactions": "commerce-transactions"}
CODAT_TIMEOUT_S = 2.5  # RELAY_CODAT_TIMEOUT_SECONDS: above the 2 s latency, below the hangs
HANG_S = 3.0  # an injected timeout hangs this long (then 504), so the relay gives up first
# The first pushes take this long inside Codat: the relay times out at 2.5 s and retries under the same
# Idempotency-Key about a second later (409: still in flight), then gets the cached answer. 3.5 s left one
# second for that retry: too little on a loaded machine (the retry came after the push had finished).
SLOW_PUSH_S = 6.0
FIRST_WAVE = 0.6  # share of each data type's records sent before any dataset is Complete
UPDATES = 5  # records per company and data type changed in the second wave (pushed again, as updates)
MAX_PUSH_RECORDS = 50
REQUEST_SIZE = 40  # records per intake request: intake trickles in while pushes are already going
ERRORS = ("concurrent_push", "too_many_records", "update_after_sync", "non_sparse_delete")


@dataclass(frozen=True)
class Size:
    name: str
    companies: int
    per_type: dict[str, int]
    deadline_s: float
    slow_pushes: int  # pushes that arrive while `pushProcessingSeconds` is SLOW_PUSH_S

    @property
    def records(self) -> int:
        return self.companies * sum(self.per_type.values())


FAST = Size("fast", 2, {"orders": 100, "payments": 60, "transactions": 60}, 120.0, 2)
FULL = Size("full", 4, {"orders": 600, "payments": 300, "transactions": 300}, 480.0, 8)


def faults(size: Size) -> dict[str, dict[str, Any]]:
    """Per sandbox endpoint: 20 % 500/503, a 429 burst with Retry-After 1 s, hangs; 2 s latency on reads.

    The sync status is read before every push to a company Codat already holds data for (the second
    wave): 2 s on each. The full variant slows every dataset read by 2 s too (each dataset is read at
    least twice: its webhook's handler and its poll); the fast one keeps the time down.
    """
    hangs, burst = (1, 2) if size is FAST else (6, 4)
    common = {"errorRate": 0.2, "errorStatuses": [500, 503], "retryAfterS": 1, "hangS": HANG_S}
    return {
        "push": {**common, "burst429": burst, "timeouts": hangs},
        "dataset": {**common, "burst429": burst, "timeouts": hangs, "latencyS": 0.0 if size is FAST else 2.0},
        "sync_status": {**common, "burst429": burst, "timeouts": hangs, "latencyS": 2.0},
    }


def record(data_type: str, company: str, i: int, version: int = 1) -> dict[str, Any]:
    """Version 2 changes the amount and `sourceModifiedDate` (else Codat discards it: rule 9)."""
    stamp = {"createdDate": "2026-01-01T09:00:00Z", "sourceModifiedDate": f"2026-01-0{version}T10:00:00Z"}
    amount = i + (0.5 if version > 1 else 0.0)
    if data_type == "orders":
        return {"id": f"{company}-o-{i:05d}", "orderNumber": str(i), "currency": "GBP",
                "totalAmount": 10.0 + amount, **stamp}  # fmt: skip
    if data_type == "payments":
        return {"id": f"{company}-p-{i:05d}", "amount": 5.0 + amount, "currency": "GBP", **stamp}
    return {"id": f"{company}-t-{i:05d}", "totalAmount": 1.0 + amount, "currency": "GBP", "type": "Payment",
            **stamp}  # fmt: skip


def company_json(s: Stack, company: str) -> dict[str, Any]:
    """`GET /v1/companies/{id}` (the relay's view), {} while the company is unknown."""
    answer = httpx.get(f"{s.relay_url}/v1/companies/{company}", headers=ADMIN, timeout=10)
    return dict(answer.json()) if answer.status_code == 200 else {}


def relay_view(s: Stack, company: str) -> dict[str, dict[str, int]]:
    counts = company_json(s, company).get("records", {})
    return {t: {state: n for state, n in by_state.items() if n} for t, by_state in counts.items()}


def converged(s: Stack, size: Size, companies: list[str]) -> dict[str, Any]:
    """The relay's record states per company and the sandbox's dataset statuses, read once."""
    views = {c: relay_view(s, c) for c in companies}
    statuses = Counter(d["status"] for d in s.sandbox("GET", "/_sandbox/datasets")["results"])
    wanted = {DATA_TYPES[t]: {"accepted": n} for t, n in size.per_type.items()}
    return {"relay": views, "datasets": dict(statuses), "done": all(v == wanted for v in views.values())
            and set(statuses) == {"Complete"}}  # fmt: skip


def injected(s: Stack) -> dict[str, int]:
    """Fault answers the sandbox gave, by kind (5xx other than 504, 429, 504 = hang, 409 = in flight)."""
    out: Counter[str] = Counter()
    for row in s.sandbox("GET", "/_sandbox/requests")["results"]:
        status, n = row["status"], row["count"]
        kind = {429: "rate_limited_429", 504: "timeout_504", 409: "in_flight_409"}.get(status)
        if kind is None and status >= 500:
            kind = f"error_{status}"
        if kind is not None:
            out[f"{row['endpoint']}:{kind}"] += n
            out[kind] += n
    return dict(sorted(out.items()))


def relay_log_tail(path: Path, lines: int = 60) -> str:
    text = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join(text[-lines:])


def intake(s: Stack, size: Size, companies: list[str], first: bool) -> int:
    """One wave, REQUEST_SIZE records a request, interleaved across companies and data types.

    The first wave: the first FIRST_WAVE of each data type's records. The second: the rest, plus
    UPDATES changed records of the first wave. Returns the records sent.
    """
    sent = 0
    for company in companies:
        for data_type, n in size.per_type.items():
            cut = int(n * FIRST_WAVE)
            items = [record(data_type, company, i) for i in (range(cut) if first else range(cut, n))]
            if not first:
                items += [record(data_type, company, i, version=2) for i in range(UPDATES)]
            for start in range(0, len(items), REQUEST_SIZE):
                s.company = company
                chunk = items[start : start + REQUEST_SIZE]
                answer = s.put(data_type, chunk)
                assert answer["accepted"] == len(chunk) and not answer["conflicts"], answer
                sent += len(chunk)
    return sent


def run(database_url: str, tmp_path: Path, size: Size) -> None:
    settings = {
        "RELAY_CODAT_TIMEOUT_SECONDS": str(CODAT_TIMEOUT_S),
        "RELAY_MAX_PUSH_RECORDS": str(MAX_PUSH_RECORDS),
        "RELAY_LOG_LEVEL": "info",
    }
    with stack(database_url, tmp_path, **settings) as s:
        configured = faults(size)
        for endpoint in ("dataset", "sync_status"):
            s.sandbox("PUT", f"/_sandbox/faults/{endpoint}", json=configured[endpoint])
        s.sandbox("POST", "/_sandbox/config", json={"pushProcessingSeconds": SLOW_PUSH_S})
        companies = [sandbox_company(s.sandbox_url, f"co-faults-{i}") for i in range(size.companies)]
        started = time.monotonic()
        sent = intake(s, size, companies, first=True)
        # The first pushes are slow inside Codat: the relay times out, retries under the same key (409
        # while Codat is still at it), then gets the cached answer. Later ones are processed at once.
        until(lambda: len(s.sandbox("GET", "/_sandbox/pushes")["results"]), lambda n: n >= size.slow_pushes,
              "the slow pushes", deadline_s=size.deadline_s)  # fmt: skip
        s.sandbox("POST", "/_sandbox/config", json={"pushProcessingSeconds": 0})
        # Push faults only once no push of the first wave is open: the slow-push case (retries running
        # out while Codat still processes the push) has its own deterministic test below.
        until(lambda: [company_json(s, c) for c in companies], lambda views: all(
            v and v["openPushes"] == 0 and not any(by.get("pending") for by in v["records"].values())
            and any(by.get("accepted") for by in v["records"].values()) for v in views),
            "the first wave pushed, with a Complete dataset for every company", deadline_s=size.deadline_s)  # fmt: skip
        s.sandbox("PUT", "/_sandbox/faults/push", json=configured["push"])
        # Every company holds a Complete dataset now, so each push of the second wave makes the relay
        # read Codat's sync status first (a missed sync must not let an update of synced data out).
        sent += intake(s, size, companies, first=False)
        try:
            final = until(lambda: converged(s, size, companies), lambda v: v["done"],
                          "every record accepted and every dataset Complete", deadline_s=size.deadline_s)  # fmt: skip
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- relay log (tail) ---\n{relay_log_tail(tmp_path / 'relay.log')}") from None
        converge_s = time.monotonic() - started
        pushes = s.sandbox("GET", "/_sandbox/pushes")["results"]
        breaches = s.sandbox("GET", "/_sandbox/breaches")["results"]
        faults_seen = injected(s)
        held = s.sandbox("GET", "/_sandbox/records")["results"]
    relay_log = (tmp_path / "relay.log").read_text(errors="replace")
    keys = Counter(p["idempotencyKey"] for p in pushes)
    by_kind = Counter(b["kind"] for b in breaches)
    figures = {
        "backend": backend(database_url),
        "companies": size.companies,
        "records": size.records,
        "records_sent": sent,
        "updates": size.companies * len(size.per_type) * UPDATES,
        "max_push_records": MAX_PUSH_RECORDS,
        "pushes": len(pushes),
        "largest_push": max(p["count"] for p in pushes),
        "datasets": final["datasets"],
        "pushes_with_a_reused_idempotency_key": sum(n - 1 for n in keys.values() if n > 1),
        "faults_injected": faults_seen,
        "relay_codat_retries": relay_log.count('"codat_retry"'),
        "breaches": len(breaches),
        "breaches_by_kind": dict(by_kind),
        "records_held_by_codat": len(held),
        "converge_s": round(converge_s, 1),
    }
    report(f"codat-faults-{size.name}-{backend(database_url)}", figures)
    # The faults really happened: every kind, on the push endpoint at least.
    assert faults_seen.get("error_500", 0) + faults_seen.get("error_503", 0) > 0, faults_seen
    for kind in ("rate_limited_429", "timeout_504"):
        assert faults_seen.get(kind, 0) > 0, (kind, faults_seen)
    for endpoint in ("push", "dataset", "sync_status"):
        assert any(k.startswith(f"{endpoint}:") for k in faults_seen), (endpoint, faults_seen)
    assert faults_seen.get("push:in_flight_409", 0) > 0, faults_seen  # a retry met Codat's idempotency cache
    assert figures["relay_codat_retries"] > 0
    # Codat's rules: none broken, nothing pushed twice (a retry after a timeout is answered from the cache).
    assert not [b for b in breaches if b["kind"] in ERRORS], breaches[:20]
    assert breaches == [], breaches[:20]
    assert figures["pushes_with_a_reused_idempotency_key"] == 0, keys.most_common(3)
    assert figures["largest_push"] <= MAX_PUSH_RECORDS
    # Each version pushed once: every record, plus the changed ones again; Codat holds every record once.
    assert sum(p["count"] for p in pushes) == sent == size.records + figures["updates"], figures
    assert len(held) == size.records and sum(r["versions"] for r in held) == sent, figures


@pytest.mark.parametrize("size", [pytest.param(FAST, id="fast"), pytest.param(FULL, id="full", marks=slow)])
def test_codat_faults_end_complete_with_no_breach(database_url: str, tmp_path: Path, size: Size) -> None:
    """20 % 5xx, 429 bursts, 2 s latency, hangs past the timeout → all accepted, all Complete, 0 breaches."""
    run(database_url, tmp_path, size)


STILL_PROCESSING = (  # found by this suite, fixed in service/codat.py (a POST's 409 is transient)
    "a push Codat is still processing when the client's retries run out is lost: attempt 1 times out, "
    "attempts 2-5 get 409 'A request with this Idempotency-Key is still being processed', the client raises "
    "CodatRejected (409 is a 4xx), the pusher's _reject marks the records failed and tells staff "
    "dataset_failed — while Codat finishes the push and creates a dataset (Complete) the relay never learns "
    "of. The same happens when a job retry's first attempt meets the 409 (retryable() only retries 409 "
    "from attempt 2)"
)



def test_a_push_codat_is_still_processing_when_the_retries_run_out_is_not_lost(
    sqlite_template: Path, tmp_path: Path
) -> None:
    """Codat takes longer over a push than the client's retries last: the push must not be lost.

    Attempt 1 times out (0.5 s); attempts 2-5 (within ~5.3 s) meet Codat's idempotency cache while the
    first is still being processed (409). Codat then finishes (7 s) and creates the dataset.
    """
    db = tmp_path / "relay.db"
    db.write_bytes(sqlite_template.read_bytes())
    with stack(f"sqlite+aiosqlite:///{db}", tmp_path, RELAY_CODAT_TIMEOUT_SECONDS="0.5") as s:
        s.sandbox("POST", "/_sandbox/config", json={"pushProcessingSeconds": 7.0})
        s.new_company()
        s.put("orders", [record("orders", s.company, i) for i in range(5)])
        until(
            lambda: s.sandbox("GET", "/_sandbox/datasets")["results"],
            lambda ds: [d["status"] for d in ds] == ["Complete"],
            "Codat's dataset Complete",
            deadline_s=20,
        )
        s.sandbox("POST", "/_sandbox/config", json={"pushProcessingSeconds": 0})
        states = until(lambda: s.record_states("commerce-orders"), lambda c: "pushed" not in c and c != {},
                       "the relay settled", deadline_s=20)  # fmt: skip
        requests = s.sandbox("GET", "/_sandbox/requests")["results"]
        print("\nsandbox requests:", requests, "\nrelay records:", states, "\nnotifications:", s.target.received)
        assert states == {"accepted": 5}, (states, requests, s.target.received)
