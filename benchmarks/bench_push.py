"""Push pipeline: records/s from intake to datasets Complete, and the worker's peak RSS for one big company.

    python -m benchmarks.bench_push [--records 1000000] [--backend postgres|sqlite] [--no-profile]

Real processes as a deployment runs them: `codat-relay sandbox` (datasets Complete at once, pushes handled
instantly), `codat-relay web` taking intake, one `codat-relay worker` pushing. Phase 1 sends every record
for ONE company through the intake API (5,000 per request); phase 2 starts the worker and times it until
every dataset is Complete (so the worker's RSS covers the push alone: VmHWM from /proc). py-spy samples
the web process in phase 1 and the worker in phase 2; the summary groups samples by where time went.
Results: a table on stdout and `.bench/push.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

from benchmarks.common import (
    REPO,
    Server,
    clean_env,
    create_postgres_database,
    drop_postgres_database,
    format_table,
    free_port,
    machine_info,
    python,
    run_checked,
)  # fmt: skip
from service.testing import SANDBOX_API_KEY, sandbox_company

COMPANY = "bench-company"
PER_REQUEST = 5_000
CLIENTS = 2  # concurrent intake requests: the web process has work while one request is on the wire
API_TOKEN = "bench-api-token"  # noqa: S105 -- a throw-away token for a local benchmark
POLL_S = 0.5
DEADLINE_S = 3_600.0
# Where a sample's time went: the first frame from the leaf up that matches decides.
CATEGORIES = (
    ("JSON encode/decode", ("orjson", "canonical", "json_response", "_records_of", "loads", "dumps")),
    ("hashing", ("content_hash", "blake2b")),
    ("validation (pydantic)", ("pydantic", "validate_records", "model_validate")),
    ("database driver + SQL", ("asyncpg", "sqlalchemy", "aiosqlite", "sqlite3")),
    ("HTTP (httpx/uvicorn)", ("httpx", "httpcore", "h11", "uvicorn", "httptools", "starlette", "anyio")),
)


def order(n: int) -> dict[str, Any]:
    """An order of about 450 bytes: a line item, a payment, refs."""
    return {
        "id": f"ord-{n:08d}", "orderNumber": str(n), "currency": "GBP", "country": "GB",
        "createdDate": "2025-06-01T09:00:00Z", "sourceModifiedDate": "2025-06-01T09:00:00Z",
        "totalAmount": 12.5, "totalTaxAmount": 2.08, "totalDiscount": 0, "totalRefund": 0, "totalGratuity": 0,
        "orderLineItems": [{"id": f"li-{n}", "quantity": 1, "unitPrice": 12.5, "totalAmount": 12.5,
                            "productRef": {"id": "p-1", "name": "Coffee"}}],
        "payments": [{"id": f"pay-{n}", "amount": 12.5, "type": "Card", "status": "Paid"}],
        "locationRef": {"id": "loc-1", "name": "Shop"},
    }  # fmt: skip


def bodies(total: int) -> Iterator[bytes]:
    for start in range(0, total, PER_REQUEST):
        yield orjson.dumps({"records": [order(n) for n in range(start, min(start + PER_REQUEST, total))]})


def wait_for(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


async def _complete(url: str) -> int:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        return int(await conn.fetchval(
            "SELECT coalesce(sum(record_count), 0) FROM datasets WHERE status = 'Complete'") or 0)  # fmt: skip
    finally:
        await conn.close()


def records_complete(database_url: str) -> int:
    if database_url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(database_url.split(":///", 1)[1]) as conn:
            row = conn.execute("SELECT coalesce(sum(record_count), 0) FROM datasets WHERE status = 'Complete'")
            return int(row.fetchone()[0])
    return asyncio.run(_complete(database_url))


def spy(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy on `pid` until it exits (collapsed stacks); None when py-spy is not installed."""
    binary = REPO / ".venv" / "bin" / "py-spy"
    if not binary.exists():
        return None
    cmd = [str(binary), "record", "--pid", str(pid), "--format", "raw", "--rate", "50", "-o", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarise(raw: Path) -> dict[str, Any]:
    """Share of active samples per category, and the top leaf functions."""
    if not raw.exists():
        return {}
    by_category: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        samples = int(count)
        leaves[frames[-1]] += samples
        by_category[_category(frames)] += samples
    total = sum(by_category.values()) or 1
    return {
        "samples": total,
        "share": {k: round(100 * v / total, 1) for k, v in by_category.most_common()},
        "top": [[frame, round(100 * n / total, 1)] for frame, n in leaves.most_common(8)],
    }


def _category(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, needles in CATEGORIES:
            if any(needle in frame for needle in needles):
                return name
    return "other (asyncio, our code)"


def intake(base_url: str, total: int) -> float:
    headers = {"authorization": f"Bearer {API_TOKEN}", "content-type": "application/json"}
    url = f"{base_url}/v1/companies/{COMPANY}/records/orders"
    started = time.perf_counter()
    with httpx.Client(timeout=120) as client, ThreadPoolExecutor(CLIENTS) as pool:
        for answer in pool.map(lambda body: client.put(url, content=body, headers=headers), bodies(total)):
            if answer.status_code != 202:
                raise RuntimeError(f"intake answered {answer.status_code}: {answer.text[:300]}")
    return time.perf_counter() - started


def push(database_url: str, env: dict[str, str], total: int, tmp: Path, profile: bool) -> dict[str, Any]:
    log = (tmp / "worker.log").open("wb")
    started = time.perf_counter()
    # The worker serves its own /healthz and /metrics: it needs a port of its own beside the web's.
    worker_env = {**env, "RELAY_PORT": str(free_port())}
    worker = subprocess.Popen([python(), "-m", "service.cli", "worker"], env=worker_env, cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT)  # fmt: skip
    spied = spy(worker.pid, tmp / "worker.spy") if profile else None
    peak_rss = 0
    try:
        while records_complete(database_url) < total:
            if worker.poll() is not None or time.perf_counter() - started > DEADLINE_S:
                raise RuntimeError(f"worker stopped or too slow; see {tmp / 'worker.log'}")
            peak_rss = max(peak_rss, vm_kib(worker.pid, "VmRSS"))
            time.sleep(POLL_S)
        elapsed = time.perf_counter() - started
        hwm = vm_kib(worker.pid, "VmHWM")  # the kernel's high-water mark: no peak between samples is missed
    finally:
        worker.terminate()
        worker.wait(60)
        if spied is not None:
            spied.wait(60)
        log.close()
    return {"seconds": elapsed, "peak_rss_mib": round(max(hwm, peak_rss) / 1024, 1),
            "profile": summarise(tmp / "worker.spy")}  # fmt: skip


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    pg_name = None
    if args.backend == "postgres":
        pg_name, database_url = create_postgres_database()
    else:
        database_url = f"sqlite+aiosqlite:///{tmp / 'relay.db'}"
    sandbox_port, web_port = free_port(), free_port()
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    env = clean_env({
        "RELAY_DATABASE_URL": database_url, "RELAY_PORT": str(web_port), "RELAY_API_TOKEN": API_TOKEN,
        "RELAY_ALLOW_UNAUTHENTICATED_WEBHOOKS": "true", "RELAY_CODAT_BASE_URL": sandbox_url,
        "RELAY_CODAT_API_KEY": SANDBOX_API_KEY,
        "RELAY_LOG_LEVEL": "warning", "RELAY_LOG_FORMAT": "json", "RELAY_PUSH_DEBOUNCE_SECONDS": "0",
    })  # fmt: skip
    sandbox = subprocess.Popen(
        [python(), "-m", "service.cli", "sandbox", "--port", str(sandbox_port), "--pace-seconds", "0",
         "--push-processing-seconds", "0"], env=env, cwd=REPO, stdout=(tmp / "sandbox.log").open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    web = None
    try:
        run_checked([python(), "-m", "service.cli", "migrate"], env)
        wait_for(f"{sandbox_url}/_sandbox/config", sandbox)
        sandbox_company(sandbox_url, COMPANY)
        web = Server("web", [python(), "-m", "service.cli", "web"], env, web_port, tmp / "web.log")
        web.wait_ready()
        spied = spy(web.proc.pid, tmp / "web.spy") if args.profile else None
        intake_s = intake(web.base_url, args.records)
        web.stop()
        if spied is not None:
            spied.wait(60)
        pushed = push(database_url, env, args.records, tmp, args.profile)
    finally:
        if web is not None:
            web.stop()
        sandbox.terminate()
        sandbox.wait(60)
        if pg_name is not None:
            drop_postgres_database(pg_name)
    total_s = intake_s + pushed["seconds"]
    return {
        "backend": args.backend, "records": args.records, "intake_s": round(intake_s, 1),
        "push_s": round(pushed["seconds"], 1), "intake_per_s": round(args.records / intake_s),
        "push_per_s": round(args.records / pushed["seconds"]), "end_to_end_per_s": round(args.records / total_s),
        "worker_peak_rss_mib": pushed["peak_rss_mib"], "web_profile": summarise(tmp / "web.spy"),
        "worker_profile": pushed["profile"],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_push", description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--backend", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    args = parser.parse_args(argv)
    tmp = REPO / ".bench" / "push"
    tmp.mkdir(parents=True, exist_ok=True)
    result = run(args, tmp)
    rows = [[k, str(v)] for k, v in result.items() if not k.endswith("profile")]
    print(format_table(["push pipeline", "value"], rows))
    for name in ("web_profile", "worker_profile"):
        if result[name]:
            share = result[name]["share"]
            print(f"\n{name} (share of active samples, %)")
            print(format_table(["where", "%"], [[k, str(v)] for k, v in share.items()]))
    out = REPO / ".bench" / "push.json"
    out.write_text(json.dumps({"machine": machine_info(), "result": result}, indent=2))
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
