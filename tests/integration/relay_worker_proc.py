"""`codat-relay worker` with one job kind added, for shutdown tests.

    python -m tests.integration.relay_worker_proc OUT_DIR      (settings from RELAY_*, as the real command)

Kind `sleep` writes OUT_DIR/started-JOB_ID, sleeps `payload["seconds"]`, then writes OUT_DIR/finished-JOB_ID.
Everything else is the real command — uvicorn, the lifespan, the runtime's worker, SIGTERM handling — as
tests/reliability/relay_proc.py does for handlers.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from service import runtime
from service.cli import entry as cli
from service.queue import Job


def main() -> int:
    out = Path(sys.argv[1])

    async def sleep(job: Job, attempt: int) -> None:
        (out / f"started-{job.id}").write_text(str(attempt))
        await asyncio.sleep(float(job.payload["seconds"]))
        (out / f"finished-{job.id}").write_text(str(attempt))

    class WorkerWithSleep(runtime.Worker):
        def __init__(self, engine: Any, jobs: Any, **kwargs: Any) -> None:
            super().__init__(engine, {**jobs, "sleep": sleep}, **kwargs)

    runtime.Worker = WorkerWithSleep  # type: ignore[misc]  # the name Runtime.build_worker looks up
    return cli.main(["worker"])


if __name__ == "__main__":
    sys.exit(main())
