"""The compiled rule table: an index from (event kind, zone) to candidate rules.

Matching one event looks at the rules filed under its kind and zone plus those
with no zone condition, already sorted by priority (higher first) and then by
load order, and applies the hit policy: ``first`` fires at most one rule per
event, ``collect`` fires every match in that order.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

from proximity.engine.loader import RuleSet
from proximity.engine.rules import HitPolicy, Rule, StoreMeta
from proximity.events import EventKind, JourneyEvent

_DWELL_TOLERANCE = 1e-6


class RuleTable:
    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        self.hit_policy: HitPolicy = ruleset.defaults.hit_policy
        enabled = [r for r in ruleset.rules if r.enabled]
        order = {rule.id: n for n, rule in enumerate(enabled)}
        ranked = sorted(enabled, key=lambda r: (-r.priority, order[r.id]))
        index: dict[tuple[EventKind, str | None], list[Rule]] = defaultdict(list)
        for rule in ranked:
            for zone in rule.when.zones or (None,):
                index[(rule.on, zone)].append(rule)
        self._rank = {rule.id: n for n, rule in enumerate(ranked)}
        self._index = {key: tuple(rules) for key, rules in index.items()}
        self._by_id = {rule.id: rule for rule in ruleset.rules}
        self._scanners = {
            scanner: zone_id for zone_id, zone in ruleset.zones.items() for scanner in zone.scanners
        }
        dwell: dict[str | None, set[float]] = defaultdict(set)
        for rule in ranked:
            if rule.on is EventKind.ZONE_DWELL and rule.when.dwell is not None:
                for zone in rule.when.zones or (None,):
                    dwell[zone].add(rule.when.dwell.total_seconds())
        self._dwell = {
            zone_id: tuple(sorted(dwell.get(zone_id, set()) | dwell.get(None, set())))
            for zone_id in ruleset.zones
        }
        self._dwell_any = tuple(sorted(dwell.get(None, set())))

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

    def dwell_thresholds(self, zone: str) -> tuple[float, ...]:
        """Seconds at which the presence layer must emit ``zone.dwell`` in ``zone``."""
        return self._dwell.get(zone, self._dwell_any)

    def match(self, event: JourneyEvent) -> list[Rule]:
        candidates = self._index.get((event.kind, event.zone), ())
        if event.zone is not None:
            anywhere = self._index.get((event.kind, None), ())
            if anywhere:
                merged = {r.id: r for r in (*candidates, *anywhere)}
                candidates = tuple(sorted(merged.values(), key=lambda r: self._rank[r.id]))
        matched = [r for r in candidates if _conditions_hold(r, event)]
        if self.hit_policy == "first":
            return matched[:1]
        return matched


def _conditions_hold(rule: Rule, event: JourneyEvent) -> bool:
    dwell = rule.when.dwell
    if dwell is not None:
        if event.threshold_s is None:
            return False
        return abs(event.threshold_s - dwell.total_seconds()) <= _DWELL_TOLERANCE
    return True


__all__ = ["RuleTable"]
