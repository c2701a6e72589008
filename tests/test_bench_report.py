"""`make bench`'s report over several runs: each ratio's median and spread, and the aim met in k of n runs."""

from __future__ import annotations

from typing import Any

from benchmarks import report, report_sections
from benchmarks.run_all import BENCHES, Ran

INGEST = next(bench for bench in BENCHES if bench.name == "ingest")


def _ingest_run(sqlite_ratio: float, p99_ms: float = 10.0) -> Ran:
    def result(target: str, ratio: float) -> dict[str, Any]:
        return {"target": target, "rps": 10_000 * ratio, "p50_ms": 2.0, "p99_ms": p99_ms, "ratio": ratio,
                "failures": 0, "server_cpu": 0.9, "durable": True}  # fmt: skip

    doc = {"valid": True, "results": [result("bare", 1.0), result("relay-sqlite", sqlite_ratio),
                                      result("relay-postgres", 0.55)]}  # fmt: skip
    return Ran(INGEST, "python -m benchmarks.bench_ingest", 0, 60.0, "", result=doc)


def test_five_runs_give_the_median_the_spread_and_the_runs_that_met_the_aim() -> None:
    """Five ingest runs: the summary row holds the median ratio, lowest to highest, and "met in 2 of 5"."""
    runs = [_ingest_run(r) for r in (0.5, 0.7, 0.62, 0.3, 0.55)]
    rows = report.aggregate([report_sections.ingest(ran) for ran in runs])
    by_target = {row[0].split(":")[0]: row for row in rows}
    _, measured, ratio, count, met = by_target["relay-sqlite"]
    assert ratio == "0.55x bare (0.30x to 0.70x)"
    assert measured == "5,500 req/s, p99 10.0 ms"  # the median run's own figures
    assert (count, met) == ("5", "2 of 5 (**no**)")
    assert by_target["relay-postgres"][2:] == ("0.55x bare (0.55x to 0.55x)", "5", "5 of 5")


def test_a_failed_run_counts_as_not_met() -> None:
    """A run that produced nothing is its own row, failed, and the others' rows say they met in k of all n."""
    failed = Ran(INGEST, "python -m benchmarks.bench_ingest", 1, 5.0, "boom", result=None)
    rows = report.aggregate([report_sections.ingest(ran) for ran in (_ingest_run(0.7), failed)])
    assert [(row[0].split(":")[0], row[4]) for row in rows] == [
        ("relay-sqlite", "1 of 2 (**no**)"), ("relay-postgres", "1 of 2 (**no**)"),
        ("durable ack ≥ 0.6x/0.5x bare, p99 ≤ 25 ms", "0 of 2 (**no**)"),
    ]  # fmt: skip


def test_the_report_has_a_per_run_table_and_each_run_s_tables() -> None:
    """The rendered file: a summary row per target, the per-run ratios with median and spread, then every run."""
    ctx = report.Context.capture(command="python -m benchmarks.run_all --runs 3")
    ctx.finish()
    text = report.render(ctx, [[_ingest_run(r) for r in (0.5, 0.7, 0.6)]])
    target = "relay-sqlite: ≥ 0.6x bare, p99 ≤ 25 ms"
    summary_row = f"| ingest | {target} | 6,000 req/s, p99 10.0 ms | 0.60x bare (0.50x to 0.70x) | 3 | 2 of 3 (**no**) "
    summary_row += "|"
    assert summary_row in text
    assert f"| {target} | 0.50x | 0.70x | 0.60x | 0.60x | 0.50x to 0.70x |" in text
    assert text.count("### Run ") == 3
