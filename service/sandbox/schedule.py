"""Sync for Commerce's company configuration and the scheduled syncs Codat runs from it.

`GET /config/companies/{companyId}/sync/commerce` (`get-configuration`) answers a `Configuration` whose
`schedule` is `{selectedFrequency: Daily|Monthly, frequencyOptions, startDate, syncHour: 0-23, timeZone}`;
`POST` on the same path (`set-configuration`) "sets a company's commerce sync configuration"
(sync-commerce-current.json). A configured company is synced "latest" (from the last successful sync) at
`syncHour` in `timeZone` (FACTS §6; Codat's rule: push before the configured sync time).

Where Codat's docs and specs are silent the sandbox decides, and the README says so: `set-configuration`
documents no request body, so the sandbox takes a `Configuration` and applies its `schedule` fields (and
`enable`); a company created here is not configured (`configured`/`enable` false: Codat's sync flow, which
the sandbox lacks, configures it) and runs no scheduled sync until a schedule is set; an hour that does
not exist on a daylight-saving day is read with the offset before the change, an hour that exists twice
is the first; a Monthly sync runs on the start date's day of the month (the month's last day when
shorter); a clock that jumps over several sync times runs one sync, the latest. The sandbox's own
implementation, written apart from the relay's (service/schedule_time.py), so that one checks the other.
"""

from __future__ import annotations

import calendar
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from service.sandbox.model import Company, iso, parse_iso

FREQUENCIES = ("Daily", "Monthly")
MAX_CATCH_UP_DAYS = 62  # a clock moved further than this runs the latest due sync only (it would anyway)


class BadSchedule(ValueError):
    pass


def configuration_json(company: Company) -> dict[str, Any]:
    """Codat's `Configuration` for the company (the parts the sandbox models)."""
    return {
        "companyId": company.id,
        "accountingSoftwareCompanyName": company.name,
        "enable": company.configured,
        "configured": company.configured,
        "schedule": {
            "selectedFrequency": company.sync_frequency,
            "frequencyOptions": list(FREQUENCIES),
            "startDate": iso(company.sync_start),
            "syncHour": company.sync_hour,
            "timeZone": company.time_zone,
        },
    }


def apply_schedule(company: Company, schedule: dict[str, Any], now: float) -> None:
    """Set the fields given (`selectedFrequency`, `syncHour`, `timeZone`, `startDate`); BadSchedule says why not.

    The company is configured from now on: scheduled syncs run for sync times after `now`.
    """
    frequency = schedule.get("selectedFrequency", company.sync_frequency)
    hour = schedule.get("syncHour", company.sync_hour)
    zone = schedule.get("timeZone", company.time_zone)
    start = schedule.get("startDate")
    if frequency not in FREQUENCIES:
        raise BadSchedule(f"'selectedFrequency' must be one of {', '.join(FREQUENCIES)}")
    if not isinstance(hour, int) or isinstance(hour, bool) or not 0 <= hour <= 23:
        raise BadSchedule("'syncHour' must be an integer from 0 to 23")
    try:
        ZoneInfo(str(zone))
    except (ZoneInfoNotFoundError, ValueError):
        raise BadSchedule(f"'timeZone' is not a time zone: {zone!r}") from None
    if start is not None:
        try:
            company.sync_start = parse_iso(str(start))
        except ValueError:
            raise BadSchedule(f"'startDate' is not an ISO-8601 date-time: {start!r}") from None
    company.sync_frequency, company.sync_hour, company.time_zone = frequency, hour, str(zone)
    company.configured, company.scheduled_through = True, now


def _sync_time(company: Company, day: date) -> float | None:
    zone = ZoneInfo(company.time_zone)
    if company.sync_frequency == "Monthly":
        wanted = datetime.fromtimestamp(company.sync_start, zone).day
        if day.day != min(wanted, calendar.monthrange(day.year, day.month)[1]):
            return None
    return datetime.combine(day, time(company.sync_hour), tzinfo=zone).timestamp()


def due_sync(company: Company, now: float) -> float | None:
    """The latest scheduled sync time in (`scheduled_through`, now], none before the start date; None if none."""
    if not company.configured or company.scheduled_through is None or company.commerce.deleted:
        return None
    zone = ZoneInfo(company.time_zone)
    first = max(company.scheduled_through, now - MAX_CATCH_UP_DAYS * 86_400.0)
    day, last_day = datetime.fromtimestamp(first, zone).date(), datetime.fromtimestamp(now, zone).date()
    latest = None
    while day <= last_day:
        at = _sync_time(company, day)
        if at is not None and company.scheduled_through < at <= now and at >= company.sync_start:
            latest = at
        day += timedelta(days=1)
    return latest
