"""Running a simulated crowd through Proximity's real pipeline, in process.

crowd → :class:`CrowdBleBackend` (bleak objects) → the BLE adapter's
:class:`BeaconDecoder` → :class:`Pipeline` (identity, presence, journey, rules)
→ journey events and decisions, with the pipeline ticked every ``tick`` of the
clock's time as the daemon's ticker does. On a :class:`VirtualClock` a store hour
runs as fast as the pipeline can take it; the result carries the ground truth
keyed by the same pseudonymous tokens as the events, ready for
:mod:`firmware_sim.score`.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from firmware_sim.crowd import Crowd, SimShopper, Stay, in_store, make_crowd
from firmware_sim.crowd_backend import CrowdBleBackend
from firmware_sim.radio import RadioModel, RadioParams
from firmware_sim.scenarios import Scenario
from firmware_sim.score import DEFAULT_MIN_STAY_S, DEFAULT_TOLERANCE_S, Kind, Observed, Score, score
from firmware_sim.store import Store
from proximity.adapters.base import BleBackend
from proximity.adapters.ble.adapter import BeaconDecoder, BleAdapter
from proximity.clock import Clock, VirtualClock
from proximity.config import DEMO_APP_UUID, DEMO_PSEUDONYM_KEY, PresenceSettings
from proximity.engine.decide import Decision
from proximity.engine.loader import load_rule_files
from proximity.engine.table import RuleTable
from proximity.events import EventKind, JourneyEvent
from proximity.identity.resolver import IdentityResolver
from proximity.journey.record import JourneyRecorder
from proximity.pipeline import Pipeline

EXAMPLE_RULES = Path(__file__).resolve().parent.parent / "rules" / "example-store.toml"
_KINDS: dict[EventKind, Kind] = {
    EventKind.ZONE_ENTER: "enter",
    EventKind.ZONE_EXIT: "exit",
    EventKind.ZONE_DWELL: "dwell",
}


def load_table(paths: list[Path] | None = None) -> RuleTable:
    return RuleTable.from_ruleset(load_rule_files(paths or [EXAMPLE_RULES]))


def demo_resolver(key: bytes = DEMO_PSEUDONYM_KEY.encode()) -> IdentityResolver:
    return IdentityResolver([DEMO_APP_UUID], key)


def seeded(seed: int, purpose: str) -> random.Random:
    """An independent generator per purpose (crowd plan, advertising, radio)."""
    return random.Random(f"{seed}:{purpose}")


def build_crowd(
    store: Store,
    shoppers: list[SimShopper] | None,
    seed: int,
    radio: RadioParams | None = None,
) -> Crowd:
    """A crowd on ``store``'s radio (or ``radio``); ``shoppers`` None means none yet."""
    model = RadioModel(radio or store.radio, seeded(seed, "radio"))
    return Crowd(store, shoppers or [], model, seeded(seed, "advertising"))


def scenario_crowd(store: Store, scenario: Scenario, seed: int) -> Crowd:
    """The seeded stochastic crowd of ``scenario`` on ``store`` (the same seed, the same crowd)."""
    radio = RadioModel(scenario.radio_for(store), seeded(seed, f"{scenario.name}:radio"))
    shoppers = make_crowd(store, scenario.crowd, seeded(seed, f"{scenario.name}:plan"), radio)
    return Crowd(store, shoppers, radio, seeded(seed, f"{scenario.name}:advertising"))


@dataclass
class RunResult:
    start: datetime
    events: list[JourneyEvent] = field(default_factory=list)
    offers: int = 0
    suppressed: int = 0
    advertisements: int = 0
    heard: int = 0
    sightings: int = 0
    simulated_s: float = 0.0
    wall_s: float = 0.0
    truth: dict[str, list[Stay]] = field(default_factory=dict)
    visits: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    thresholds: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def observed(self) -> list[Observed]:
        out: list[Observed] = []
        for event in self.events:
            kind = _KINDS.get(event.kind)
            if kind is None or event.zone is None:
                continue
            at = (event.at - self.start).total_seconds()
            out.append(Observed(event.shopper.token, kind, event.zone, at, event.threshold_s))
        return out

    def score(
        self, tolerance_s: float = DEFAULT_TOLERANCE_S, min_stay_s: float = DEFAULT_MIN_STAY_S
    ) -> Score:
        return score(
            self.truth, self.visits, self.observed(), self.thresholds, tolerance_s, min_stay_s
        )

    def counts(self) -> Counter[str]:
        return Counter(str(e.kind) for e in self.events)


