"""Visits: turn per-zone presence transitions into a shopper's journey events.

A visit starts with the first zone a shopper enters and ends once the shopper
has been in no zone for ``visit_timeout``. The tracked set is bounded: past
``max_visits`` the least recently seen visit is ended early, so a flood of
identities cannot grow memory without limit.

Two ways to know the zone: per-zone RSSI thresholds (:meth:`JourneyTracker.observe`,
one :class:`ZonePresence` per zone a shopper is heard in), or, with a floor plan, a
:class:`Locator`'s estimator per shopper fed every reading of every scanner
(:meth:`JourneyTracker.observe_reading`): the zone it decides becomes the same
enter, dwell and exit events.

A zone whose scanners are all down (a dead scanner node: :meth:`JourneyTracker.zones_down`)
says nothing about its shoppers: their exits for silence are held while it is down (for
``visit_timeout`` since each was last heard at most), and once it is back they get a full
exit timeout to be heard again before they leave as usual.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from proximity.events import EventKind, JourneyEvent, Shopper, visit_id
from proximity.presence.machine import (
    DwellSchedule,
    PresenceConfig,
    Transition,
    TransitionKind,
    ZonePresence,
)

if TYPE_CHECKING:
    from proximity.presence.estimate import ZoneEstimator
    from proximity.presence.locator import Locator

_KIND = {
    TransitionKind.ENTER: EventKind.ZONE_ENTER,
    TransitionKind.DWELL: EventKind.ZONE_DWELL,
    TransitionKind.EXIT: EventKind.ZONE_EXIT,
}


@dataclass(slots=True)
class Stay:
    """The zone a shopper's estimator placed them in, since when, and its dwells."""

    zone: str
    entered_at: datetime
    thresholds: Sequence[float]
    dwell: DwellSchedule


@dataclass(slots=True)
class Visit:
    shopper: Shopper
    id: str
    started: datetime
    last_seen: datetime
    zones: dict[str, ZonePresence] = field(default_factory=dict)
    started_emitted: bool = False
    estimator: ZoneEstimator | None = None
    """With a floor plan: where this shopper is (``zones`` stays empty)."""
    stay: Stay | None = None

    @property
    def in_any_zone(self) -> bool:
        return any(z.present for z in self.zones.values()) or self.stay is not None


