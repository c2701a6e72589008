"""The durable ack's ceiling: codat-relay's own `web` process, with a batch writer that stores nothing.

    python -m benchmarks.nowrite_web        (RELAY_* settings as for `codat-relay web`)

Everything on the webhook path but the write runs as in the relay: HTTP and its limits, reading the body,
verifying the signature, parsing, the hand-off to the writer task and back, the answer, the log line and
the counter. What it reaches is the most the durable ack could reach if storing cost nothing, so
`bench_ingest` shows it beside the relay (target `relay-nowrite`): the distance between the two is the
write's, the distance to the bare endpoint is the rest of the path's. It has no linger: with no write to
amortise, a lone delivery's wait would only idle the writer (with the relay's 10 ms this ceiling measured
0.38-0.56x bare, without it 0.49-0.60x, a few 6 s runs each on 2026-12-07: within the noise, but its answer's
p50 was then the linger itself). For measuring only: every delivery is answered 202 and nothing is kept.
"""

from __future__ import annotations

import sys
from typing import Any

from service import ingest
from service.cli.entry import main as cli_main


class NullWriter:
    """`service.batch_writers.BatchWriter` that keeps nothing: every delivery is new."""

    async def write(self, rows: list[dict[str, Any]], now: float) -> set[str]:
        return {row["id"] for row in rows}

    async def close(self) -> None:
        return None


def null_writer(database_url: str, sqlite_synchronous: str = "full") -> NullWriter:
    """In place of `service.batch_writers.batch_writer_for`, which the ingestor calls once."""
    del database_url, sqlite_synchronous
    return NullWriter()


def main() -> int:
    ingest.batch_writer_for = null_writer  # type: ignore[attr-defined]  # the ingestor's import of it
    ingest.LINGER_S = 0.0
    return cli_main(["web"])


if __name__ == "__main__":
    sys.exit(main())
