"""One renderer per benchmark: its table, its target, the same-run ratio, met or not (for report.py)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from benchmarks import common

if TYPE_CHECKING:
    from benchmarks.run_all import Ran

Row = tuple[str, str, str, str]  # target, measured, ratio, met
INGEST_FLOORS = {"relay-sqlite": 0.6, "relay-postgres": 0.5}
INGEST_CEILING = "relay-nowrite"  # the relay storing nothing (benchmarks/nowrite_web.py): no aim, a bound
INGEST_P99_MS = 25.0
QUEUE_FLOOR_RATIO, QUEUE_FLOOR_RATE = 10.0, 2000.0
PUSH_RSS_MIB, PUSH_RECORDS = 300.0, 1_000_000
E2E_P99_MS = 250.0


@dataclass(frozen=True)
class Figure:
    """One summary figure as a number, so that several runs can be summed up (median, spread, met in k of n)."""

    ratio: float | None  # to the same-run baseline named by `against`
    against: str  # e.g. "bare", "procrastinate"
    ok: bool | None  # the aim met; None where there is no aim


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)
    summary: list[Row] = field(default_factory=list)
    figures: dict[str, Figure] = field(default_factory=dict)  # by the summary row's target

    def add(self, target: str, measured: str, ratio: float | None, against: str, ok: bool | None) -> None:
        """A summary row, and its figure."""
        self.summary.append((target, measured, "-" if ratio is None else f"{fmt_ratio(ratio)} {against}", met(ok)))
        self.figures[target] = Figure(ratio, against, ok)


def fmt_ratio(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.1f}x" if ratio < 100 else f"{ratio:.0f}x"


def met(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "**no**")


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    head = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return head + ["| " + " | ".join(r) + " |" for r in rows]


def failure(ran: Ran) -> list[str]:
    tail = "\n".join(ran.stdout.strip().splitlines()[-15:]) or "(no output)"
    why = f"exit code {ran.exit_code}" if ran.exit_code is not None else "killed at its timeout"
    return [f"**FAILED** ({why}; {'; '.join(ran.notes) or 'see .bench/logs/'}). Last lines:", "", "```", tail,
            "```", ""]  # fmt: skip


# --- ingest -----------------------------------------------------------------------------------------


def ingest(ran: Ran) -> Section:
    s = Section("Durable ack (bench_ingest)")
    doc = ran.result
    s.lines.append(f"Target: ≥ 0.6x the bare endpoint on SQLite, ≥ 0.5x on PostgreSQL, p99 ≤ {INGEST_P99_MS:.0f} ms "
                   "at 32 connections, each 202 only after its row is committed. Load: wrk, unique signed deliveries. "
                   f"`{INGEST_CEILING}` is the relay's web process with a writer that stores nothing: the most "
                   "the durable ack could reach if its write cost nothing.")
    if doc is None:
        s.add("durable ack ≥ 0.6x/0.5x bare, p99 ≤ 25 ms", "failed", None, "", False)
        return s
    s.lines.append(f"Generator: {doc.get('generator', 'wrk')}; result {'valid' if doc['valid'] else 'INVALID'}.")
    s.lines.append("")
    rows = []
    for r in doc["results"]:
        floor = INGEST_FLOORS.get(r["target"])
        ok = None if floor is None else (r["ratio"] or 0) >= floor and r["p99_ms"] <= INGEST_P99_MS
        durable = "-" if r.get("durable") is None else ("yes" if r["durable"] else "**NO**")
        rows.append([r["target"], f"{r['rps']:,.0f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
                     f"{r['ratio']:.2f}x", str(r["failures"]), f"{r['server_cpu']:.0%}", durable, met(ok)])  # fmt: skip
        if floor is not None:
            s.add(f"{r['target']}: ≥ {floor}x bare, p99 ≤ {INGEST_P99_MS:.0f} ms",
                  f"{r['rps']:,.0f} req/s, p99 {r['p99_ms']:.1f} ms", r["ratio"], "bare", ok)
        elif r["target"] == INGEST_CEILING:
            s.add(f"{INGEST_CEILING}: the relay with a writer that stores nothing (a bound, no aim)",
                  f"{r['rps']:,.0f} req/s, p99 {r['p99_ms']:.1f} ms", r["ratio"], "bare", None)
    s.lines += table(["target", "req/s", "p50 ms", "p99 ms", "ratio to bare", "errors", "server CPU", "durable",
                      "met"], rows)  # fmt: skip
    return s


# --- queue ------------------------------------------------------------------------------------------


def _queue_rows(stdout: str) -> list[list[str]]:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("| ") and not ln.startswith("| system")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


def queue(ran: Ran) -> Section:
    s = Section("Job queue (bench_queue)")
    s.lines.append(f"Target: ≥ {QUEUE_FLOOR_RATIO:.0f}x procrastinate's no-op jobs/s on the same PostgreSQL "
                   f"(≥ {QUEUE_FLOOR_RATE:,.0f} jobs/s), per-key ordering kept. bench_queue writes no JSON: "
                   "this is its printed table.")  # fmt: skip
    s.lines.append("")
    rows = _queue_rows(ran.stdout)
    if not rows:
        s.add("queue ≥ 10x procrastinate", "failed", None, "", False)
        return s
    s.lines += table(["system", "backend", "concurrency", "no-op jobs/s", "enqueue→start p50", "p99"], rows)
    rates = {(r[0], r[1], r[2]): float(r[3].replace(",", "")) for r in rows if r[3]}
    for (system, backend, conc), rate in rates.items():
        peer = rates.get(("procrastinate", "postgresql", conc))
        if system != "codat-relay" or not peer:
            continue
        ratio = rate / peer
        ok = ratio >= QUEUE_FLOOR_RATIO and rate >= QUEUE_FLOOR_RATE if backend == "postgresql" else None
        s.add(f"{backend}, concurrency {conc}: ≥ 10x procrastinate" + ("" if ok is not None else
              " (PostgreSQL is the target; SQLite shown for reference)"), f"{rate:,.0f} jobs/s", ratio,
              "procrastinate", ok)  # fmt: skip
    return s


# --- push -------------------------------------------------------------------------------------------


def push(ran: Ran) -> Section:
    s = Section("Push pipeline (bench_push)")
    s.lines.append(f"Target: {PUSH_RECORDS:,} records for one company pushed with peak RSS < {PUSH_RSS_MIB:.0f} MB, "
                   "throughput bounded by JSON encoding. bench_push measures no same-run baseline: the RSS is "
                   "set against its budget, and the profile shows what bounds the throughput.")  # fmt: skip
    s.lines.append("")
    r = (ran.result or {}).get("result")
    if not r:
        s.add(f"{PUSH_RECORDS:,} records, peak RSS < {PUSH_RSS_MIB:.0f} MB", "failed", None, "", False)
        return s
    scalar = [[k, f"{v:,}" if isinstance(v, int) else str(v)] for k, v in r.items() if not k.endswith("profile")]
    s.lines += table(["figure", "value"], scalar)
    for name in ("web_profile", "worker_profile"):
        share = (r.get(name) or {}).get("share")
        if share:
            s.lines += ["", f"{name.replace('_', ' ')} (share of samples):", ""]
            s.lines += table(["where", "%"], [[k, str(v)] for k, v in share.items()])
    ok = r["records"] >= PUSH_RECORDS and r["worker_peak_rss_mib"] < PUSH_RSS_MIB
    s.add(f"{PUSH_RECORDS:,} records, worker peak RSS < {PUSH_RSS_MIB:.0f} MB",
          f"{r['worker_peak_rss_mib']} MiB for {r['records']:,}; {r['push_per_s']:,} records/s pushed",
          r["worker_peak_rss_mib"] / PUSH_RSS_MIB, "the RSS budget (no same-run baseline)", ok)
    return s


# --- end to end -------------------------------------------------------------------------------------


def _ms(stats: dict[str, float] | None, key: str) -> str:
    return "-" if not stats else f"{stats[key]:.1f}"


def e2e(ran: Ran) -> Section:
    s = Section("End to end (bench_e2e)")
    s.lines.append(f"Target: delivery received → handler finished, p99 ≤ {E2E_P99_MS:.0f} ms at a steady 500 "
                   "deliveries/s. Open-loop paced generator; latencies from the relay's own rows "
                   "(`updated_at - received_at`), sent → finished from the generator's send stamps. Baseline: "
                   "the same paced load against the bare endpoint (HTTP alone); ratio = sent → finished over bare "
                   "HTTP.")  # fmt: skip
    s.lines.append("")
    doc = ran.result
    if doc is None:
        s.add(f"received → finished p99 ≤ {E2E_P99_MS:.0f} ms at 500/s", "failed", None, "", False)
        return s
    rows = []
    for o in doc["results"]:
        r2f, s2f = o.get("received_to_finished"), o.get("sent_to_finished")
        rows.append([o["target"], f"{o['rate']:.0f}", _ms(o["ack"], "p50"), _ms(o["ack"], "p99"), _ms(r2f, "p50"),
                     _ms(r2f, "p95"), _ms(r2f, "p99"), _ms(r2f, "max"), _ms(s2f, "p50"), _ms(s2f, "p99"),
                     f"{o['ratio_p99']:.0f}x" if o.get("ratio_p99") else "-", _ms(o.get("queue_wait"), "p99"),
                     _ms(o.get("job_run"), "p99"), f"{o['drain_s']:.1f}" if o.get("drain_s") is not None else "-",
                     f"{o['processed_per_s']:.0f}" if o.get("processed_per_s") else "-",
                     f"{o['cpu_ms_per_delivery']:.2f}" if o.get("cpu_ms_per_delivery") else "-",
                     met(o.get("aim_met"))])  # fmt: skip
        if o["target"] != "bare":
            s.add(f"{o['target']}: received → finished p99 ≤ {E2E_P99_MS:.0f} ms at 500/s",
                  f"p50 {_ms(r2f, 'p50')} ms, p99 {_ms(r2f, 'p99')} ms at {o['rate']:.0f}/s",
                  o.get("ratio_p99") or None, "bare HTTP p99", o.get("aim_met"))
    s.lines += table(["target", "sent/s", "ack p50", "ack p99", "recv→done p50", "p95", "p99", "max",
                      "sent→done p50", "p99", "÷ bare p99", "queue wait p99", "job run p99", "drain s",
                      "done/s", "CPU ms/delivery", "met"], rows)  # fmt: skip
    s.lines += ["", "Times in ms. Queue wait = received → job started; job run = job started → finished; drain = "
                "last send → every alert finished (- if not within the deadline); done/s = alerts finished per second "
                "over the whole run (the workers' real capacity when it is below the offered 500/s); CPU ms/delivery "
                "= the server process's CPU from the first send to the end of the drain wait, per delivery (an "
                "under-estimate when alerts were left unfinished). Work per target:", ""]  # fmt: skip
    for o in doc["results"]:
        notes = "; ".join(o.get("notes") or []) or "no failures"
        s.lines.append(f"- `{o['target']}`: {o['work']}. Final statuses {o.get('final_statuses') or '-'}; "
                       f"server CPU {o['server_cpu']:.0%} during the load; {o['connections']} connections; "
                       f"job run p50 {_ms(o.get('job_run'), 'p50')} ms; "
                       f"send lag p99 {_ms(o.get('send_lag_ms'), 'p99')} ms; "
                       f"generator CPU {o['generator_cpu']:.0%}; {notes}.")  # fmt: skip
    return s


# --- alert storm ------------------------------------------------------------------------------------


def storm(ran: Ran) -> Section:
    s = Section("Alert storm (storm)")
    s.lines.append("Target (issue 18): a storm of 20,000 alerts about 2,000 datasets in one minute costs ≤ 2,100 Codat "
                   "calls and drains within 1.1x the time Codat's 1,000-a-minute limit allows. Baselines, both from "
                   "the same run: one call per dataset (the fewest that answer every alert; 2,100 is 1.05x it), and "
                   "the time the limit allows for the calls the storm made (calls / rate). Calls are the Codat "
                   "sandbox's own counters over every endpoint, not only the dataset's; drain = first alert received "
                   "→ last alert finished. Relay and sandbox share one process.")  # fmt: skip
    s.lines.append("")
    doc = ran.result
    if doc is None:
        s.add("storm: calls ≤ 1.05x one per dataset, drain ≤ 1.1x calls / rate", "failed", None, "", False)
        return s
    rows = []
    for r in doc["results"]:
        aims, whole = r["aims_met"], r["valid"]
        others = {e: n for e, n in r["calls_by_endpoint"].items() if e != "dataset"}
        rows.append([r["backend"], f"{r['alerts']:,}", f"{r['datasets']:,}", f"{r['codat_calls']:,}",
                     f"{r['dataset_calls']:,}", ", ".join(f"{e} {n:,}" for e, n in others.items()) or "none",
                     f"{r['calls_per_alert']:.3f}", f"{r['calls_per_dataset']:.3f}", f"{r['send_window_s']:.1f}",
                     f"{r['drain_s']:.1f}", f"{r['limit_s']:.1f}", f"{r['drain_vs_limit']:.3f}",
                     ", ".join(f"{k} {v:,}" for k, v in r["statuses"].items()), f"{r['datasets_matching_codat']:,}",
                     met(aims["calls"] and aims["drain"] and whole)])  # fmt: skip
        most = round(doc["calls_per_dataset_aim"] * r["datasets"])
        s.add(f"{r['backend']}: {r['alerts']:,} alerts about {r['datasets']:,} datasets cost ≤ {most:,} Codat calls",
              f"{r['codat_calls']:,} calls ({r['calls_per_alert']:.3f} per alert)", r["calls_per_dataset"],
              "one call per dataset", aims["calls"] and whole)  # fmt: skip
        s.add(f"{r['backend']}: drained within {doc['drain_aim']}x the time the limit allows",
              f"{r['drain_s']:.0f} s for {r['codat_calls']:,} calls at {r['rate_per_minute']:,}/min",
              r["drain_vs_limit"], "calls / rate", aims["drain"] and whole)  # fmt: skip
    s.lines += table(["backend", "alerts", "datasets", "Codat calls", "of which dataset", "other endpoints",
                      "calls/alert", "calls/dataset", "send s", "drain s", "calls / rate s", "drain ÷ limit",
                      "alerts", "datasets as Codat's", "met"], rows)  # fmt: skip
    s.lines += ["", "A run counts only if every alert ended `done` and every dataset's status is Codat's; a storm "
                "that lost or mis-applied alerts meets no aim."]  # fmt: skip
    return s


# --- reliability (a colleague's suite writes these; included when present) --------------------------


def _flat(doc: dict[str, Any]) -> str:
    parts = [f"{k} {json.dumps(v, separators=(',', ':')) if isinstance(v, dict | list) else v}"
             for k, v in sorted(doc.items())]  # fmt: skip
    return "; ".join(parts).replace("|", "/")


def reliability() -> list[str]:
    files = sorted((common.REPO / ".bench").glob("reliability-*.json"))
    if not files:
        return []
    lines = ["## Reliability figures (tests/reliability)", "",
             "Written by the reliability suite (`make reliability`), not by this run: each row says when. "
             "Loss and double-processing counts are the figures that matter; they have no baseline.", ""]  # fmt: skip
    rows = []
    for path in files:
        when = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
        try:
            figures = _flat(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            figures = f"unreadable: {type(exc).__name__}"
        rows.append([path.stem.removeprefix("reliability-"), f"{when:%Y-%m-%d %H:%M} UTC", figures])
    return lines + table(["scenario", "written", "figures"], rows)
