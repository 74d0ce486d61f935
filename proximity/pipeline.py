"""The synchronous core: readings in, journey events and decisions out.

identity → zone → presence/journey → rule table + delivery controls. No I/O,
no clock reads: time comes from the readings and from :meth:`Pipeline.tick`,
so the same inputs always give the same outputs (tests, replays, benchmarks).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from proximity.adapters.nfc.tap import NfcTap
from proximity.adapters.qr.scan import CodeScan
from proximity.codes import Verifier
from proximity.engine.controls import DeliveryState
from proximity.engine.decide import Decider, Decision
from proximity.engine.table import RuleTable
from proximity.events import JourneyEvent
from proximity.identity.resolver import IdentityResolver
from proximity.journey.acts import Acts, SentOffer
from proximity.journey.tracker import JourneyTracker
from proximity.presence.machine import PresenceConfig
from proximity.readings import BeaconSighting, Sighting

if TYPE_CHECKING:
    from proximity.config import PresenceSettings
    from proximity.presence.locator import Locator

log = structlog.get_logger(__name__)


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
        verifier: Verifier | None = None,
        zone_presence: Mapping[str, PresenceConfig] | None = None,
        sent_offer: Callable[[str], SentOffer | None] | None = None,
        switch_margin: float | None = None,
        locator: Locator | None = None,
    ) -> None:
        """``verifier`` checks signed codes in taps and scans (none: acts are ignored);
        ``sent_offer`` finds the offer a redeemed coupon names (none: no redemptions);
        ``switch_margin``: one zone at a time (see :class:`JourneyTracker`);
        ``locator``: a floor plan's presence (every scanner of the plan places shoppers,
        the rule files' scanner lists are not used)."""
        self.store = store
        self.resolver = resolver
        self.decider = Decider(table, state=state)
        # The presence layer emits exactly the dwell thresholds the current rules use.
        self.tracker = JourneyTracker(
            store,
            presence,
            lambda zone: self.decider.table.dwell_thresholds(zone),
            zone_presence=zone_presence,
            visit_timeout=visit_timeout,
            max_visits=max_visits,
            switch_margin=switch_margin,
            locator=locator,
        )
        self.locator = locator
        self.ignored: Counter[str] = Counter()
        self._scanners_down: Callable[[], Collection[str]] | None = None
        self._down: frozenset[str] = frozenset()
        self._rezone = False
        self.acts = (
            Acts(
                store,
                verifier,
                self.tracker,
                lambda reader: self.decider.table.zone_for_reader(reader),
                sent_offer or (lambda offer: None),
                bind=resolver.bind,
            )
            if verifier is not None
            else None
        )

    @classmethod
    def for_presence(
        cls,
        store: str,
        table: RuleTable,
        resolver: IdentityResolver,
        presence: PresenceSettings,
        **more: Any,
    ) -> Pipeline:
        """A pipeline with a config's ``[presence]`` settings (the daemon, the simulator and
        replays build theirs the same way); ``more``: the other keyword arguments.
        Raises ConfigError if the floor plan of a floor-plan method is invalid."""
        if presence.method != "threshold" and "locator" not in more:
            from proximity.presence.floorplan import load_floor_plan
            from proximity.presence.locator import Locator

            assert presence.floor_plan is not None  # validated with the settings
            more["locator"] = Locator(
                load_floor_plan(presence.floor_plan),
                presence.method,
                exit_timeout_s=presence.exit_timeout.total_seconds(),
                silence_s=presence.scanner_silence.total_seconds(),
            )
        return cls(
            store,
            table,
            resolver,
            presence.machine_config(),
            visit_timeout=presence.visit_timeout,
            max_visits=presence.max_visits,
            zone_presence=presence.zone_configs(),
            switch_margin=presence.zone_switch_margin,
            **more,
        )

    @property
    def table(self) -> RuleTable:
        return self.decider.table

    def replace_table(self, table: RuleTable) -> None:
        """Serve new rules from the next event on (visits and presence are kept)."""
        self.decider.table = table
        self.tracker.thresholds_changed()
        self._rezone = True  # the zones held are worked out anew at the next tick

    def watch_scanners(self, scanners_down: Callable[[], Collection[str]]) -> None:
        """Ask ``scanners_down`` at every tick which scanners are down (scanner nodes that
        said they are offline or went silent): a zone whose scanners are all down holds its
        shoppers' exits until they are back (see :class:`JourneyTracker`), and a floor
        plan's estimators take those scanners for down at once."""
        self._scanners_down = scanners_down

    def _follow_scanners(self, scanners_down: Callable[[], Collection[str]], now: datetime) -> None:
        down = frozenset(scanners_down())
        if down == self._down and not self._rezone:
            return  # every tick but a change
        for scanner in sorted(down - self._down):
            log.warning("node_down", scanner=scanner, consequence="its shoppers' exits held")
        for scanner in sorted(self._down - down):
            log.info("node_up", scanner=scanner)
        self._down, self._rezone = down, False
        if self.locator is not None:
            self.locator.liveness.known_down(down)
        zones = self.table.ruleset.zones
        held = [z for z, zone in zones.items() if zone.scanners and down.issuperset(zone.scanners)]
        self.tracker.zones_down(held, now)

    def on_sighting(self, sighting: Sighting) -> list[Decision]:
        if self.locator is not None:
            return self._located(sighting, self.locator)
        shopper = self.resolver.resolve(sighting)
        if shopper is None:
            self.ignored["not_a_shopper"] += 1
            return []
        zone = self.table.zone_for_scanner(sighting.scanner)
        if zone is None:
            self.ignored["scanner_without_zone"] += 1
            return []
        events = self.tracker.observe(shopper, zone, sighting.rssi, sighting.at)
        if not events:  # nearly every sighting
            return []
        return [self.decider.decide(e) for e in events]

    def _located(self, sighting: Sighting, locator: Locator) -> list[Decision]:
        """A sighting with a floor plan: any scanner of the plan, reference beacons
        calibrate the radio model, shoppers go to their estimator."""
        scanner = sighting.scanner
        if scanner not in locator.scanners:
            self.ignored["scanner_not_in_plan"] += 1
            return []
        locator.heard(scanner, sighting.at)
        if isinstance(sighting, BeaconSighting) and locator.reference(sighting):
            self.ignored["reference_beacon"] += 1
            return []
        shopper = self.resolver.resolve(sighting)
        if shopper is None:
            self.ignored["not_a_shopper"] += 1
            return []
        events = self.tracker.observe_reading(
            shopper, scanner, sighting.rssi, sighting.tx_power, sighting.at
        )
        if not events:
            return []
        return [self.decider.decide(e) for e in events]

    def on_tap(self, tap: NfcTap) -> list[Decision]:
        return self._act(None if self.acts is None else self.acts.on_tap(tap))

    def on_scan(self, scan: CodeScan) -> list[Decision]:
        return self._act(None if self.acts is None else self.acts.on_scan(scan))

    def _act(self, event: JourneyEvent | None) -> list[Decision]:
        if self.acts is None:
            self.ignored["acts_without_code_keys"] += 1
            return []
        return [] if event is None else [self.decider.decide(event)]

    def tick(self, now: datetime) -> list[Decision]:
        if self._scanners_down is not None:
            self._follow_scanners(self._scanners_down, now)
        return [self.decider.decide(e) for e in self.tracker.tick(now)]

    def tick_in_slices(self, now: datetime, size: int) -> Iterator[list[Decision]]:
        """:meth:`tick`, ``size`` visits at a time: the daemon lets the loop turn between
        slices, so readings are not held up for the whole tick (with ``fused`` and a
        thousand shoppers a tick takes 10-37 ms)."""
        if self._scanners_down is not None:
            self._follow_scanners(self._scanners_down, now)
        for events in self.tracker.tick_in_slices(now, size):
            yield [self.decider.decide(e) for e in events]

    def close(self, now: datetime) -> list[Decision]:
        return [self.decider.decide(e) for e in self.tracker.close_all(now)]
