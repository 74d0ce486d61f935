"""Delivery controls: the don't-spam rules between a match and an offer.

Checked in this order for every matched rule; the first that says no wins and
is the reason recorded (``Suppression``):

=================  =========================================================================
control            semantics
=================  =========================================================================
consent            a personal offer needs the shopper's consent (``consent_required``)
quiet_hours        no offers in these hours of store time (``[defaults] quiet_hours``)
cap                per rule and shopper: "N/visit" in this visit, "N/day" since local
                   midnight (calendar), "N/<duration>" in the rolling window ending now
cooldown           per rule and shopper: at least this long since its last offer
max_per_visit      all rules, per shopper and visit
max_per_day        all rules, per shopper and calendar day (store time)
min_gap            all rules, per shopper: at least this long since any offer
daily_budget       per rule, all shoppers, calendar day (store time)
=================  =========================================================================

Overflow is dropped, never deferred: an offer held back would arrive out of
its moment. Every suppression is counted by reason.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum

from proximity.engine.durations import format_duration
from proximity.engine.rules import Defaults, Rule
from proximity.engine.state import VISIT_MEMORY, StateStore
from proximity.events import JourneyEvent


class Suppression(StrEnum):
    NO_CONSENT = "no_consent"
    ANONYMOUS = "anonymous"
    QUIET_HOURS = "quiet_hours"
    CAP = "cap"
    COOLDOWN = "cooldown"
    MAX_PER_VISIT = "max_per_visit"
    MAX_PER_DAY = "max_per_day"
    MIN_GAP = "min_gap"
    DAILY_BUDGET = "daily_budget"
    HOLDOUT = "holdout"
    """Not a limit: the shopper is in the rule's holdout group (a "would have shown")."""


@dataclass(frozen=True, slots=True)
class Sent:
    rule: str
    visit: str
    at: datetime
    """Local (store) time."""


class DeliveryState:
    """What was sent to whom, bounded: enough history for the longest window.

    With a :class:`StateStore` every record is also written to disk, and
    :meth:`restore` loads what a restart must remember.
    """

    def __init__(
        self, per_shopper: int = 256, max_shoppers: int = 100_000, store: StateStore | None = None
    ) -> None:
        self._per_shopper = per_shopper
        self._max_shoppers = max_shoppers
        self._sent: OrderedDict[str, deque[Sent]] = OrderedDict()
        self._budget: Counter[tuple[str, date]] = Counter()
        self._visits: OrderedDict[str, deque[tuple[str, datetime]]] = OrderedDict()
        self._store = store

    def restore(self, now_local: datetime, horizon: timedelta) -> int:
        """Load the offers sent in the last ``horizon`` from the store; how many."""
        if self._store is None:
            return 0
        since = now_local - horizon
        self._store.prune(since)
        count = 0
        for shopper, rule, visit, at in self._store.load(since):
            self._remember(shopper, Sent(rule, visit, at))
            count += 1
        for shopper, visit, started in self._store.load_visits(now_local - VISIT_MEMORY):
            self._remember_visit(shopper, visit, started)
        return count

    def note_visit(self, token: str, visit: str, started: datetime) -> tuple[int, datetime | None]:
        """Count ``visit`` for ``token``: (its number, when the previous visit started)."""
        visits = self._visits.get(token)
        if visits is None or not any(v == visit for v, _ in visits):
            self._remember_visit(token, visit, started)
            if self._store is not None:
                self._store.append_visit(token, visit, started)
        visits = self._visits[token]
        number = next(n for n, (v, _) in enumerate(visits, start=1) if v == visit)
        previous = visits[number - 2][1] if number > 1 else None
        return number, previous

    def _remember_visit(self, token: str, visit: str, started: datetime) -> None:
        visits = self._visits.get(token)
        if visits is None:
            visits = self._visits[token] = deque(maxlen=self._per_shopper)
            while len(self._visits) > self._max_shoppers:
                self._visits.popitem(last=False)
        else:
            self._visits.move_to_end(token)
        visits.append((visit, started))

    def defer_writes(self) -> None:
        """Write records to the store only at :meth:`flush` (the daemon's commit order)."""
        if self._store is not None:
            self._store.defer()

    def flush(self) -> None:
        if self._store is not None:
            self._store.flush()

    def reconcile(self, sent: Iterable[tuple[str, Sent]]) -> int:
        """Record (memory and store) each (token, sent) not already remembered: offers a
        crash left without their cap row. How many were missing."""
        missing = 0
        for token, record in sent:
            if record not in self._sent.get(token, ()):
                self.record(token, record)
                missing += 1
        self.flush()
        return missing

    def history(self, token: str) -> deque[Sent]:
        return self._sent.get(token, deque())

    def budget_used(self, rule: str, day: date) -> int:
        return self._budget[(rule, day)]

    def record(self, token: str, sent: Sent) -> None:
        self._remember(token, sent)
        if self._store is not None:
            self._store.append(token, sent.rule, sent.visit, sent.at)

    def _remember(self, token: str, sent: Sent) -> None:
        history = self._sent.get(token)
        if history is None:
            history = self._sent[token] = deque(maxlen=self._per_shopper)
            while len(self._sent) > self._max_shoppers:
                self._sent.popitem(last=False)
        else:
            self._sent.move_to_end(token)
        history.append(sent)
        day = sent.at.date()
        self._budget[(sent.rule, day)] += 1
        for key in [k for k in self._budget if k[1] < day]:
            del self._budget[key]  # only today's budgets matter


