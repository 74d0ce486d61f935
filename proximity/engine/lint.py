"""``proximity rules lint``: what is valid but probably wrong, found by meaning, not text.

Every condition is turned into the set of situations it allows — minutes of
the day, weekdays, date intervals, dwell and stay intervals, zones — so the
checks compare rules the way the evaluator runs them:

- **shadowed**: under hit policy ``first``, a higher-ranked rule matches every
  event this rule matches, so this one never fires;
- **overlap** (hit policy ``unique``): two rules can match the same event — an error;
- **unreachable**: the conditions contradict each other, every allowed hour is
  quiet, or the dates are all in the past;
- **gaps**: a zone no scanner feeds, or no rule uses;
- **conflicting caps**: a per-rule cap the visit or day limit never lets it reach,
  a cooldown that makes a cap meaningless.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum
from pathlib import Path

from proximity.engine.loader import RuleSet, Source
from proximity.engine.rules import Rule
from proximity.engine.values import WEEKDAYS, DateRange, TimeRange
from proximity.events import ACTS, ZONAL, EventKind

MINUTES = frozenset(range(24 * 60))


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Finding:
    severity: Severity
    source: Source
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.severity}: {self.message}"


def _minutes(ranges: list[TimeRange]) -> frozenset[int]:
    if not ranges:
        return MINUTES
    out: set[int] = set()
    for r in ranges:
        start, end = r.start.hour * 60 + r.start.minute, r.end.hour * 60 + r.end.minute
        out.update(range(start, end) if start < end else [*range(start, 1440), *range(0, end)])
    return frozenset(out)


def _days(weekdays: list[str]) -> frozenset[str]:
    return frozenset(weekdays) if weekdays else frozenset(WEEKDAYS)


_ALL_DATES = (date.min, date.max)


def _date_intervals(ranges: list[DateRange]) -> list[tuple[date, date]]:
    if not ranges:
        return [_ALL_DATES]
    merged: list[tuple[date, date]] = []
    for first, last in sorted((r.first, r.last) for r in ranges):
        if merged and first <= merged[-1][1] + timedelta(days=1):
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def _dates_within(inner: list[tuple[date, date]], outer: list[tuple[date, date]]) -> bool:
    return all(any(o[0] <= i[0] and i[1] <= o[1] for o in outer) for i in inner)


def _dates_meet(a: list[tuple[date, date]], b: list[tuple[date, date]]) -> bool:
    return any(x[0] <= y[1] and y[0] <= x[1] for x in a for y in b)


def _stay(rule: Rule) -> tuple[float, float]:
    w = rule.when
    low = w.stayed_at_least.total_seconds() if w.stayed_at_least else 0.0
    high = w.stayed_at_most.total_seconds() if w.stayed_at_most else float("inf")
    return low, high


@dataclass(frozen=True)
class _Space:
    """The events (and visit histories) one rule matches, as comparable sets."""

    on: EventKind
    zones: frozenset[str] | None
    dwell: float | None
    stay: tuple[float, float]
    minutes: frozenset[int]
    days: frozenset[str]
    dates: list[tuple[date, date]]
    visited: frozenset[str]
    not_visited: frozenset[str]
    after: frozenset[str]

    @classmethod
    def of(cls, rule: Rule) -> _Space:
        w = rule.when
        return cls(
            on=rule.on,
            zones=frozenset(w.zones) if w.zones is not None else None,
            dwell=w.dwell.total_seconds() if w.dwell is not None else None,
            stay=_stay(rule),
            minutes=_minutes(list(w.hours)),
            days=_days(list(w.weekdays)),
            dates=_date_intervals(list(w.dates)),
            visited=frozenset(w.visited),
            not_visited=frozenset(w.not_visited),
            after=frozenset(w.after_offer),
        )

    def covers(self, other: _Space) -> bool:
        """Every event ``other`` matches, this matches too."""
        return (
            self.on is other.on
            and (self.zones is None or (other.zones is not None and other.zones <= self.zones))
            and (self.dwell is None or self.dwell == other.dwell)
            and self.stay[0] <= other.stay[0]
            and other.stay[1] <= self.stay[1]
            and other.minutes <= self.minutes
            and other.days <= self.days
            and _dates_within(other.dates, self.dates)
            and self.visited <= other.visited
            and self.not_visited <= other.not_visited
            and self.after <= other.after
        )

    def meets(self, other: _Space) -> bool:
        """Some event can match both."""
        zones_meet = self.zones is None or other.zones is None or bool(self.zones & other.zones)
        dwell_meet = self.dwell is None or other.dwell is None or self.dwell == other.dwell
        return (
            self.on is other.on
            and zones_meet
            and dwell_meet
            and max(self.stay[0], other.stay[0]) <= min(self.stay[1], other.stay[1])
            and bool(self.minutes & other.minutes)
            and bool(self.days & other.days)
            and _dates_meet(self.dates, other.dates)
            and not (self.visited & other.not_visited)
            and not (other.visited & self.not_visited)
        )


def lint(ruleset: RuleSet, today: date, placed: frozenset[str] = frozenset()) -> list[Finding]:
    """``placed``: zones a floor plan places shoppers in (they need no scanners listed)."""
    findings: list[Finding] = []
    defaults = ruleset.defaults
    enabled = [r for r in ruleset.rules if r.enabled]
    ranked = sorted(enabled, key=lambda r: -r.priority)
    spaces = {r.id: _Space.of(r) for r in enabled}
    quiet = _minutes(list(defaults.quiet_hours)) if defaults.quiet_hours else frozenset()
    fallback = Source(ruleset.files[0] if ruleset.files else Path("rules"), 1, 1)

    def add(severity: Severity, rule_id: str | None, message: str, zone: str | None = None) -> None:
        source = ruleset.sources.get(rule_id) if rule_id else ruleset.zone_sources.get(zone or "")
        findings.append(Finding(severity, source or fallback, message))

    for rule in enabled:
        space = spaces[rule.id]
        if space.visited & space.not_visited:
            both = ", ".join(sorted(space.visited & space.not_visited))
            add(
                Severity.WARNING,
                rule.id,
                f'rule "{rule.id}" is unreachable: {both} is both visited and not_visited',
            )
        if quiet and space.minutes <= quiet:
            add(
                Severity.WARNING,
                rule.id,
                f'rule "{rule.id}" is unreachable: all its hours fall in quiet hours',
            )
        if rule.when.dates and all(last < today for _, last in space.dates):
            add(
                Severity.WARNING,
                rule.id,
                f'rule "{rule.id}" can no longer fire: its dates are past',
            )
        if rule.on is EventKind.VISIT_START and rule.when.visited:
            add(
                Severity.WARNING,
                rule.id,
                f'rule "{rule.id}" is unreachable: nothing is visited before visit.start',
            )
        for cap in rule.cap:
            if cap.per == "visit" and defaults.max_per_visit and cap.count > defaults.max_per_visit:
                add(
                    Severity.WARNING,
                    rule.id,
                    f'rule "{rule.id}": cap {cap} can never be reached, '
                    f"max_per_visit is {defaults.max_per_visit}",
                )
            if cap.per == "day" and defaults.max_per_day and cap.count > defaults.max_per_day:
                add(
                    Severity.WARNING,
                    rule.id,
                    f'rule "{rule.id}": cap {cap} can never be reached, '
                    f"max_per_day is {defaults.max_per_day}",
                )
            if isinstance(cap.per, timedelta) and rule.cooldown and cap.count > 1:
                most = int(cap.per / rule.cooldown) + 1
                if most < cap.count:
                    add(
                        Severity.WARNING,
                        rule.id,
                        f'rule "{rule.id}": with cooldown {rule.cooldown} at most {most} '
                        f"offers fit in the cap window, not {cap.count}",
                    )
        if rule.on is EventKind.ZONE_DWELL and space.zones is not None:
            for zone_id in space.zones:
                zone = ruleset.zones.get(zone_id)
                if zone is not None and not zone.scanners and zone_id not in placed:
                    add(
                        Severity.WARNING,
                        rule.id,
                        f'rule "{rule.id}" uses zone "{zone_id}", which has no scanners',
                    )
        if rule.on in ACTS and space.zones is not None:
            for zone_id in space.zones:
                zone = ruleset.zones.get(zone_id)
                if zone is not None and not zone.readers:
                    add(
                        Severity.WARNING,
                        rule.id,
                        f'rule "{rule.id}" ({rule.on}) uses zone "{zone_id}", which has no '
                        "readers: no tap or scan happens there",
                    )

    policy = defaults.hit_policy
    for n, rule in enumerate(ranked):
        for higher in ranked[:n]:
            if policy == "first" and spaces[higher.id].covers(spaces[rule.id]):
                add(
                    Severity.WARNING,
                    rule.id,
                    f'rule "{rule.id}" is shadowed by "{higher.id}" (hit_policy "first"): '
                    f'"{higher.id}" matches every event it does and ranks higher',
                )
                break
        if policy == "unique":
            for other in ranked[:n]:
                if spaces[other.id].meets(spaces[rule.id]):
                    add(
                        Severity.ERROR,
                        rule.id,
                        f'rules "{other.id}" and "{rule.id}" can match the same event, '
                        'but hit_policy is "unique"',
                    )

    used = {z for r in enabled for z in (r.when.zones or ())}
    any_zone = any(r.when.zones is None and r.on in _ZONAL for r in enabled)
    for zone_id, zone in ruleset.zones.items():
        if not zone.scanners and not zone.readers and zone_id not in placed:
            add(
                Severity.WARNING,
                None,
                f'zone "{zone_id}" has no scanners or readers: no shopper is ever in it',
                zone=zone_id,
            )
        elif zone_id not in used and not any_zone:
            add(Severity.WARNING, None, f'zone "{zone_id}" is not used by any rule', zone=zone_id)
    return findings


_ZONAL = ZONAL
