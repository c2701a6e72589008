"""Durable-ack throughput: codat-relay's `POST /webhooks/codat` against a bare Starlette endpoint.

    python -m benchmarks.bench_ingest [--duration 10] [--connections 32] [--backends sqlite,postgres]

In one run, the same generator (wrk, `loadgen.py`) replays unique signed deliveries against (a) the bare
endpoint, (b) codat-relay on SQLite and (c) on PostgreSQL, each a separate process started as a user
would start it, and (d) the ceiling, `relay-nowrite`: the relay's own web process with a writer that stores
nothing (benchmarks/nowrite_web.py), the most the durable ack could reach if its write were free. Ratios
are to (a) measured in the same run: the machine is shared and noisy, so absolute figures drift. A run
with any non-202 answer or socket error is reported as invalid.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks import common, loadgen

AIM_P99_MS = 25.0
AIM_RATIO = {"sqlite": 0.6, "sqlite-normal": 0.6, "postgres": 0.5}  # the floors, per backend
# `sqlite-normal`: RELAY_SQLITE_SYNCHRONOUS=normal (crash-safe, not power-loss-safe): what the fsync costs.
EXTRA_ENV = {"sqlite-normal": {"RELAY_SQLITE_SYNCHRONOUS": "normal"}}
CEILING = "nowrite"  # no aim: it shows how much of the distance to the bare endpoint is not the write
# req/s the request file is sized for: well above any relay target (at most ~8k here). The bare endpoint can pass
# it (22k on a fast machine, 2026-12-07) and then replays the file: a repeated request is the same work for it
# (read, answer 202), so its wrap is noted but does not invalidate the run; a relay's does (a repeat is a duplicate).
MAX_RATE = 20_000
MAX_RUN_S = 240  # one timestamp signs a target's file; keep well inside the ±300 s tolerance
SECRET = "whsec_" + "YmVuY2htYXJrLW9ubHktc2VjcmV0LWtleS0zMmI="  # base64 of a benchmark-only key
OUTPUT = common.REPO / ".bench" / "ingest.json"


@dataclass
class Outcome:
    target: str
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    failures: int
    statuses: dict[str, int]
    errors: dict[str, int]
    server_cpu: float  # share of one core used by the server process during the timed phase
    requests_202: int = 0  # over warm-up and timed phase, for the durability check
    in_flight: int = 0
    alerts_rows: int | None = None
    ratio: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def durable(self) -> bool | None:
        """Every 202 has its row; extra rows can only be deliveries answered after wrk stopped reading."""
        if self.alerts_rows is None:
            return None
        return self.requests_202 <= self.alerts_rows <= self.requests_202 + self.in_flight


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="timed seconds per target (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per target (default 2)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: leave the CPU to the server)")
    parser.add_argument("--backends", default=f"sqlite,sqlite-normal,postgres,{CEILING}",
                        help="relay backends, comma-separated: " + ", ".join([*AIM_RATIO, CEILING]))
    parser.add_argument("--profile", action="store_true", help="py-spy the relay during the timed phase (slows it)")
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if unknown := set(args.backends) - {*AIM_RATIO, CEILING}:
        parser.error(f"unknown backend(s): {', '.join(sorted(unknown))}")
    if args.warmup + args.duration > MAX_RUN_S:
        parser.error(f"warm-up + duration must stay under {MAX_RUN_S} s (signature timestamp tolerance)")
    return args


def relay_env(database_url: str, port: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    return common.clean_env(
        {
            **(extra or {}),
            "RELAY_DATABASE_URL": database_url,
            "RELAY_PORT": str(port),
            "RELAY_WEBHOOK_SECRETS": SECRET,
            "RELAY_LOG_LEVEL": "warning",
            "RELAY_LOG_FORMAT": "json",
            "RELAY_ADMIN_TOKEN": "bench-admin-token",
            "RELAY_API_TOKEN": "bench-api-token",
        }
    )


def start_bare(tmp: Path) -> common.Server:
    port = common.free_port()
    cmd = [
        common.python(),
        "-m",
        "uvicorn",
        "benchmarks.bare_app:app",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--port",
        str(port),
    ]
    return common.Server("bare", cmd, common.clean_env({}), port, tmp / "bare.log")


def start_relay(tmp: Path, backend: str, database_url: str) -> common.Server:
    port = common.free_port()
    env = relay_env(database_url, port, EXTRA_ENV.get(backend))
    common.run_checked([common.python(), "-m", "service.cli", "migrate"], env)
    module = "benchmarks.nowrite_web" if backend == CEILING else "service.cli"
    cmd = [common.python(), "-m", module] + ([] if backend == CEILING else ["web"])
    return common.Server(f"relay-{backend}", cmd, env, port, tmp / f"relay-{backend}.log")


def profiler(server: common.Server, seconds: float) -> subprocess.Popen[bytes] | None:
    spy = Path(common.python()).with_name("py-spy")
    if not spy.exists():
        print("  --profile: py-spy missing (.venv/bin/pip install py-spy); not profiling", flush=True)
        return None
    OUTPUT.parent.mkdir(exist_ok=True)
    out = OUTPUT.parent / f"ingest-{server.name}.folded"  # collapsed stacks: flamegraph.pl or speedscope
    cmd = [
        str(spy),
        "record",
        "--pid",
        str(server.proc.pid),
        "--duration",
        str(int(seconds)),
        "--format",
        "raw",
        "--output",
        str(out),
        "--nonblocking",
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure(server: common.Server, args: argparse.Namespace, requests_file: Path, wrk: str) -> Outcome:
    """Warm up, then the timed phase, replaying each request of the file at most once."""
    server.wait_ready()

    def replay(first: int, seconds: float) -> loadgen.WrkResult:
        return loadgen.run_wrk(
            wrk,
            server.base_url,
            requests_file,
            first=first,
            duration_s=seconds,
            connections=args.connections,
            threads=args.threads,
        )

    warm = replay(0, args.warmup)
    spy = profiler(server, args.duration) if args.profile and server.name != "bare" else None
    cpu_before, started = server.cpu_seconds(), time.monotonic()
    timed = replay(warm.sent, args.duration)
    cpu = (server.cpu_seconds() - cpu_before) / (time.monotonic() - started)
    if spy is not None:
        spy.wait()
    notes = [f"request file ran out {timed.wrapped + warm.wrapped}x"] if timed.wrapped + warm.wrapped else []
    if warm.failures:
        notes.append(f"warm-up failures: {warm.failures} {warm.others} {warm.errors}")
    return Outcome(
        target=server.name,
        rps=timed.rps,
        p50_ms=timed.p50_ms,
        p90_ms=timed.p90_ms,
        p99_ms=timed.p99_ms,
        max_ms=timed.max_ms,
        failures=timed.failures + warm.failures,
        statuses={str(k): v for k, v in timed.others.items()},
        errors=timed.errors,
        server_cpu=cpu,
        requests_202=warm.ok + timed.ok,
        in_flight=warm.in_flight + timed.in_flight,
        notes=notes,
    )


def run_target(name: str, tmp: Path, args: argparse.Namespace, wrk: str) -> Outcome:
    """Fresh signed requests (fresh timestamps and ids), a fresh server and database, one measurement."""
    requests_file = tmp / "requests.bin"
    count = int(MAX_RATE * (args.warmup + args.duration)) + args.connections
    loadgen.write_requests(requests_file, count, SECRET)
    database, pg_name = None, None
    if name == "bare":
        server = start_bare(tmp)
    elif name.startswith("sqlite") or name == CEILING:  # the ceiling's database is only read at start-up
        database = f"sqlite+aiosqlite:///{tmp / f'relay-{name}.db'}"
        server = start_relay(tmp, name, database)
    else:
        pg_name, database = common.create_postgres_database()
        server = start_relay(tmp, name, database)
    try:
        try:
            outcome = measure(server, args, requests_file, wrk)
        finally:
            exit_code = server.stop()
        if exit_code not in (0, -signal.SIGTERM):  # uvicorn re-raises SIGTERM after a clean shutdown
            outcome.notes.append(f"server exit code {exit_code}: {server.log_tail(5)}")
        if database is not None and name != CEILING:
            outcome.alerts_rows = common.count_rows(database, "alerts")
        return outcome
    finally:
        requests_file.unlink(missing_ok=True)
        if pg_name is not None:
            common.drop_postgres_database(pg_name)


def report(outcomes: list[Outcome], machine: dict[str, str | int], command: str) -> bool:
    bare = outcomes[0]
    headers = ["target", "req/s", "p50 ms", "p99 ms", "ratio", "errors", "server CPU", "aim"]
    rows, valid = [], True
    for o in outcomes:
        o.ratio = o.rps / bare.rps if bare.rps else None
        backend = o.target.removeprefix("relay-")
        aim = "-"
        if backend in AIM_RATIO and o.ratio is not None:
            aim = "met" if o.ratio >= AIM_RATIO[backend] and o.p99_ms <= AIM_P99_MS else "MISSED"
        rows.append(
            [
                o.target,
                f"{o.rps:,.0f}",
                f"{o.p50_ms:.2f}",
                f"{o.p99_ms:.2f}",
                f"{o.ratio:.2f}" if o.ratio is not None else "-",
                str(o.failures),
                f"{o.server_cpu:.0%}",
                aim,
            ]
        )
        valid &= o.failures == 0 and o.durable is not False and (not o.notes or o.target == "bare")
    print(common.format_table(headers, rows))
    floors = ", ".join(f">= {ratio} ({backend})" for backend, ratio in AIM_RATIO.items())
    print(f"aims: ratio {floors}, p99 <= {AIM_P99_MS:.0f} ms")
    for o in outcomes:
        if o.alerts_rows is not None:
            verdict = "OK" if o.durable else "MISMATCH"
            print(
                f"durability {o.target}: {o.alerts_rows} alert rows for {o.requests_202} answers 202 "
                f"(+ up to {o.in_flight} in flight when wrk stopped) -> {verdict}"
            )
        if o.failures:
            print(f"failures {o.target}: statuses {o.statuses} socket errors {o.errors}")
        for note in o.notes:
            print(f"note {o.target}: {note}")
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    print(f"command: {command}")
    print("result: VALID" if valid else "result: INVALID (errors, non-202 answers or lost rows above)")
    return valid


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = loadgen.ensure_wrk()
    machine = common.machine_info()
    command = " ".join(
        ["python -m benchmarks.bench_ingest", shlex.join(sys.argv[1:] if argv is None else argv)]
    ).rstrip()
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp_name:
        for name in ["bare", *args.backends]:
            print(f"measuring {name} ...", flush=True)
            outcomes.append(run_target(name, Path(tmp_name), args, wrk))
    valid = report(outcomes, machine, command)
    OUTPUT.parent.mkdir(exist_ok=True)
    settings = {k: getattr(args, k) for k in ("duration", "warmup", "connections", "threads", "backends", "profile")}
    document = {
        "benchmark": "ingest",
        "valid": valid,
        "command": command,
        "machine": machine,
        "settings": settings,
        "generator": f"wrk -t{args.threads} -c{args.connections} + benchmarks/replay.lua",
        "results": [asdict(o) | {"durable": o.durable} for o in outcomes],
    }
    OUTPUT.write_text(json.dumps(document, indent=2) + "\n")
    print(f"written: {OUTPUT.relative_to(common.REPO)}")
    return 0 if valid else 1


if __name__ == "__main__":
    sys.exit(main())
