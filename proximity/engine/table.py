"""The compiled rule table: an index from (event kind, zone) to candidate rules.

Matching one event looks only at the rules filed under its kind and zone plus
those with no zone condition, already sorted by priority (higher first) and
then by load order, and applies the hit policy: ``first`` fires at most one
rule per event, ``collect`` fires every match in that order. The cost of an
event does not grow with rules that cannot match it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from enum import StrEnum
from zoneinfo import ZoneInfo

from proximity.engine.conditions import (
    INDEXED,
    Check,
    Context,
    VisitView,
    compile_rule,
    first_failure,
)
from proximity.engine.loader import RuleSet
from proximity.engine.rules import HitPolicy, Rule, StoreMeta
from proximity.events import EventKind, JourneyEvent

_Key = tuple[EventKind, str | None, float | None]
_ByHour = tuple[tuple[tuple[Rule, tuple[Check, ...]], ...], ...]
_ALL_HOURS = frozenset(range(24))


def _hours_of(rule: Rule) -> frozenset[int]:
    """The hours of the day in which the rule's hours condition can hold (a superset)."""
    if not rule.when.hours:
        return _ALL_HOURS
    hours: set[int] = set()
    for r in rule.when.hours:
        start, end = r.start.hour, r.end.hour + (1 if r.end.minute else 0)
        hours.update(range(start, end) if start < end else [*range(start, 24), *range(0, end)])
    return frozenset(hours)


_MAX_CACHED_KEYS = 100_000


class Verdict(StrEnum):
    MATCHED = "matched"
    NOT_MATCHED = "not_matched"
    SHADOWED = "shadowed"
    """It matched, but the hit policy "first" let a higher rule fire instead."""
    DISABLED = "disabled"


@dataclass(frozen=True)
class RuleVerdict:
    rule: str
    verdict: Verdict
    reason: str | None = None


