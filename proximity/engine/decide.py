"""Decisions: a journey event, the rule table and the delivery controls → offers.

Every decision is explainable: :class:`Decision` lists the offers made and the
rules that matched but were suppressed, each with its reason; :meth:`Decider.explain`
gives every rule's verdict on one event without changing any state.
"""

from __future__ import annotations

import copy
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from proximity.engine.conditions import VisitView
from proximity.engine.controls import DeliveryState, Sent, Suppression, check, check_signage
from proximity.engine.experiments import held_out, variant_for
from proximity.engine.funnel import CONTROL, HOLDOUT, Funnel
from proximity.engine.rules import Rule
from proximity.engine.table import RuleTable, RuleVerdict, Verdict
from proximity.events import EventKind, JourneyEvent
from proximity.offers import Offer, offer_id

__all__ = ["Decider", "Decision", "Suppression"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Decision:
    event: JourneyEvent
    offers: tuple[Offer, ...] = ()
    suppressed: tuple[tuple[str, Suppression], ...] = ()
    signage: tuple[Offer, ...] = ()
    """Anonymous calls to action for the event's zone screens."""
    conversions: tuple[tuple[str, str], ...] = ()
    """(rule, arm) of earlier exposures this event converted; arm "holdout" for the holdout."""


@dataclass(slots=True)
class DecisionStats:
    decided: Counter[str] = field(default_factory=Counter)
    suppressed: Counter[tuple[str, Suppression]] = field(default_factory=Counter)


@dataclass(slots=True)
class _Visit:
    number: int = 1
    previous: datetime | None = None
    zones: set[str] = field(default_factory=set)
    offers: list[str] = field(default_factory=list)
    engagement: float = 0.0

    def view(self) -> VisitView:
        return VisitView(
            frozenset(self.zones), tuple(self.offers), self.number, self.previous, self.engagement
        )


class Decider:
    def __init__(
        self, table: RuleTable, max_visits: int = 100_000, state: DeliveryState | None = None
    ) -> None:
        self.table = table
        self.stats = DecisionStats()
        self.state = state or DeliveryState()
        self._signage_shown: dict[tuple[str, str], datetime] = {}
        self.funnel = Funnel()
        self._visits: OrderedDict[str, _Visit] = OrderedDict()
        self._max_visits = max_visits

    def decide(self, event: JourneyEvent) -> Decision:
        local = self.table.local_time(event.at)
        visit = self._visit(event, local)
        weights = self.table.ruleset.engagement
        visit.engagement += self._event_score(event)
        conversions = tuple(self.funnel.observe(event, self.table))
        for rule_id, arm in conversions:
            log.info("offer_converted", rule=rule_id, arm=arm, shopper=event.shopper.token)
        offers: list[Offer] = []
        suppressed: list[tuple[str, Suppression]] = []
        defaults = self.table.ruleset.defaults
        signage: list[Offer] = []
        for rule in self.table.match(event, visit.view()):
            if rule.audience == "signage":
                shown = self._signage(rule, event, local)
                if isinstance(shown, Offer):
                    signage.append(shown)
                else:
                    suppressed.append((rule.id, shown))
                    self.stats.suppressed[(rule.id, shown)] += 1
                continue
            refused = check(rule, defaults, event, local, self.state)
            if refused is None and held_out(rule, event.shopper.token):
                refused = (Suppression.HOLDOUT, "held out")
                # counts against caps like a real offer, so the holdout group is comparable
                self.state.record(event.shopper.token, Sent(rule.id, event.visit, local))
                self.funnel.expose(event.shopper.token, rule, HOLDOUT, event.at)
                log.info(
                    "offer_would_have_shown",
                    rule=rule.id,
                    shopper=event.shopper.token,
                    visit=event.visit,
                )
            if refused is not None:
                suppressed.append((rule.id, refused[0]))
                self.stats.suppressed[(rule.id, refused[0])] += 1
                continue
            sent_before = sum(1 for r in visit.offers if r == rule.id)
            variant = variant_for(rule, event.shopper.token)
            offer = Offer(
                id=offer_id(rule.id, event.shopper.token, event.visit, f"n{sent_before}"),
                rule=rule.id,
                variant=variant.id if variant else None,
                moment=rule.moment,
                cta=variant.cta if variant and variant.cta else rule.cta,
                coupon=variant.coupon if variant and variant.coupon else rule.coupon,
                store=event.store,
                zone=event.zone,
                rules_version=self.table.version or None,
                issued_at=event.at,
                expires_at=event.at + self.table.ttl_for(rule),
            )
            self.state.record(event.shopper.token, Sent(rule.id, event.visit, local))
            self.funnel.expose(
                event.shopper.token, rule, variant.id if variant else CONTROL, event.at
            )
            visit.offers.append(rule.id)
            visit.engagement += weights.offer
            self.stats.decided[rule.id] += 1
            offers.append(offer)
        if event.kind is EventKind.ZONE_ENTER and event.zone is not None:
            visit.zones.add(event.zone)
        if event.kind is EventKind.VISIT_END:
            self._visits.pop(event.visit, None)
        return Decision(event, tuple(offers), tuple(suppressed), tuple(signage), conversions)

    def _signage(self, rule: Rule, event: JourneyEvent, local: datetime) -> Offer | Suppression:
        zone = event.zone or ""
        last = self._signage_shown.get((rule.id, zone))
        refused = check_signage(rule, self.table.ruleset.defaults, zone, local, last)
        if refused is not None:
            return refused[0]
        self._signage_shown[(rule.id, zone)] = local
        self.stats.decided[rule.id] += 1
        return Offer(
            id=offer_id(rule.id, "signage", zone, event.at.isoformat()),
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

    def explain(
        self, event: JourneyEvent
    ) -> list[tuple[RuleVerdict, tuple[Suppression, str] | None]]:
        """Every rule's verdict; for matches, the control that would suppress it (or None)."""
        visit = copy.copy(self._visits.get(event.visit, _Visit()))
        visit.engagement += self._event_score(event)
        local = self.table.local_time(event.at)
        defaults = self.table.ruleset.defaults
        state = copy.deepcopy(self.state)  # rules that fire first count against later ones
        out: list[tuple[RuleVerdict, tuple[Suppression, str] | None]] = []
        for verdict in self.table.explain(event, visit.view()):
            control = None
            rule = self.table.rule(verdict.rule)
            if verdict.verdict is Verdict.MATCHED and rule.audience == "signage":
                last = self._signage_shown.get((rule.id, event.zone or ""))
                control = check_signage(rule, defaults, event.zone or "", local, last)
            elif verdict.verdict is Verdict.MATCHED:
                control = check(rule, defaults, event, local, state)
                if control is None:
                    state.record(event.shopper.token, Sent(verdict.rule, event.visit, local))
            out.append((verdict, control))
        return out

    def _event_score(self, event: JourneyEvent) -> float:
        """What this event adds to the visit's engagement score (before the rules see it)."""
        weights = self.table.ruleset.engagement
        if event.kind is EventKind.ZONE_ENTER:
            return weights.zone
        if event.kind is EventKind.ZONE_DWELL:
            return weights.dwell
        return 0.0

    def _visit(self, event: JourneyEvent, local: datetime) -> _Visit:
        visit = self._visits.get(event.visit)
        if visit is None:
            number, previous = self.state.note_visit(event.shopper.token, event.visit, local)
            visit = self._visits[event.visit] = _Visit(number, previous)
            while len(self._visits) > self._max_visits:
                self._visits.popitem(last=False)
        else:
            self._visits.move_to_end(event.visit)
        return visit
