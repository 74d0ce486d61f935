"""Conversions: did the shopper do what the offer asked, within its attribution window?

Every offer shown — and every "would have shown" of a held-out shopper — is an
exposure of one arm of a rule (its variant, "control" without variants, or
"holdout"). When the same shopper later produces the rule's conversion event
within the rule's attribution window, that exposure converts, once. Comparing
the arms' conversion rates gives the uplift the offer caused.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime

from proximity.engine.rules import Rule
from proximity.engine.table import RuleTable
from proximity.events import JourneyEvent

HOLDOUT = "holdout"
CONTROL = "control"


@dataclass
class _Exposure:
    rule: str
    arm: str
    at: datetime
    converted: bool = False


@dataclass(frozen=True)
class FunnelRow:
    rule: str
    arm: str
    exposed: int
    converted: int

    @property
    def rate(self) -> float:
        return self.converted / self.exposed if self.exposed else 0.0


class Funnel:
    def __init__(self, per_shopper: int = 64, max_shoppers: int = 100_000) -> None:
        self._per_shopper = per_shopper
        self._max_shoppers = max_shoppers
        self._open: OrderedDict[str, deque[_Exposure]] = OrderedDict()
        self.exposed: Counter[tuple[str, str]] = Counter()
        self.converted: Counter[tuple[str, str]] = Counter()

    def expose(self, token: str, rule: Rule, arm: str, at: datetime) -> None:
        if rule.conversion is None:
            return
        self.exposed[(rule.id, arm)] += 1
        exposures = self._open.get(token)
        if exposures is None:
            exposures = self._open[token] = deque(maxlen=self._per_shopper)
            while len(self._open) > self._max_shoppers:
                self._open.popitem(last=False)
        exposures.append(_Exposure(rule.id, arm, at))

    def observe(self, event: JourneyEvent, table: RuleTable) -> list[tuple[str, str]]:
        """Conversions this event completes: (rule, arm) for each."""
        exposures = self._open.get(event.shopper.token)
        if not exposures:
            return []
        done = []
        for exposure in exposures:
            if exposure.converted or event.at <= exposure.at:
                continue
            try:
                rule = table.rule(exposure.rule)
            except KeyError:
                continue  # the rule is gone after a reload
            if rule.conversion is None or event.at - exposure.at > rule.attribution:
                continue
            if rule.conversion.matches(event.kind, event.zone):
                exposure.converted = True
                self.converted[(exposure.rule, exposure.arm)] += 1
                done.append((exposure.rule, exposure.arm))
        return done

    def rows(self) -> list[FunnelRow]:
        return [
            FunnelRow(rule, arm, count, self.converted[(rule, arm)])
            for (rule, arm), count in sorted(self.exposed.items())
        ]

    def uplift(self, rule: str) -> float | None:
        """Conversion rate of the shown arms minus the holdout's (None without both)."""
        shown = [r for r in self.rows() if r.rule == rule and r.arm != HOLDOUT]
        held = [r for r in self.rows() if r.rule == rule and r.arm == HOLDOUT]
        if not shown or not held or not held[0].exposed:
            return None
        exposed = sum(r.exposed for r in shown)
        converted = sum(r.converted for r in shown)
        return converted / exposed - held[0].rate
