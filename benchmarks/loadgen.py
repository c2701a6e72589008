"""The load generator: Debian's `wrk` replaying pre-signed deliveries through `replay.lua`.

The generator shares the machine's 2 cores with the server, so it must be cheap: wrk is C, and every
request is generated and signed before the timed phase, so signing costs nothing while it runs.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from service.signatures import decode_secret, sign

REPLAY_SCRIPT = Path(__file__).with_name("replay.lua")
WEBHOOK_PATH = "/webhooks/codat"
COMPANY_COUNT = 50  # enough companies that per-company ordering keys spread like real traffic
RESULT_MARKER = "WRK_RESULT "
WRK_TIMEOUT_S = 5  # wrk's per-request timeout: far above the p99 aim, so only real stalls count


@dataclass(frozen=True)
class WrkResult:
    requests: int  # answers received in the timed window
    duration_s: float
    sent: int  # requests written (the difference from `requests` was in flight at the stop)
    ok: int  # answers that were 202
    others: dict[int, int]  # every other status, with its count
    wrapped: int  # times the request file ran out (ids then repeat)
    errors: dict[str, int]  # socket errors and timeouts as wrk counts them
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s

    @property
    def failures(self) -> int:
        """Everything that makes a run invalid: non-202 answers, socket errors, timeouts."""
        socket_errors = sum(v for k, v in self.errors.items() if k != "status")  # status: counted in others
        return sum(self.others.values()) + socket_errors

    @property
    def in_flight(self) -> int:
        return max(self.sent - self.requests, 0)


def ensure_wrk() -> str:
    """Path of wrk, installing Debian's package when missing and we may (the benchmark runs as root)."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemExit("wrk is missing: install it (apt-get install -y wrk) and rerun")
    print("installing wrk (apt-get) ...", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "wrk"],
        check=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    return shutil.which("wrk") or "wrk"


def company_ids(seed: int = 7) -> list[str]:
    rng = random.Random(seed)  # the same 50 companies in every run
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(COMPANY_COUNT)]


def delivery_body(msg_id: str, company_id: str, connection_id: str) -> bytes:
    """A `read.completed` envelope of about 600 bytes, shaped like `service.testing.read_completed_body`."""
    envelope = {
        "id": msg_id,
        "eventType": "read.completed",
        "generatedDate": "2024-09-29T20:26:10.344522Z",
        "payload": {
            "referenceCompany": {
                "id": company_id,
                "name": "Toft stores and the long-named trading company of the benchmark",
                "description": "A company whose read completed with a fetch error, as Codat reports it.",
                "tags": {"region": "uk", "tier": "gold"},
            },
            "modifiedFromDate": None,
            "dataTypes": [
                {
                    "connectionId": connection_id,
                    "dataType": "commerce-orders",
                    "recordsModified": True,
                    "status": "FetchError",
                    "issues": [],
                }
            ],
        },
    }
    return json.dumps(envelope, separators=(",", ":")).encode()


def write_requests(path: Path, count: int, secret: str) -> int:
    """Write `count` signed raw requests, each a unique delivery; returns the mean body size."""
    key = decode_secret(secret)
    companies = company_ids()
    timestamp = int(time.time())  # one stamp: the run stays far inside the ±300 s tolerance
    body_bytes = 0
    with path.open("wb") as out:
        for i in range(count):
            msg_id = f"msg_bench_{uuid.uuid4().hex}"
            body = delivery_body(msg_id, companies[i % COMPANY_COUNT], str(uuid.uuid4()))
            head = (
                f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nwebhook-id: {msg_id}\r\nwebhook-timestamp: {timestamp}\r\n"
                f"webhook-signature: {sign(key, msg_id, timestamp, body)}\r\n\r\n"
            ).encode()
            raw = head + body
            out.write(b"%d\n" % len(raw))
            out.write(raw)
            body_bytes += len(body)
    return body_bytes // max(count, 1)


def run_wrk(
    wrk: str,
    base_url: str,
    requests_file: Path,
    *,
    first: int,
    duration_s: float,
    connections: int,
    threads: int,
) -> WrkResult:
    """One wrk run replaying `requests_file` from request number `first`."""
    cmd = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(round(duration_s), 1)}s",
        f"--timeout={WRK_TIMEOUT_S}s",
        "-s",
        str(REPLAY_SCRIPT),
        base_url + WEBHOOK_PATH,
        "--",
        str(requests_file),
        str(first),
        str(threads),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARKER)), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    raw = json.loads(line[len(RESULT_MARKER) :])
    return WrkResult(
        requests=raw["requests"],
        duration_s=raw["duration_us"] / 1e6,
        sent=raw["sent"],
        ok=raw["ok"],
        others={int(k): v for k, v in raw["others"].items()},
        wrapped=raw["wrapped"],
        errors=raw["errors"],
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
    )
