"""Issue 14, the sync schedule: when Codat next syncs a company, read from Sync for Commerce's configuration
(`get-configuration`, `GET /config/companies/{companyId}/sync/commerce` in shared/codat/specs/
sync-commerce-current.json: `schedule.selectedFrequency` Daily|Monthly, `syncHour` 0-23, `timeZone`,
`startDate`), in the company's time zone, right across daylight-saving changes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from service.schedule_time import InvalidSchedule, Schedule, next_sync_at, parse_schedule

NEW_YORK = "America/New_York"


def ts(text: str) -> float:
    """A UTC wall-clock time, `2027-06-10T00:00`, as UNIX seconds."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def utc(value: float | None) -> str:
    assert value is not None
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M")


DAILY_2AM_NY = Schedule("Daily", 2, NEW_YORK)


@pytest.mark.parametrize(("after", "expected"), [
    ("2027-06-10T00:00", "2027-06-10T06:00"),  # summer, EDT (UTC-4): 02:00 local is 06:00 UTC
    ("2027-06-10T06:00", "2027-06-11T06:00"),  # strictly after: at the sync hour, the next day's
    ("2027-01-10T12:00", "2027-01-11T07:00"),  # winter, EST (UTC-5)
    # 2027-03-14, clocks go forward at 02:00 local: 02:00 does not exist; read with the offset before
    # the change (EST), i.e. 07:00 UTC = 03:00 EDT (docs silent; README says so)
    ("2027-03-13T08:00", "2027-03-14T07:00"),
    ("2027-03-14T07:00", "2027-03-15T06:00"),  # the day after: EDT, 02:00 is 06:00 UTC
    # 2027-11-07, clocks go back at 02:00 EDT to 01:00 EST: 02:00 EST is 07:00 UTC, 25 hours after the day before's
    ("2027-11-06T06:00", "2027-11-07T07:00"),
    ("2027-11-05T07:00", "2027-11-06T06:00"),
])  # fmt: skip
def test_a_daily_sync_is_at_the_sync_hour_in_the_company_time_zone_across_dst(after: str, expected: str) -> None:
    """Daily at 02:00 America/New_York: 06:00 UTC in summer, 07:00 UTC in winter and on both change days."""
    assert utc(next_sync_at(DAILY_2AM_NY, ts(after))) == expected


def test_the_day_clocks_go_forward_is_23_hours_between_syncs_and_the_day_they_go_back_25() -> None:
    """Consecutive syncs stay at 02:00 wall-clock: their gap is the day's length, not 24 h."""
    before_spring = next_sync_at(DAILY_2AM_NY, ts("2027-03-12T12:00"))
    assert before_spring is not None
    spring = next_sync_at(DAILY_2AM_NY, before_spring)
    after_spring = next_sync_at(DAILY_2AM_NY, spring or 0)
    assert ((spring or 0) - before_spring, (after_spring or 0) - (spring or 0)) == (24 * 3600, 23 * 3600)
    autumn_eve = next_sync_at(DAILY_2AM_NY, ts("2027-11-05T12:00")) or 0
    autumn = next_sync_at(DAILY_2AM_NY, autumn_eve) or 0
    assert autumn - autumn_eve == 25 * 3600


def test_the_margin_before_a_2am_new_york_sync_is_0130_local_on_the_day_clocks_go_back() -> None:
    """30 minutes before 02:00 EST on 2027-11-07 is 01:30 EST (the second 01:30 of that night): UTC arithmetic."""
    sync = next_sync_at(DAILY_2AM_NY, ts("2027-11-07T00:00")) or 0
    margin = datetime.fromtimestamp(sync - 1800, UTC).astimezone(DAILY_2AM_NY.zone)
    assert (margin.hour, margin.minute, margin.utcoffset().total_seconds()) == (1, 30, -5 * 3600)  # type: ignore[union-attr]


def test_no_sync_before_the_start_date() -> None:
    """`startDate` is "the date time in UTC syncs should start from": the first sync is not before it."""
    schedule = Schedule("Daily", 2, NEW_YORK, ts("2027-06-20T00:00"))
    assert utc(next_sync_at(schedule, ts("2027-06-01T00:00"))) == "2027-06-20T06:00"


def test_a_monthly_sync_is_on_the_start_dates_day_or_the_months_last() -> None:
    """Monthly (docs silent on the day): the start date's day of the month, the last day when shorter."""
    schedule = Schedule("Monthly", 23, "Europe/London", ts("2027-01-31T12:00"))
    assert utc(next_sync_at(schedule, ts("2027-02-01T00:00"))) == "2027-02-28T23:00"
    assert utc(next_sync_at(schedule, ts("2027-03-01T00:00"))) == "2027-03-31T22:00"  # BST from 28 March


@pytest.mark.parametrize(("schedule", "problem"), [
    ({"selectedFrequency": "Weekly", "syncHour": 2, "timeZone": NEW_YORK}, "selectedFrequency"),
    ({"selectedFrequency": "Daily", "syncHour": 24, "timeZone": NEW_YORK}, "syncHour"),
    ({"selectedFrequency": "Daily", "syncHour": 2, "timeZone": "Mars/Olympus"}, "timeZone"),
    ({"selectedFrequency": "Daily", "syncHour": 2}, "timeZone"),
])  # fmt: skip
def test_a_schedule_codat_answers_that_cannot_be_read_says_why(schedule: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidSchedule, match=problem):
        parse_schedule({"schedule": schedule})


def test_codats_configuration_is_read_as_the_spec_writes_it() -> None:
    """The spec's field names, `startDate` an instant in UTC."""
    parsed = parse_schedule({"companyId": "c", "schedule": {
        "selectedFrequency": "Daily", "frequencyOptions": ["Daily", "Monthly"], "syncHour": 2, "timeZone": NEW_YORK,
        "startDate": "2027-06-01T00:00:00Z"}})  # fmt: skip
    assert parsed == Schedule("Daily", 2, NEW_YORK, ts("2027-06-01T00:00"))