class RuleTable:
    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        self.hit_policy: HitPolicy = ruleset.defaults.hit_policy
        tz = ruleset.store.timezone if ruleset.store else None
        self.timezone: tzinfo = ZoneInfo(tz) if tz else UTC
        enabled = [r for r in ruleset.rules if r.enabled]
        ranked = sorted(enabled, key=lambda r: -r.priority)  # stable: file order within a priority
        self._rank = {rule.id: n for n, rule in enumerate(ranked)}
        self._checks = {rule.id: compile_rule(rule) for rule in ruleset.rules}
        index: dict[_Key, list[Rule]] = defaultdict(list)
        for rule in ranked:
            threshold = rule.when.dwell.total_seconds() if rule.when.dwell is not None else None
            for zone in rule.when.zones or (None,):
                index[(rule.on, zone, threshold)].append(rule)
        self._index = {key: tuple(rules) for key, rules in index.items()}
        self._residual = {rule.id: self._checks[rule.id][INDEXED:] for rule in enabled}
        self._candidates: dict[_Key, _ByHour] = {}
        self._hours = {rule.id: _hours_of(rule) for rule in enabled}
        self._by_id = {rule.id: rule for rule in ruleset.rules}
        self._readers = {
            reader: zone_id for zone_id, zone in ruleset.zones.items() for reader in zone.readers
        }
        self._scanners = {
            scanner: zone_id for zone_id, zone in ruleset.zones.items() for scanner in zone.scanners
        }
        dwell: dict[str | None, set[float]] = defaultdict(set)
        for rule in ranked:
            if rule.on is EventKind.ZONE_DWELL and rule.when.dwell is not None:
                for zone in rule.when.zones or (None,):
                    dwell[zone].add(rule.when.dwell.total_seconds())
        self._dwell_any = tuple(sorted(dwell.get(None, set())))
        self._dwell = {
            zone_id: tuple(sorted(dwell.get(zone_id, set()) | dwell.get(None, set())))
            for zone_id in ruleset.zones
        }

    @classmethod
    def from_ruleset(cls, ruleset: RuleSet) -> RuleTable:
        return cls(ruleset)

    @property
    def store(self) -> StoreMeta | None:
        return self.ruleset.store

    @property
    def version(self) -> str:
        """The rules' content hash (see :class:`RuleSet`)."""
        return self.ruleset.version

    @property
    def zones(self) -> tuple[str, ...]:
        return tuple(self.ruleset.zones)

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self.ruleset.rules

    def rule(self, rule_id: str) -> Rule:
        return self._by_id[rule_id]

    def ttl_for(self, rule: Rule) -> timedelta:
        return rule.ttl if rule.ttl is not None else self.ruleset.defaults.ttl

    def zone_for_scanner(self, scanner: str) -> str | None:
        return self._scanners.get(scanner)

    def zone_for_reader(self, reader: str) -> str | None:
        """The zone of an NFC reader, code scanner or camera (None: not in any zone)."""
        return self._readers.get(reader)

    def dwell_thresholds(self, zone: str) -> tuple[float, ...]:
        """Seconds at which the presence layer must emit ``zone.dwell`` in ``zone``."""
        return self._dwell.get(zone, self._dwell_any)

    def local_time(self, at: datetime) -> datetime:
        return at.astimezone(self.timezone)

    def context(self, event: JourneyEvent, visit: VisitView | None = None) -> Context:
        return Context(event, self.local_time(event.at), visit or VisitView())

    def _lookup(self, key: _Key) -> _ByHour:
        """Rules filed under this kind, zone and dwell, plus those for any zone, in rank order,
        split by the hour of the day they can match in (rules without hours are in all 24)."""
        found = self._candidates.get(key)
        if found is None:
            kind, zone, dwell = key
            rules = {r.id: r for r in self._index.get(key, ())}
            if zone is not None:
                rules.update((r.id, r) for r in self._index.get((kind, None, dwell), ()))
            ordered = sorted(rules.values(), key=lambda r: self._rank[r.id])
            found = tuple(
                tuple((r, self._residual[r.id]) for r in ordered if hour in self._hours[r.id])
                for hour in range(24)
            )
            if len(self._candidates) < _MAX_CACHED_KEYS:
                self._candidates[key] = found
        return found

    def match(self, event: JourneyEvent, visit: VisitView | None = None) -> list[Rule]:
        """The rules that fire for ``event``, in order, after the hit policy."""
        dwell = event.threshold_s if event.kind is EventKind.ZONE_DWELL else None
        ctx = self.context(event, visit)
        candidates = self._lookup((event.kind, event.zone, dwell))[ctx.local.hour]
        if not candidates:
            return []
        matched = []
        for rule, checks in candidates:
            if first_failure(checks, ctx) is None:
                matched.append(rule)
                if self.hit_policy != "collect":  # "unique": the linter proves one match at most
                    break
        return matched

    def explain(self, event: JourneyEvent, visit: VisitView | None = None) -> list[RuleVerdict]:
        """Every rule's verdict on ``event``, in priority order (disabled rules last)."""
        ctx = self.context(event, visit)
        out: list[RuleVerdict] = []
        fired = False
        for rule in sorted(self.ruleset.rules, key=lambda r: self._rank.get(r.id, len(self._rank))):
            if not rule.enabled:
                out.append(RuleVerdict(rule.id, Verdict.DISABLED, "enabled = false"))
                continue
            reason = first_failure(self._checks[rule.id], ctx)
            if reason is not None:
                out.append(RuleVerdict(rule.id, Verdict.NOT_MATCHED, reason))
            elif fired and self.hit_policy != "collect":
                out.append(
                    RuleVerdict(
                        rule.id,
                        Verdict.SHADOWED,
                        'hit_policy "first": a higher-priority rule already fired',
                    )
                )
            else:
                fired = True
                out.append(RuleVerdict(rule.id, Verdict.MATCHED))
        return out

    def checks(self, rule_id: str) -> tuple[Check, ...]:
        return self._checks[rule_id]
