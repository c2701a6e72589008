"""A worker process for the multi-process queue tests.

    python -m tests.integration.worker_proc DB_URL OUT_DIR [--mode record|block] [--lease S] [--concurrency N]
                                                    [--claim-ahead N]

Kind `record` appends one JSON line per run to OUT_DIR/runs-PID.jsonl: job id, key, seq, start and end
(CLOCK_MONOTONIC, shared by every process on the machine) and the pid. In `block` mode the function
writes OUT_DIR/started-PID and then never returns, so the test can kill the process mid-job.
SIGTERM stops the worker gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import time
from pathlib import Path

import structlog

from service.clock import SystemClock
from service.dead_jobs import LogDeadJobs
from service.queue import Job
from service.retry import RetryPolicy
from service.worker import JobFunction, Worker
from tests.pgbouncer import engine_for


def record_to(out: Path) -> JobFunction:
    path = out / f"runs-{os.getpid()}.jsonl"

    async def record(job: Job, attempt: int) -> None:
        start = time.monotonic_ns()
        await asyncio.sleep(random.uniform(0, 0.002))  # widens any overlap the queue would allow
        end = time.monotonic_ns()
        line = {"job": job.id, "key": job.lock_key, "seq": job.payload.get("seq"), "attempt": attempt}
        line.update(start=start, end=end, pid=os.getpid())
        with path.open("a") as fh:
            fh.write(json.dumps(line) + "\n")

    return record


def block_in(out: Path) -> JobFunction:
    async def block(job: Job, attempt: int) -> None:
        (out / f"started-{os.getpid()}").write_text(str(job.id))
        await asyncio.Event().wait()

    return block


async def main(args: argparse.Namespace) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    engine = engine_for(args.database_url, pool_size=4)
    out = Path(args.out_dir)
    function = block_in(out) if args.mode == "block" else record_to(out)
    worker = Worker(
        engine, {"record": function},
        concurrency=args.concurrency, lease_s=args.lease, retry=RetryPolicy(max_attempts=5), clock=SystemClock(),
        notifier=LogDeadJobs(), poll_interval_s=0.2, grace_s=2.0, claim_ahead=args.claim_ahead,
    )  # fmt: skip
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await worker.run(stop)
    finally:
        await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("database_url")
    parser.add_argument("out_dir")
    parser.add_argument("--mode", choices=["record", "block"], default="record")
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--claim-ahead", type=int, default=None, help="jobs held beyond the slots")
    asyncio.run(main(parser.parse_args()))
