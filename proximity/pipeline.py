"""The synchronous core: readings in, journey events and decisions out.

identity → zone → presence/journey → rule table + delivery controls. No I/O,
no clock reads: time comes from the readings and from :meth:`Pipeline.tick`,
so the same inputs always give the same outputs (tests, replays, benchmarks).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

from proximity.engine.controls import DeliveryState
from proximity.engine.decide import Decider, Decision
from proximity.engine.table import RuleTable
from proximity.identity.resolver import IdentityResolver
from proximity.journey.tracker import JourneyTracker
from proximity.presence.machine import PresenceConfig
from proximity.readings import BeaconSighting


class Pipeline:
    def __init__(
        self,
        store: str,
        table: RuleTable,
        resolver: IdentityResolver,
        presence: PresenceConfig,
        visit_timeout: timedelta = timedelta(seconds=60),
        max_visits: int = 10_000,
        state: DeliveryState | None = None,
    ) -> None:
        self.store = store
        self.resolver = resolver
        self.decider = Decider(table, state=state)
        # The presence layer emits exactly the dwell thresholds the current rules use.
        self.tracker = JourneyTracker(
            store,
            presence,
            lambda zone: self.decider.table.dwell_thresholds(zone),
            visit_timeout=visit_timeout,
            max_visits=max_visits,
        )
        self.ignored: Counter[str] = Counter()

    @property
    def table(self) -> RuleTable:
        return self.decider.table

    def replace_table(self, table: RuleTable) -> None:
        """Serve new rules from the next event on (visits and presence are kept)."""
        self.decider.table = table

    def on_sighting(self, sighting: BeaconSighting) -> list[Decision]:
        shopper = self.resolver.resolve(sighting)
        if shopper is None:
            self.ignored["not_a_shopper"] += 1
            return []
        zone = self.table.zone_for_scanner(sighting.scanner)
        if zone is None:
            self.ignored["scanner_without_zone"] += 1
            return []
        events = self.tracker.observe(shopper, zone, sighting.rssi, sighting.at)
        return [self.decider.decide(e) for e in events]

    def tick(self, now: datetime) -> list[Decision]:
        return [self.decider.decide(e) for e in self.tracker.tick(now)]

    def close(self, now: datetime) -> list[Decision]:
        return [self.decider.decide(e) for e in self.tracker.close_all(now)]