def check_signage(
    rule: Rule, defaults: Defaults, zone: str, local: datetime, last: datetime | None
) -> tuple[Suppression, str] | None:
    """Why a signage rule may not show on ``zone``'s screens now: quiet hours or its cooldown."""
    for quiet in defaults.quiet_hours:
        if quiet.contains(local.time()):
            return Suppression.QUIET_HOURS, f"{local:%H:%M} is in quiet hours {quiet}"
    if rule.cooldown is not None and last is not None and local - last < rule.cooldown:
        return Suppression.COOLDOWN, (
            f"cooldown {format_duration(rule.cooldown)} on zone {zone}: shown at {last:%H:%M:%S}"
        )
    return None


def memory_horizon(rules: list[Rule] | tuple[Rule, ...], defaults: Defaults) -> timedelta:
    """How far back the controls look: the longest window any cap or gap uses (a day at least)."""
    horizon = timedelta(days=1, hours=1)  # a calendar day in any time zone
    for rule in rules:
        for cap in rule.cap:
            if isinstance(cap.per, timedelta):
                horizon = max(horizon, cap.per)
        if rule.cooldown is not None:
            horizon = max(horizon, rule.cooldown)
    if defaults.min_gap is not None:
        horizon = max(horizon, defaults.min_gap)
    return horizon


def check(
    rule: Rule, defaults: Defaults, event: JourneyEvent, local: datetime, state: DeliveryState
) -> tuple[Suppression, str] | None:
    """Why ``rule`` may not send an offer for ``event`` now, or None if it may."""
    if event.shopper.anonymous:
        return Suppression.ANONYMOUS, "anonymous shoppers never get personal offers"
    if rule.consent_required and not event.shopper.consent:
        return Suppression.NO_CONSENT, "the shopper has not consented to personal offers"
    for quiet in defaults.quiet_hours:
        if quiet.contains(local.time()):
            return Suppression.QUIET_HOURS, f"{local:%H:%M} is in quiet hours {quiet}"
    history = state.history(event.shopper.token)
    mine = [s for s in history if s.rule == rule.id]
    for cap in rule.cap:
        start = cap.window_start(local)
        used = sum(1 for s in mine if (s.visit == event.visit if start is None else s.at >= start))
        if used >= cap.count:
            return Suppression.CAP, f"cap {cap} reached ({used} sent)"
    if rule.cooldown is not None and mine and local - mine[-1].at < rule.cooldown:
        return Suppression.COOLDOWN, (
            f"cooldown {format_duration(rule.cooldown)}: last sent at {mine[-1].at:%H:%M:%S}"
        )
    if defaults.max_per_visit is not None:
        used = sum(1 for s in history if s.visit == event.visit)
        if used >= defaults.max_per_visit:
            return Suppression.MAX_PER_VISIT, f"{used} offers already in this visit"
    if defaults.max_per_day is not None:
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        used = sum(1 for s in history if s.at >= midnight)
        if used >= defaults.max_per_day:
            return Suppression.MAX_PER_DAY, f"{used} offers already today"
    if defaults.min_gap is not None and history and local - history[-1].at < defaults.min_gap:
        return Suppression.MIN_GAP, (
            f"min_gap {format_duration(defaults.min_gap)}: last offer at {history[-1].at:%H:%M:%S}"
        )
    if rule.daily_budget is not None:
        used = state.budget_used(rule.id, local.date())
        if used >= rule.daily_budget:
            return Suppression.DAILY_BUDGET, f"daily budget {rule.daily_budget} spent"
    return None