class JourneyTracker:
    def __init__(
        self,
        store: str,
        presence: PresenceConfig,
        dwell_thresholds: Callable[[str], Sequence[float]],
        visit_timeout: timedelta = timedelta(seconds=60),
        max_visits: int = 10_000,
        zone_presence: Mapping[str, PresenceConfig] | None = None,
        switch_margin: float | None = None,
        locator: Locator | None = None,
    ) -> None:
        """``switch_margin``: None, zones are independent (a shopper can be in several at
        once); a number of dB, a shopper is in one zone at a time, and another zone takes
        over only once heard that much stronger than the zone the shopper is in.
        ``locator``: the floor plan's estimators, for :meth:`observe_reading`."""
        self._store = store
        self._presence = presence
        self._zone_presence = dict(zone_presence or {})
        self._thresholds = dwell_thresholds
        self._visit_timeout = visit_timeout
        self._max_visits = max_visits
        self._visits: OrderedDict[str, Visit] = OrderedDict()
        self._margin = switch_margin
        self._locator = locator
        self._down: frozenset[str] = frozenset()
        """Zones whose scanners are all down: their presences do not time out."""
        self._back: dict[str, datetime] = {}
        """Zones whose scanners came back, and when: a grace of an exit timeout."""
        self._longest_exit = max(
            [presence.exit_timeout] + [c.exit_timeout for c in self._zone_presence.values()]
        )

    @property
    def active_visits(self) -> int:
        return len(self._visits)

    def current(self, token: str) -> tuple[Shopper, str] | None:
        """The shopper (as their beacon told: consent, segments) and visit id of an
        active visit of ``token``, or None if they are not in the store by BLE."""
        visit = self._visits.get(token)
        return None if visit is None else (visit.shopper, visit.id)

    def observe(self, shopper: Shopper, zone: str, rssi: int, at: datetime) -> list[JourneyEvent]:
        """One smoothed-to-be RSSI sample of ``shopper`` heard in ``zone``."""
        events: list[JourneyEvent] = []
        visit = self._heard(shopper, at, events)
        presence = visit.zones.get(zone)
        if presence is None:
            config = self._zone_presence.get(zone, self._presence)
            presence = ZonePresence(zone, config, lambda: self._thresholds(zone))
            visit.zones[zone] = presence
        transitions = presence.observe(rssi, at)
        if not transitions:  # nearly every sample
            return events
        if self._margin is not None and transitions[0].kind is TransitionKind.ENTER:
            held = next((z for z in visit.zones.values() if z.present and z is not presence), None)
            if held is not None:
                if presence.smoothed < held.smoothed + self._margin:
                    presence.withdraw()  # still nearer the zone the shopper is in
                    return events
                events.append(self._from_transition(visit, held.leave(at)))
        for transition in transitions:
            if transition.kind is TransitionKind.ENTER and not visit.started_emitted:
                visit.started_emitted = True
                events.append(self._event(visit, EventKind.VISIT_START, transition.at))
            events.append(self._from_transition(visit, transition))
        return events

    def _heard(self, shopper: Shopper, at: datetime, events: list[JourneyEvent]) -> Visit:
        """``shopper``'s visit, begun now if there is none (the oldest visit closed, into
        ``events``, when the tracker is full), and when they were last heard."""
        visit = self._visits.get(shopper.token)
        if visit is None:
            while len(self._visits) >= self._max_visits:
                _, oldest = self._visits.popitem(last=False)
                events.extend(self._close(oldest, at))
            visit = Visit(shopper, visit_id(shopper.token, at), at, at)
            self._visits[shopper.token] = visit
        else:
            self._visits.move_to_end(shopper.token)
            if at > visit.last_seen:
                visit.last_seen = at
            visit.shopper = shopper
        return visit

    def observe_reading(
        self, shopper: Shopper, scanner: str, rssi: int, tx_power: int, at: datetime
    ) -> list[JourneyEvent]:
        """One reading of ``shopper`` by any scanner of the floor plan (needs a locator)."""
        locator = self._locator
        assert locator is not None, "observe_reading needs a floor plan's locator"
        events: list[JourneyEvent] = []
        visit = self._heard(shopper, at, events)
        estimator = visit.estimator
        if estimator is None:
            estimator = visit.estimator = locator.estimator()
        estimator.observe(scanner, rssi, tx_power, locator.seconds(at))
        self._follow(visit, estimator, max(at, visit.last_seen), events)
        return events

    def posterior(self, token: str) -> dict[str, float] | None:
        """Zone → probability of ``token``'s estimator (None: no visit or no floor plan)."""
        visit = self._visits.get(token)
        if visit is None or visit.estimator is None:
            return None
        return visit.estimator.posterior()

    def phone_offset(self, token: str) -> float | None:
        """How much louder (dB) than the store's other phones the scanners hear ``token``'s
        phone, where its estimator learns that (``fused`` with enough scanners in range);
        else None."""
        visit = self._visits.get(token)
        estimator = None if visit is None else visit.estimator
        if not getattr(estimator, "learns_offset", False):
            return None
        return float(getattr(estimator, "offset", 0.0))

    def _follow(
        self, visit: Visit, estimator: ZoneEstimator, at: datetime, events: list[JourneyEvent]
    ) -> None:
        """Turn the zone ``estimator`` decides now into transitions of ``visit``."""
        zone = estimator.zone
        stay = visit.stay
        if stay is not None:
            if stay.zone == zone:
                for t in stay.dwell.reached(stay.entered_at, at, stay.thresholds):
                    events.append(self._from_transition(visit, t))
                return
            # Gone quiet: the stay ended when the shopper was last heard.
            quiet = estimator.gone or at - visit.last_seen >= self._presence.exit_timeout
            end = visit.last_seen if quiet else at
            for t in stay.dwell.reached(stay.entered_at, end, stay.thresholds):
                events.append(self._from_transition(visit, t))
            dwell_s = max(0.0, (end - stay.entered_at).total_seconds())
            exit_ = Transition(TransitionKind.EXIT, stay.zone, at, dwell_s=dwell_s)
            events.append(self._from_transition(visit, exit_))
            visit.stay = None
        if zone is not None:
            visit.stay = Stay(zone, at, self._thresholds(zone), DwellSchedule(zone))
            if not visit.started_emitted:
                visit.started_emitted = True
                events.append(self._event(visit, EventKind.VISIT_START, at))
            events.append(self._from_transition(visit, Transition(TransitionKind.ENTER, zone, at)))

    def thresholds_changed(self) -> None:
        """New rules: every zone presence takes its dwell thresholds anew."""
        for visit in self._visits.values():
            for presence in visit.zones.values():
                presence.refresh_thresholds()
            if visit.stay is not None:
                visit.stay.thresholds = self._thresholds(visit.stay.zone)

    def zones_down(self, zones: Collection[str], now: datetime) -> None:
        """The zones whose scanners are all down as of ``now`` (the others are up): a zone
        that comes back gives its shoppers an exit timeout from ``now`` to be heard."""
        down = frozenset(zones)
        for zone in self._down - down:
            self._back[zone] = now
        for zone in down:
            self._back.pop(zone, None)
        self._down = down

    def _held(self, presence: ZonePresence, now: datetime) -> bool:
        """Whether ``presence`` must not time out now: its zone's scanners are down (for
        ``visit_timeout`` at most), or came back less than an exit timeout ago."""
        zone = presence.zone
        last = presence.last_seen
        if zone in self._down:
            return last is None or now - last < self._visit_timeout
        back = self._back.get(zone)
        return (
            back is not None
            and (last is None or last < back)
            and now - back < presence.exit_timeout
        )

    def tick(self, now: datetime) -> list[JourneyEvent]:
        """Advance time: dwell thresholds, exit timeouts, visit ends."""
        events = self._tick_visits(now, list(self._visits.values()))
        self._end_tick(now)
        return events

    def tick_in_slices(self, now: datetime, size: int) -> Iterator[list[JourneyEvent]]:
        """:meth:`tick`, ``size`` visits at a time: the events of each slice in turn, so
        that the daemon can let its loop turn between them and a thousand shoppers do not
        hold a reading up for the whole tick. A visit that ended between two slices is
        passed over. A visit heard between two slices, after ``now``, is ticked at ``now``
        all the same: what was due by then (a dwell) happened by then, and nothing its
        reading decided can be undone by an earlier time (an exit needs ``now`` past its
        last reading)."""
        visits = list(self._visits.values())
        for start in range(0, len(visits), size):
            yield self._tick_visits(now, visits[start : start + size])
        self._end_tick(now)

    def _tick_visits(self, now: datetime, visits: Sequence[Visit]) -> list[JourneyEvent]:
        events: list[JourneyEvent] = []
        idle_since = now - self._visit_timeout
        holding = bool(self._down or self._back)
        locator = self._locator
        seconds: float | None = None  # ``now`` on the estimators' scale, once needed
        for visit in visits:
            token = visit.shopper.token
            if self._visits.get(token) is not visit:
                continue
            for presence in visit.zones.values():
                if holding and self._held(presence, now):
                    continue
                transitions = presence.tick(now)
                if transitions:
                    events.extend(self._from_transition(visit, t) for t in transitions)
            estimator = visit.estimator
            if estimator is not None and locator is not None:
                if seconds is None:
                    seconds = locator.seconds(now)
                estimator.advance(seconds)
                self._follow(visit, estimator, now, events)
            if visit.last_seen <= idle_since and not visit.in_any_zone:
                del self._visits[token]
                if visit.started_emitted:
                    events.append(self._event(visit, EventKind.VISIT_END, now))
        return events

    def _end_tick(self, now: datetime) -> None:
        """After a tick's last visit: scanners back long enough are no longer held."""
        if self._back:
            self._back = {z: t for z, t in self._back.items() if now - t < self._longest_exit}

    def close_all(self, now: datetime) -> list[JourneyEvent]:
        """End every visit now (shutdown, end of a replay)."""
        events: list[JourneyEvent] = []
        while self._visits:
            _, visit = self._visits.popitem(last=False)
            events.extend(self._close(visit, now))
        return events

    def _close(self, visit: Visit, now: datetime) -> list[JourneyEvent]:
        events: list[JourneyEvent] = []
        for presence in visit.zones.values():
            if presence.present:
                last = presence.last_seen or now
                transition = Transition(
                    TransitionKind.EXIT,
                    presence.zone,
                    now,
                    dwell_s=0.0
                    if presence.entered_at is None
                    else max(0.0, (last - presence.entered_at).total_seconds()),
                )
                events.append(self._from_transition(visit, transition))
        stay = visit.stay
        if stay is not None:
            end = min(now, visit.last_seen)
            events.extend(
                self._from_transition(visit, t)
                for t in stay.dwell.reached(stay.entered_at, end, stay.thresholds)
            )
            dwell_s = max(0.0, (end - stay.entered_at).total_seconds())
            exit_ = Transition(TransitionKind.EXIT, stay.zone, now, dwell_s=dwell_s)
            events.append(self._from_transition(visit, exit_))
            visit.stay = None
        if visit.started_emitted:
            events.append(self._event(visit, EventKind.VISIT_END, now))
        return events

    def _from_transition(self, visit: Visit, t: Transition) -> JourneyEvent:
        return JourneyEvent(
            kind=_KIND[t.kind],
            at=t.at,
            store=self._store,
            shopper=visit.shopper,
            visit=visit.id,
            zone=t.zone,
            dwell_s=None if t.kind is TransitionKind.ENTER else t.dwell_s,
            threshold_s=t.threshold_s,
        )

    def _event(self, visit: Visit, kind: EventKind, at: datetime) -> JourneyEvent:
        return JourneyEvent(
            kind=kind, at=at, store=self._store, shopper=visit.shopper, visit=visit.id
        )
