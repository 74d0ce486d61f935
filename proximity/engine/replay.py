"""Replaying a journey log through rules: what they decide, and what changes.

Time comes from the events themselves, so a replay is deterministic: the same
log and rules always give the same offers and suppressions.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from proximity.engine.decide import Decider
from proximity.engine.funnel import FunnelRow
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
    funnel: list[FunnelRow] = field(default_factory=list)
    uplift: dict[str, float] = field(default_factory=dict)


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
    result.funnel = decider.funnel.rows()
    for rule in {row.rule for row in result.funnel}:
        uplift = decider.funnel.uplift(rule)
        if uplift is not None:
            result.uplift[rule] = uplift
    return result
