"""Every benchmark, one after the other, then `BENCHMARKS.md` from what they wrote.

    python -m benchmarks.run_all [--runs 5] [--only ingest,queue,push,e2e,storm] [--output BENCHMARKS.md]

Each benchmark runs as its own subprocess (a crash or a hang stops that one only, and it is marked failed
in the file); its output goes to the terminal and to `.bench/logs/<name>.log`. A JSON result counts only
if it was written during this run, so a stale file from an earlier run is never reported as new.
Each benchmark runs `--runs` times (5 by default), one after the other: the report gives the median and
the spread of every ratio, as one run on a shared machine proves little. Durations are chosen so that one
run of everything stays under ~20 minutes on a 2-core machine, the storm's six of them set by Codat's rate
limit rather than by the machine (five runs: well over an hour).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import common, report

BENCH_DIR = common.REPO / ".bench"
DEFAULT_RUNS = 5
LOG_DIR = BENCH_DIR / "logs"


@dataclass(frozen=True)
class Bench:
    name: str
    args: tuple[str, ...]  # after `python -m`
    output: str | None  # the JSON it writes under .bench/, or None when it only prints
    timeout_s: float


# Defaults of each benchmark unless noted; the comments give the reason for any change.
BENCHES = (
    Bench("ingest", ("benchmarks.bench_ingest", "--duration", "10", "--warmup", "2"), "ingest.json", 300),
    Bench("queue", ("benchmarks.bench_queue", "--jobs", "5000"), None, 300),
    # 1M records for one company: the size the push target is stated at (RSS < 300 MB).
    Bench("push", ("benchmarks.bench_push", "--records", "1000000"), "push.json", 600),
    # --drain 45: a backlog the workers cannot clear in 45 s is reported as such (latencies become lower
    # bounds) rather than waited out, so the whole run keeps to its ~15 minutes.
    Bench("e2e", ("benchmarks.bench_e2e", "--rate", "500", "--duration", "20", "--warmup", "3", "--drain", "45"),
          "e2e.json", 720),
    # Full size (issue 18's storm), on SQLite then PostgreSQL: each takes about the time Codat's limit allows
    # for its ~2,000 calls (two minutes) after the one-minute storm.
    Bench("storm", ("benchmarks.storm",), "storm.json", 1200),
)


@dataclass
class Ran:
    bench: Bench
    command: str
    exit_code: int | None  # None: killed at its timeout
    seconds: float
    stdout: str
    result: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.exit_code != 0 or (self.bench.output is not None and self.result is None)


def run_one(bench: Bench) -> Ran:
    command = "python -m " + " ".join(bench.args)
    print(f"\n=== {bench.name}: {command}", flush=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    started = time.time()
    lines: list[str] = []
    # Unbuffered, so progress shows while it runs (and the log keeps everything if it hangs).
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with (LOG_DIR / f"{bench.name}.log").open("w") as log:
        proc = subprocess.Popen([common.python(), "-m", *bench.args], cwd=common.REPO, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        # A watchdog, not a check per line: a benchmark that hangs silently must be stopped as well.
        # Its own process group, so the servers it started go with it.
        killed = threading.Event()
        def kill() -> None:
            killed.set()
            os.killpg(proc.pid, signal.SIGKILL)

        watchdog = threading.Timer(bench.timeout_s, kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                print(line, end="", flush=True)
                log.write(line)
                lines.append(line)
            exit_code: int | None = proc.wait()
        finally:
            watchdog.cancel()
    if killed.is_set():
        exit_code = None
    ran = Ran(bench, command, exit_code, time.time() - started, "".join(lines))
    if exit_code is None:
        ran.notes.append(f"killed after {bench.timeout_s:.0f} s")
    if bench.output is not None:
        path = BENCH_DIR / bench.output
        if path.exists() and path.stat().st_mtime >= started:
            ran.result = json.loads(path.read_text())
        else:
            ran.notes.append(f".bench/{bench.output} was not written by this run")
    return ran


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated subset of: " + ", ".join(b.name for b in BENCHES))
    parser.add_argument("--output", type=Path, default=common.REPO / "BENCHMARKS.md")
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS,
                        help=f"runs of each benchmark; the report gives medians and spreads (default {DEFAULT_RUNS})")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    chosen = set(args.only.split(",")) if args.only else {b.name for b in BENCHES}
    context = report.Context.capture(
        command=" ".join(["python -m benchmarks.run_all", *(sys.argv[1:] if argv is None else argv)])
    )
    groups: list[list[Ran]] = []
    for bench in BENCHES:
        if bench.name not in chosen:
            continue
        group: list[Ran] = []
        for index in range(args.runs):
            print(f"\n--- {bench.name}: run {index + 1} of {args.runs}", flush=True)
            try:
                group.append(run_one(bench))
            except OSError as exc:  # could not even start it: still write up the others
                group.append(Ran(bench, " ".join(bench.args), -1, 0.0, "", notes=[f"did not start: {exc}"]))
        groups.append(group)
    context.finish()
    args.output.write_text(report.render(context, groups))
    print(f"\nwritten: {args.output}")
    for group in groups:
        for index, ran in enumerate(group, start=1):
            print(f"  {ran.bench.name:7} {index}/{len(group)} {'FAILED' if ran.failed else 'ok':6} "
                  f"{ran.seconds:6.0f} s  {'; '.join(ran.notes)}")  # fmt: skip
    return 1 if any(r.failed for group in groups for r in group) else 0


if __name__ == "__main__":
    sys.exit(main())
