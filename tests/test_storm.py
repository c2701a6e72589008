"""A scaled-down alert storm (benchmarks/storm.py): alerts waiting about one dataset cost one Codat call.

2,000 alerts about 200 datasets still processing in the sandbox, through `POST /webhooks/codat`, the
queue and the handler, on both backends, stored before the workers start (so the count does not depend on
how fast the workers keep up with the sender): exactly one Codat call per dataset, every alert `done`,
every dataset's status Codat's. How many calls a storm costs while the workers race the sender is the full
benchmark's figure. The drain time is CPU-bound at this size on a shared machine, so it is reported
by the full benchmark, not asserted here.
"""

from __future__ import annotations

from benchmarks.storm import run_storm


async def test_a_storm_of_alerts_costs_about_one_codat_call_per_dataset(database_url: str) -> None:
    """2,000 queued alerts about 200 datasets: 200 Codat calls, all alerts done, statuses Codat's."""
    result = await run_storm(database_url, alert_count=2_000, dataset_count=200, window_s=4.0,
                             rate_per_minute=3_000, drain_deadline_s=240.0, queued=True)  # fmt: skip
    assert result.statuses == {"done": 2_000}
    assert result.datasets_matching_codat == 200
    assert result.codat_calls == 200, result  # one question per dataset answers all ten of its alerts
