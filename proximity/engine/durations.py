"""Durations with units, as ops write them: "500ms", "45s", "10m", "2h", "1h30m", "7d"."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")

HINT = 'use a number and a unit (ms, s, m, h, d), e.g. "45s", "10m", "1h30m"'


def parse_duration(text: str) -> timedelta:
    """Parse a duration string; raises ValueError with a message for people."""
    cleaned = text.strip()
    if not _WHOLE.fullmatch(cleaned):
        raise ValueError(f'bad duration "{text}": {HINT}')
    seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(cleaned))
    if seconds <= 0:
        raise ValueError(f'bad duration "{text}": it must be more than zero')
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest string parse_duration reads back as ``value``."""
    ms = round(value.total_seconds() * 1000)
    if ms <= 0:
        raise ValueError("only positive durations can be formatted")
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        count, ms = divmod(ms, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
