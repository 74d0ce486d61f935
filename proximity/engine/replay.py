"""Replaying a journey log through rules: what they decide, and what changes.

Time comes from the events themselves, so a replay is deterministic: the same
log and rules always give the same offers and suppressions.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from proximity.engine.decide import Decider
from proximity.engine.table import RuleTable
from proximity.events import JourneyEvent


@dataclass(frozen=True)
class Outcome:
    offers: tuple[str, ...]
    suppressed: tuple[tuple[str, str], ...]

    def __str__(self) -> str:
        parts = list(self.offers) or ["no offer"]
        parts += [f"{rule} suppressed ({why})" for rule, why in self.suppressed]
        return ", ".join(parts)


@dataclass
class ReplayResult:
    outcomes: list[Outcome] = field(default_factory=list)
    offers: Counter[str] = field(default_factory=Counter)
    suppressed: Counter[str] = field(default_factory=Counter)


def replay(table: RuleTable, events: list[JourneyEvent]) -> ReplayResult:
    decider = Decider(table)
    result = ReplayResult()
    for event in events:
        decision = decider.decide(event)
        outcome = Outcome(
            tuple(o.rule for o in decision.offers),
            tuple((rule, str(why)) for rule, why in decision.suppressed),
        )
        result.outcomes.append(outcome)
        result.offers.update(outcome.offers)
        result.suppressed.update(why for _, why in outcome.suppressed)
    return result
