"""`make bench`'s report over several runs: each ratio's median and spread, and the aim met in k of n runs."""

from __future__ import annotations

from typing import Any

from benchmarks import report, report_sections
from benchmarks.bench_ingest import Outcome
from benchmarks.bench_ingest import report as ingest_report
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


def test_the_ceiling_is_summed_up_beside_the_relay_with_no_aim() -> None:
    """`relay-nowrite` (the relay storing nothing) gets its own row, median and spread, and no verdict."""
    runs = [_ingest_run(0.3) for _ in range(3)]
    for ran, ceiling in zip(runs, (0.5, 0.56, 0.52), strict=True):
        assert ran.result is not None
        ran.result["results"].append({"target": "relay-nowrite", "rps": 10_000 * ceiling, "p50_ms": 2.0,
                                      "p99_ms": 9.0, "ratio": ceiling, "failures": 0, "server_cpu": 0.9,
                                      "durable": None})  # fmt: skip
    rows = {row[0].split(":")[0]: row for row in report.aggregate([report_sections.ingest(ran) for ran in runs])}
    assert rows["relay-nowrite"][2:] == ("0.52x bare (0.50x to 0.56x)", "3", "-")
    assert rows["relay-sqlite"][4] == "0 of 3 (**no**)"


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


STORM = next(bench for bench in BENCHES if bench.name == "storm")


def _storm_run(calls: int, drain_s: float, done: int = 20_000) -> Ran:
    def result(backend: str) -> dict[str, Any]:
        limit_s = calls * 60 / 1_000
        return {"backend": backend, "alerts": 20_000, "datasets": 2_000, "codat_calls": calls,
                "dataset_calls": calls - 1, "calls_by_endpoint": {"company": 1, "dataset": calls - 1},
                "calls_per_alert": calls / 20_000, "calls_per_dataset": calls / 2_000, "rate_per_minute": 1_000,
                "send_window_s": 60.0, "drain_s": drain_s, "limit_s": limit_s, "drain_vs_limit": drain_s / limit_s,
                "statuses": {"done": done} if done == 20_000 else {"done": done, "pending": 20_000 - done},
                "datasets_matching_codat": 2_000, "valid": done == 20_000,
                "aims_met": {"calls": calls <= 2_100, "drain": drain_s / limit_s <= 1.1}}  # fmt: skip

    doc = {"calls_per_dataset_aim": 1.05, "drain_aim": 1.1, "results": [result("sqlite"), result("postgres")]}
    return Ran(STORM, "python -m benchmarks.storm", 0, 400.0, "", result=doc)


def test_the_storm_reports_calls_against_one_per_dataset_and_drain_against_the_limit() -> None:
    """Calls over every endpoint as a ratio to one per dataset, drain to calls / rate; met in k of n for each."""
    runs = [_storm_run(2_050, 126.0), _storm_run(2_200, 126.0), _storm_run(2_010, 150.0)]
    rows = {row[0]: row for row in report.aggregate([report_sections.storm(ran) for ran in runs])}
    calls = rows["sqlite: 20,000 alerts about 2,000 datasets cost ≤ 2,100 Codat calls"]
    assert calls[1:] == ("2,050 calls (0.102 per alert)", "1.02x one call per dataset (1.00x to 1.10x)", "3",
                         "2 of 3 (**no**)")  # fmt: skip
    drain = rows["postgres: drained within 1.1x the time the limit allows"]
    assert drain[2].startswith("1.02x calls / rate (")
    assert drain[4] == "2 of 3 (**no**)"


def test_a_storm_that_left_alerts_unfinished_meets_no_aim() -> None:
    """Few calls and a quick drain prove nothing if alerts were left pending: both aims count as not met."""
    section = report_sections.storm(_storm_run(2_000, 120.0, done=19_000))
    assert {target: figure.ok for target, figure in section.figures.items()} == dict.fromkeys(section.figures, False)
    assert "pending 1,000" in "\n".join(section.lines)


def _ingest_outcome(target: str, rps: float, notes: list[str]) -> Outcome:
    rows = None if target == "bare" else 100
    return Outcome(target=target, rps=rps, p50_ms=1.0, p90_ms=2.0, p99_ms=3.0, max_ms=4.0, failures=0, statuses={},
                   errors={}, server_cpu=0.9, requests_202=100, alerts_rows=rows, notes=notes)  # fmt: skip


def test_a_bare_endpoint_that_outran_the_request_file_leaves_the_run_valid_and_a_relay_does_not() -> None:
    # The bare endpoint answers a replayed request as it answers a new one; the relay answers a duplicate.
    wrapped = ["request file ran out 1x"]
    machine: dict[str, str | int] = {"cpus": 2}
    assert ingest_report([_ingest_outcome("bare", 22_000, wrapped), _ingest_outcome("relay-sqlite", 3_000, [])],
                         machine, "cmd")  # fmt: skip
    assert not ingest_report([_ingest_outcome("bare", 22_000, []), _ingest_outcome("relay-sqlite", 3_000, wrapped)],
                             machine, "cmd")  # fmt: skip