async def run_in_process(
    crowd: Crowd,
    table: RuleTable,
    resolver: IdentityResolver,
    presence: PresenceSettings | None = None,
    clock: Clock | None = None,
    start: datetime | None = None,
    recorder: JourneyRecorder | None = None,
    tee: Callable[[BleBackend], BleBackend] | None = None,
) -> RunResult:
    """Run ``crowd`` through a real :class:`Pipeline` until every visit has ended.

    ``tee`` wraps the crowd's backend (a :class:`ReadingRecorder` records the raw
    readings on their way to the decoder)."""
    presence = presence or PresenceSettings()
    if clock is None:
        if start is None:
            raise ValueError("give a clock or a start time")
        clock = VirtualClock(start)
    start = start or clock.now()
    store_id = (table.store.id if table.store is not None else None) or "store-001"
    pipeline = Pipeline.for_presence(store_id, table, resolver, presence)
    crowd_backend = CrowdBleBackend(crowd, clock, start)
    backend = tee(crowd_backend) if tee is not None else crowd_backend
    # flood defence on the simulation's clock: a store hour in seconds is no flood
    decoder = BeaconDecoder(monotonic=lambda: (clock.now() - start).total_seconds())
    adapter = BleAdapter(backend, decoder)
    result = RunResult(start)

    def handle(decisions: list[Decision]) -> None:
        for decision in decisions:
            result.events.append(decision.event)
            result.offers += len(decision.offers)
            result.suppressed += len(decision.suppressed)
            if recorder is not None:
                recorder.record(decision.event)

    tick = presence.tick
    next_tick = start + tick
    wall = time.perf_counter()
    async with backend:
        async for sighting in adapter.readings():
            while next_tick <= sighting.at:
                handle(pipeline.tick(next_tick))
                next_tick += tick
            handle(pipeline.on_sighting(sighting))
    # let exit timeouts and visit timeouts run out, as the daemon's ticker would
    end = start + timedelta(seconds=crowd.end) + presence.visit_timeout + presence.exit_timeout
    end += 2 * tick
    while next_tick <= end:
        handle(pipeline.tick(next_tick))
        next_tick += tick
    if isinstance(clock, VirtualClock) and clock.now() < end:
        await clock.advance_to(end)
    handle(pipeline.close(end))
    result.wall_s = time.perf_counter() - wall
    result.simulated_s = (end - start).total_seconds()
    result.advertisements = crowd.advertised
    result.heard = crowd.heard_count
    result.sightings = decoder.sightings
    truth = crowd.truth()
    for index, shopper in crowd.shoppers.items():
        phone = shopper.phone
        token = resolver.token_for(phone.uuid, phone.major, phone.install)
        result.truth[token] = truth[index]
        result.visits[token] = in_store(shopper.itinerary)
    result.thresholds = {zone: tuple(table.dwell_thresholds(zone)) for zone in crowd.store.zones}
    return result


#: Saturday 28 November 2026, 10:00 UTC: second 0 of every scenario run.
SCENARIO_START = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


async def run_scenario(
    store: Store,
    scenario: Scenario,
    seed: int,
    table: RuleTable,
    resolver: IdentityResolver,
    presence: PresenceSettings | None = None,
    clock: Clock | None = None,
    recorder: JourneyRecorder | None = None,
    tee: Callable[[BleBackend], BleBackend] | None = None,
) -> RunResult:
    """A seeded stochastic crowd of ``scenario`` on ``store``, through the pipeline."""
    crowd = scenario_crowd(store, scenario, seed)
    start = SCENARIO_START if clock is None else clock.now()
    return await run_in_process(crowd, table, resolver, presence, clock, start, recorder, tee)
