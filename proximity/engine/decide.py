"""Decisions: a journey event, the rule table, and the delivery controls → offers.

The walking skeleton applies two controls, each with a stated reason when it
suppresses an offer:

- ``no_consent``: personal offers go only to shoppers who opted in;
- ``once_per_visit``: a rule reaches a shopper at most once per visit.

Every decision is explainable: :class:`Decision` lists the offers made and the
rules that matched but were suppressed, with the reason.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum

from proximity.engine.table import RuleTable
from proximity.events import JourneyEvent
from proximity.offers import Offer, offer_id


class Suppression(StrEnum):
    NO_CONSENT = "no_consent"
    ONCE_PER_VISIT = "once_per_visit"


@dataclass(frozen=True, slots=True)
class Decision:
    event: JourneyEvent
    offers: tuple[Offer, ...] = ()
    suppressed: tuple[tuple[str, Suppression], ...] = ()


@dataclass(slots=True)
class DecisionStats:
    decided: Counter[str] = field(default_factory=Counter)
    suppressed: Counter[tuple[str, Suppression]] = field(default_factory=Counter)


class Decider:
    def __init__(self, table: RuleTable, max_remembered: int = 100_000) -> None:
        self.table = table
        self.stats = DecisionStats()
        self._sent: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._max_remembered = max_remembered

    def decide(self, event: JourneyEvent) -> Decision:
        offers: list[Offer] = []
        suppressed: list[tuple[str, Suppression]] = []
        for rule in self.table.match(event):
            if not event.shopper.consent:
                suppressed.append((rule.id, Suppression.NO_CONSENT))
                continue
            key = (event.visit, rule.id)
            if key in self._sent:
                suppressed.append((rule.id, Suppression.ONCE_PER_VISIT))
                continue
            self._remember(key)
            offers.append(
                Offer(
                    id=offer_id(rule.id, event.shopper.token, event.visit, "visit"),
                    rule=rule.id,
                    moment=rule.moment,
                    cta=rule.cta,
                    coupon=rule.coupon,
                    store=event.store,
                    zone=event.zone,
                    rules_version=self.table.version or None,
                    issued_at=event.at,
                    expires_at=event.at + self.table.ttl_for(rule),
                )
            )
        for offer in offers:
            self.stats.decided[offer.rule] += 1
        for item in suppressed:
            self.stats.suppressed[item] += 1
        return Decision(event, tuple(offers), tuple(suppressed))

    def _remember(self, key: tuple[str, str]) -> None:
        self._sent[key] = None
        while len(self._sent) > self._max_remembered:
            self._sent.popitem(last=False)
