"""When Codat next syncs a company, from its Sync for Commerce schedule: pure, time-zone aware (zoneinfo).

The schedule is `Configuration.schedule` of `GET /config/companies/{companyId}/sync/commerce`
(`get-configuration`, sync-commerce-current.json): `selectedFrequency` Daily | Monthly, `syncHour` 0-23
("the hour you want to trigger a sync"), `timeZone` ("the timezone for the company", e.g. `Europe/London`)
and `startDate` ("the date time in UTC syncs should start from"). What the docs leave unsaid, and what we
assume (README, "Each merchant's sync schedule"):

- the sync runs at `syncHour`:00 wall-clock time in `timeZone`, so its UTC time moves with daylight saving;
- on the day that hour does not exist (clocks go forward through it) it runs at the same distance from
  midnight read with the offset before the change (zoneinfo's `fold=0`: 02:00 New York → 03:00 EDT); on the
  day it exists twice (clocks go back through it) the first of the two (`fold=0`);
- a Monthly sync runs on the day of the month of `startDate` (in `timeZone`), the month's last day when
  the month is shorter; with no `startDate`, on the 1st.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

FREQUENCIES = ("Daily", "Monthly")
SEARCH_DAYS = 800  # a start date this far ahead is as good as none


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class InvalidSchedule(ValueError):
    """Codat's schedule could not be read: no time zone we know, no hour, an unknown frequency."""


@dataclass(frozen=True)
class Schedule:
    frequency: str
    sync_hour: int
    time_zone: str
    start_date: float | None = None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    def as_json(self) -> dict[str, Any]:
        return {"frequency": self.frequency, "syncHour": self.sync_hour, "timeZone": self.time_zone,
                "startDate": _iso(self.start_date)}  # fmt: skip


def _instant(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()  # "in UTC", the spec says


def parse_schedule(configuration: Any) -> Schedule:
    """Codat's `Configuration` → a Schedule; InvalidSchedule saying what is missing or wrong."""
    if isinstance(configuration, dict) and False in (configuration.get("configured"), configuration.get("enable")):
        raise InvalidSchedule("Sync for Commerce is not configured or not enabled for this company: no scheduled sync")
    schedule = configuration.get("schedule") if isinstance(configuration, dict) else None
    if not isinstance(schedule, dict):
        raise InvalidSchedule("Codat's configuration has no schedule")
    frequency, hour, zone = schedule.get("selectedFrequency"), schedule.get("syncHour"), schedule.get("timeZone")
    if frequency not in FREQUENCIES:
        raise InvalidSchedule(f"selectedFrequency {frequency!r} is not one of {', '.join(FREQUENCIES)}")
    if not isinstance(hour, int) or isinstance(hour, bool) or not 0 <= hour <= 23:
        raise InvalidSchedule(f"syncHour {hour!r} is not an hour 0-23")
    if not isinstance(zone, str) or not zone:
        raise InvalidSchedule("the schedule has no timeZone")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidSchedule(f"timeZone {zone!r} is not a time zone we know") from None
    return Schedule(frequency, hour, zone, _instant(schedule.get("startDate")))


def _at(day: date, hour: int, zone: ZoneInfo) -> float:
    return datetime.combine(day, time(hour), tzinfo=zone).timestamp()  # fold=0 in a gap or an overlap


def _monthly_day(schedule: Schedule, year: int, month: int) -> date:
    wanted = 1
    if schedule.start_date is not None:
        wanted = datetime.fromtimestamp(schedule.start_date, schedule.zone).day
    return date(year, month, min(wanted, calendar.monthrange(year, month)[1]))


def next_sync_at(schedule: Schedule, after: float) -> float | None:
    """The first scheduled sync strictly after `after` (and not before `startDate`), in UNIX seconds."""
    zone = schedule.zone
    earliest = after if schedule.start_date is None else max(after, schedule.start_date - 1e-6)
    day = datetime.fromtimestamp(earliest, zone).date() - timedelta(days=1)
    if schedule.frequency == "Daily":
        for offset in range(SEARCH_DAYS):
            at = _at(day + timedelta(days=offset), schedule.sync_hour, zone)
            if at > earliest:
                return at
        return None
    year, month = day.year, day.month
    for _ in range(SEARCH_DAYS // 28):
        at = _at(_monthly_day(schedule, year, month), schedule.sync_hour, zone)
        if at > earliest:
            return at
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return None


def stored_schedule(row: Any) -> Schedule | None:
    """The schedule a `companies` row holds, or None when Codat's has not been read (or was unreadable)."""
    if row is None or row["sync_frequency"] is None or row["sync_hour"] is None or not row["sync_time_zone"]:
        return None
    return Schedule(row["sync_frequency"], row["sync_hour"], row["sync_time_zone"], row["sync_start_date"])


def schedule_view(row: Any) -> dict[str, Any] | None:
    """`syncSchedule` as the API, the CLI and the page show it; None until Codat's has been asked for."""
    if row is None or row["schedule_fetched_at"] is None:
        return None
    schedule = stored_schedule(row)
    shown = schedule.as_json() if schedule else dict.fromkeys(("frequency", "syncHour", "timeZone", "startDate"))
    return {**shown, "fetchedAt": _iso(row["schedule_fetched_at"]), "error": row["schedule_error"]}
