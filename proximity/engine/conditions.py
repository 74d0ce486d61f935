"""A rule's trigger and conditions, compiled into checks that say why they failed.

Each check returns None when it holds and a short reason when it does not
("zone is bakery, the rule wants coffee"), so ``rules explain`` and the
matcher share one implementation: there is no second interpreter to drift.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from proximity.engine.durations import format_duration
from proximity.engine.rules import Rule
from proximity.engine.values import WEEKDAYS
from proximity.events import ZONAL as EVENT_ZONAL
from proximity.events import JourneyEvent

_DWELL_TOLERANCE = 1e-6


@dataclass(frozen=True)
class VisitView:
    """What the rules may know of the visit so far (before this event)."""

    zones_seen: frozenset[str] = frozenset()
    offers: tuple[str, ...] = ()
    """Rule ids of the offers this shopper received in this visit, in order."""
    number: int = 1
    """This visit's number for this shopper (1: the first visit we know of)."""
    previous: datetime | None = None
    """When the shopper's previous visit started (store time), if any."""
    engagement: float = 0.0
    """The visit's engagement score so far (weights from the rule file)."""


@dataclass(frozen=True)
class Context:
    event: JourneyEvent
    local: datetime
    """The event's time in the store's time zone."""
    visit: VisitView = field(default_factory=VisitView)


Check = Callable[[Context], str | None]


def _secs(seconds: float) -> str:
    return format_duration(timedelta(seconds=seconds)) if seconds >= 0.001 else "0s"


INDEXED = 3
"""compile_rule puts the trigger, zone and dwell checks first, always in that order
(a rule without a zone or dwell condition gets a check that always holds), so the
table's index, which already guarantees them, can skip them: ``checks[INDEXED:]``."""


def _holds(ctx: Context) -> str | None:
    return None


def compile_rule(rule: Rule) -> tuple[Check, ...]:
    """The checks of one rule, trigger first, in the order they are reported."""
    when = rule.when
    checks: list[Check] = []

    def trigger(ctx: Context) -> str | None:
        kind = ctx.event.kind
        return None if kind is rule.on else f"the event is {kind}, the rule is on {rule.on}"

    checks.append(trigger)
    zones = when.zones
    if zones is not None:
        wanted = frozenset(zones)
        label = " or ".join(zones)

        def zone(ctx: Context) -> str | None:
            if ctx.event.zone in wanted:
                return None
            return f"zone is {ctx.event.zone or 'none'}, the rule wants {label}"

        checks.append(zone)
    else:
        checks.append(_holds)
    if when.dwell is not None:
        dwell = when.dwell.total_seconds()

        def dwell_threshold(ctx: Context) -> str | None:
            got = ctx.event.threshold_s
            if got is not None and abs(got - dwell) <= _DWELL_TOLERANCE:
                return None
            shown = "none" if got is None else _secs(got)
            return f"dwell threshold is {shown}, the rule wants {_secs(dwell)}"

        checks.append(dwell_threshold)
    else:
        checks.append(_holds)
    if when.stayed_at_least is not None:
        least = when.stayed_at_least.total_seconds()

        def stayed_least(ctx: Context) -> str | None:
            got = ctx.event.dwell_s or 0.0
            return None if got >= least else f"stayed {_secs(got)}, less than {_secs(least)}"

        checks.append(stayed_least)
    if when.stayed_at_most is not None:
        most = when.stayed_at_most.total_seconds()

        def stayed_most(ctx: Context) -> str | None:
            got = ctx.event.dwell_s or 0.0
            return None if got <= most else f"stayed {_secs(got)}, more than {_secs(most)}"

        checks.append(stayed_most)
    if when.hours:
        ranges = tuple(when.hours)
        label = ", ".join(str(r) for r in ranges)

        def hours(ctx: Context) -> str | None:
            now = ctx.local.time()
            if any(r.contains(now) for r in ranges):
                return None
            return f"local time {now:%H:%M} is outside {label}"

        checks.append(hours)
    if when.weekdays:
        days = frozenset(when.weekdays)

        def weekdays(ctx: Context) -> str | None:
            today = WEEKDAYS[ctx.local.weekday()]
            return None if today in days else f"{today} is not one of {', '.join(when.weekdays)}"

        checks.append(weekdays)
    if when.dates:
        dates = tuple(when.dates)
        label = ", ".join(str(d) for d in dates)

        def date_ranges(ctx: Context) -> str | None:
            today = ctx.local.date()
            if any(d.contains(today) for d in dates):
                return None
            return f"{today.isoformat()} is outside {label}"

        checks.append(date_ranges)
    if when.visited:
        needed = tuple(when.visited)

        def visited(ctx: Context) -> str | None:
            missing = [z for z in needed if z not in ctx.visit.zones_seen]
            return f"not yet visited {', '.join(missing)}" if missing else None

        checks.append(visited)
    if when.not_visited:
        avoided = tuple(when.not_visited)

        def not_visited(ctx: Context) -> str | None:
            seen = [z for z in avoided if z in ctx.visit.zones_seen]
            return f"already visited {', '.join(seen)}" if seen else None

        checks.append(not_visited)
    if when.visit_number_at_least is not None:
        least_n = when.visit_number_at_least

        def visit_least(ctx: Context) -> str | None:
            n = ctx.visit.number
            return None if n >= least_n else f"visit number {n}, the rule wants {least_n} or more"

        checks.append(visit_least)
    if when.visit_number_at_most is not None:
        most_n = when.visit_number_at_most

        def visit_most(ctx: Context) -> str | None:
            n = ctx.visit.number
            return None if n <= most_n else f"visit number {n}, the rule wants {most_n} or fewer"

        checks.append(visit_most)
    if when.last_visit_within is not None:
        within = when.last_visit_within

        def recent(ctx: Context) -> str | None:
            previous = ctx.visit.previous
            if previous is None:
                return "no earlier visit"
            ago = ctx.local - previous
            return None if ago <= within else f"last visit {_secs(ago.total_seconds())} ago"

        checks.append(recent)
    if when.last_visit_over is not None:
        over = when.last_visit_over

        def lapsed(ctx: Context) -> str | None:
            previous = ctx.visit.previous
            if previous is None:
                return "no earlier visit"
            ago = ctx.local - previous
            return None if ago > over else f"last visit only {_secs(ago.total_seconds())} ago"

        checks.append(lapsed)
    if when.segment:
        wanted_segments = frozenset(when.segment)
        label_segments = ", ".join(when.segment)

        def segment(ctx: Context) -> str | None:
            if ctx.event.shopper.segments & wanted_segments:
                return None
            return f"the shopper is in none of the segments {label_segments}"

        checks.append(segment)
    if when.engagement_at_least is not None:
        score = when.engagement_at_least

        def engaged(ctx: Context) -> str | None:
            got = ctx.visit.engagement
            return None if got >= score else f"engagement {got:g}, the rule wants {score:g}"

        checks.append(engaged)
    if when.after_offer:
        earlier = tuple(when.after_offer)

        def after_offer(ctx: Context) -> str | None:
            missing = [r for r in earlier if r not in ctx.visit.offers]
            return f"no offer of {', '.join(missing)} yet in this visit" if missing else None

        checks.append(after_offer)
    return tuple(checks)


def first_failure(checks: tuple[Check, ...], ctx: Context) -> str | None:
    for check in checks:
        reason = check(ctx)
        if reason is not None:
            return reason
    return None


ZONAL = EVENT_ZONAL
