"""The small value types of rule files, each parsed from the text ops write.

hours = "08:00-11:30"            a time of day range; "21:00-07:00" wraps midnight
dates = "2026-12-01..2026-12-24" a date range, both ends included
weekdays = ["mon", "sat"]        days of the week
cap = "2/visit"                  at most N per visit, per calendar "day" (store time),
cap = "3/7d"                       or per rolling duration
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

from proximity.engine.durations import format_duration, parse_duration

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]

_HOURS = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_DATES = re.compile(r"^\s*(\d{4}-\d{2}-\d{2})\s*\.\.\s*(\d{4}-\d{2}-\d{2})\s*$")
_CAP = re.compile(r"^\s*(\d+)\s*/\s*(\S+)\s*$")


@dataclass(frozen=True, slots=True)
class TimeRange:
    start: time
    end: time

    def contains(self, moment: time) -> bool:
        if self.start <= self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end  # wraps midnight

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


@dataclass(frozen=True, slots=True)
class DateRange:
    first: date
    last: date

    def contains(self, day: date) -> bool:
        return self.first <= day <= self.last

    def __str__(self) -> str:
        return f"{self.first.isoformat()}..{self.last.isoformat()}"


@dataclass(frozen=True, slots=True)
class Cap:
    count: int
    per: Literal["visit", "day"] | timedelta

    def window_start(self, now_local: datetime) -> datetime | None:
        """Where the window ending now starts (None for per-visit caps)."""
        if self.per == "visit":
            return None
        if self.per == "day":
            return now_local.replace(hour=0, minute=0, second=0, microsecond=0)
        assert isinstance(self.per, timedelta)
        return now_local - self.per

    def __str__(self) -> str:
        per = self.per if isinstance(self.per, str) else format_duration(self.per)
        return f"{self.count}/{per}"


def parse_time_range(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    found = _HOURS.match(value)
    if not found:
        raise ValueError(f'bad time range "{value}": use "HH:MM-HH:MM", e.g. "08:00-11:30"')
    h1, m1, h2, m2 = (int(g) for g in found.groups())
    try:
        start, end = time(h1, m1), time(h2 % 24, m2) if (h2, m2) == (24, 0) else time(h2, m2)
    except ValueError as exc:
        raise ValueError(f'bad time range "{value}": {exc}') from exc
    if start == end:
        raise ValueError(f'bad time range "{value}": start and end are the same')
    return TimeRange(start, end)


def parse_date_range(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    found = _DATES.match(value)
    if not found:
        raise ValueError(
            f'bad date range "{value}": use "YYYY-MM-DD..YYYY-MM-DD", e.g. "2026-12-01..2026-12-24"'
        )
    try:
        first, last = date.fromisoformat(found.group(1)), date.fromisoformat(found.group(2))
    except ValueError as exc:
        raise ValueError(f'bad date range "{value}": {exc}') from exc
    if last < first:
        raise ValueError(f'bad date range "{value}": it ends before it starts')
    return DateRange(first, last)


def parse_cap(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    found = _CAP.match(value)
    hint = 'use "N/visit", "N/day" or "N/<duration>", e.g. "1/visit", "2/day", "3/7d"'
    if not found:
        raise ValueError(f'bad cap "{value}": {hint}')
    count, per = int(found.group(1)), found.group(2)
    if count < 1:
        raise ValueError(f'bad cap "{value}": the count must be at least 1')
    if per == "visit":
        return Cap(count, "visit")
    if per == "day":
        return Cap(count, "day")
    try:
        return Cap(count, parse_duration(per))
    except ValueError as exc:
        raise ValueError(f'bad cap "{value}": {hint}') from exc


def _text(pattern: str, example: str) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "pattern": pattern, "examples": [example]})


TimeRangeField = Annotated[
    TimeRange,
    BeforeValidator(parse_time_range),
    PlainSerializer(str),
    _text(r"^\d{1,2}:\d{2}-\d{1,2}:\d{2}$", "08:00-11:30"),
]
DateRangeField = Annotated[
    DateRange,
    BeforeValidator(parse_date_range),
    PlainSerializer(str),
    _text(r"^\d{4}-\d{2}-\d{2}\.\.\d{4}-\d{2}-\d{2}$", "2026-12-01..2026-12-24"),
]
CapField = Annotated[
    Cap,
    BeforeValidator(parse_cap),
    PlainSerializer(str),
    _text(r"^\d+/(visit|day|[0-9.]+(ms|s|m|h|d)+)$", "2/day"),
]
