"""Running a simulated crowd through Proximity's real pipeline, in process.

crowd → :class:`CrowdBleBackend` (bleak objects) → the BLE adapter's
:class:`BeaconDecoder` → :class:`Pipeline` (identity, presence, journey, rules)
→ journey events and decisions, with the pipeline ticked every ``tick`` of the
clock's time as the daemon's ticker does. On a :class:`VirtualClock` a store hour
runs as fast as the pipeline can take it; the result carries the ground truth
keyed by the same pseudonymous tokens as the events, ready for
:mod:`firmware_sim.score`.

Shoppers' acts (:mod:`firmware_sim.acts`: check-ins, cart bindings, coupon
redemptions) go in as the daemon's NFC and code-scanner adapters would hand them
over, :class:`NfcTap` and :class:`CodeScan` readings into ``pipeline.on_tap`` and
``on_scan``, each at its instant, in time order with the BLE sightings and the
ticks, on the same clock. The pipeline is wired as the daemon wires it
(:mod:`proximity.wiring`): a code verifier on the run's clock with the ``[codes]``
keys, and a :class:`FeedbackDesk` that knows every offer decided, where the
pipeline looks a redeemed coupon's offer up.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from firmware_sim.acts import ActCounts, ActPlayer, PlannedAct, ReaderReading, plan_acts
from firmware_sim.beacons import CART_UUID
from firmware_sim.crowd import Crowd, SimShopper, Stay, in_store, make_crowd
from firmware_sim.crowd_backend import CrowdBleBackend
from firmware_sim.radio import RadioModel, RadioParams
from firmware_sim.scenarios import Scenario
from firmware_sim.score import DEFAULT_MIN_STAY_S, DEFAULT_TOLERANCE_S, Kind, Observed, Score, score
from firmware_sim.store import Store
from proximity.adapters.base import BleBackend
from proximity.adapters.ble.adapter import BeaconDecoder, BleAdapter
from proximity.adapters.nfc.tap import NfcTap
from proximity.clock import Clock, VirtualClock
from proximity.codes import Verifier
from proximity.config import DEMO_APP_UUID, DEMO_PSEUDONYM_KEY, CodeSettings, PresenceSettings
from proximity.engine.decide import Decision
from proximity.engine.loader import load_rule_files
from proximity.engine.table import RuleTable
from proximity.events import EventKind, JourneyEvent
from proximity.identity.resolver import IdentityResolver
from proximity.journey.record import JourneyRecorder
from proximity.measurement.feedback import FeedbackDesk
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
    """The demo app's shoppers; the simulator's carts (:data:`CART_UUID`) as anonymous
    presence, which a check-in at the cart dock binds to a shopper (as ``run --via
    bluez`` configures the daemon when the crowd has carts)."""
    return IdentityResolver([DEMO_APP_UUID], key, anonymous_uuids=[CART_UUID])


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


def scenario_acts(store: Store, scenario: Scenario, seed: int, crowd: Crowd) -> list[PlannedAct]:
    """What ``scenario``'s shoppers do at the store's readers (none unless its crowd has a
    check-in or redemption share); a random stream of its own, so acts leave the crowd,
    its advertisements and its RSSI as they were."""
    rng = seeded(seed, f"{scenario.name}:acts")
    return plan_acts(store, crowd.shoppers.values(), scenario.crowd, rng)


def scenario_crowd(store: Store, scenario: Scenario, seed: int) -> Crowd:
    """The seeded stochastic crowd of ``scenario`` on ``store`` (the same seed, the same crowd)."""
    radio = RadioModel(scenario.radio_for(store), seeded(seed, f"{scenario.name}:radio"))
    shoppers = make_crowd(store, scenario.crowd, seeded(seed, f"{scenario.name}:plan"), radio)
    outages = scenario.outages(store, seeded(seed, f"{scenario.name}:outages"))
    return Crowd(store, shoppers, radio, seeded(seed, f"{scenario.name}:advertising"), outages)


@dataclass
class Tally:
    """What a run through the pipeline produced: its journey events and decisions' counts
    (the simulator's run and the replay of a recording keep the same)."""

    start: datetime
    events: list[JourneyEvent] = field(default_factory=list)
    offers: int = 0
    suppressed: int = 0
    sightings: int = 0
    simulated_s: float = 0.0
    wall_s: float = 0.0

    def take(self, decision: Decision, recorder: JourneyRecorder | None = None) -> None:
        """Count one decision (and record its event, if recording)."""
        self.events.append(decision.event)
        self.offers += len(decision.offers)
        self.suppressed += len(decision.suppressed)
        if recorder is not None:
            recorder.record(decision.event)

    def counts(self) -> Counter[str]:
        return Counter(str(e.kind) for e in self.events)

    @property
    def redemptions(self) -> int:
        return sum(1 for e in self.events if e.kind is EventKind.OFFER_REDEEMED)


@dataclass
class RunResult(Tally):
    advertisements: int = 0
    heard: int = 0
    truth: dict[str, list[Stay]] = field(default_factory=dict)
    visits: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    thresholds: dict[str, tuple[float, ...]] = field(default_factory=dict)
    planned: list[PlannedAct] = field(default_factory=list)
    """The acts shoppers were planned to do at the store's readers, in time order."""
    acts: ActCounts = field(default_factory=ActCounts)
    """What the store's readers read (taps, scans, codes shown)."""
    bindings: int = 0
    """Carts bound to a shopper (the identity resolver's count)."""
    refused: Counter[str] = field(default_factory=Counter)
    """Codes the daemon refused, by reason (none, in a run that goes as planned)."""
    outages: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Scanners that were down, and when (seconds into the run)."""
    unlisted_readers: tuple[str, ...] = ()
    """Readers acts happened at that the rules do not list in the reader's zone: their
    events carry no zone, or another one."""

    def observed(self) -> list[Observed]:
        """Zone events of shoppers, for scoring (anonymous presence, such as a cart nobody
        checked in with, has no ground truth)."""
        out: list[Observed] = []
        for event in self.events:
            kind = _KINDS.get(event.kind)
            if kind is None or event.zone is None or event.shopper.anonymous:
                continue
            at = (event.at - self.start).total_seconds()
            out.append(Observed(event.shopper.token, kind, event.zone, at, event.threshold_s))
        return out

    def score(
        self, tolerance_s: float = DEFAULT_TOLERANCE_S, min_stay_s: float = DEFAULT_MIN_STAY_S
    ) -> Score:
        return score(
            self.truth,
            self.visits,
            self.observed(),
            self.thresholds,
            tolerance_s,
            min_stay_s,
            sorted(set(self.outages.values())),
        )


async def run_in_process(
    crowd: Crowd,
    table: RuleTable,
    resolver: IdentityResolver,
    presence: PresenceSettings | None = None,
    clock: Clock | None = None,
    start: datetime | None = None,
    recorder: JourneyRecorder | None = None,
    tee: Callable[[BleBackend], BleBackend] | None = None,
    acts: Sequence[PlannedAct] = (),
    codes: CodeSettings | None = None,
    record_acts: Callable[[ReaderReading], None] | None = None,
) -> RunResult:
    """Run ``crowd`` through a real :class:`Pipeline` until every visit has ended.

    ``tee`` wraps the crowd's backend (a :class:`ReadingRecorder` records the raw
    readings on their way to the decoder). ``acts``: what shoppers do at the store's
    readers (:func:`firmware_sim.acts.plan_acts`); ``codes``: the daemon's ``[codes]``
    settings, the keys acts are signed with and verified against (default: the demo's);
    ``record_acts``: given each tap and scan the acts make, as it is played (a
    :class:`ReadingRecorder`'s ``record_act`` writes it beside the advertisements)."""
    presence = presence or PresenceSettings()
    if clock is None:
        if start is None:
            raise ValueError("give a clock or a start time")
        clock = VirtualClock(start)
    start = start or clock.now()
    store_id = (table.store.id if table.store is not None else None) or "store-001"
    codes = codes or CodeSettings()
    feedback = FeedbackDesk(store_id)
    verifier = Verifier(codes.key_bytes(), clock, skew=codes.skew)
    pipeline = Pipeline.for_presence(
        store_id, table, resolver, presence, verifier=verifier, sent_offer=feedback.lookup
    )
    bindings_before = resolver.bindings
    planned = sorted(acts)
    player = _player(crowd, resolver, codes) if planned else None
    crowd_backend = CrowdBleBackend(crowd, clock, start)
    backend = tee(crowd_backend) if tee is not None else crowd_backend
    # flood defence on the simulation's clock: a store hour in seconds is no flood
    decoder = BeaconDecoder(monotonic=lambda: (clock.now() - start).total_seconds())
    adapter = BleAdapter(backend, decoder)
    result = RunResult(start, planned=planned)

    def handle(decisions: list[Decision]) -> None:
        for decision in decisions:
            result.take(decision, recorder)
            for offer in decision.offers:  # the daemon's desk knows every offer it sent
                feedback.sent(offer.id, decision.event.shopper.token, offer.rule, offer.variant)
            if player is not None:
                player.offered(decision)

    agenda = _Acts(planned, player, pipeline, start, record_acts) if player is not None else None
    wall = time.perf_counter()
    end = await drive(
        adapter,
        pipeline,
        presence,
        clock,
        start,
        handle,
        lambda: start + timedelta(seconds=crowd.end),
        agenda,
    )
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
    result.outages = dict(crowd.outages)
    result.bindings = resolver.bindings - bindings_before
    if player is not None:
        result.acts = player.counts
        result.unlisted_readers = tuple(
            reader.id
            for reader in crowd.store.readers
            if player.counts.by_reader[reader.id]
            and table.zone_for_reader(reader.id) != crowd.store.reader_zone(reader)
        )
    if pipeline.acts is not None:
        result.refused = Counter(pipeline.acts.refused)
    return result


_NEVER = datetime.max.replace(tzinfo=UTC)


class Agenda(Protocol):
    """Readings other than the radio's, due at set instants (shoppers' acts)."""

    @property
    def due(self) -> datetime:
        """When the next one is due (far in the future when none is left)."""
        ...

    def play(self) -> list[Decision]:
        """Put the one due through the pipeline and move on to the next."""
        ...


def play_reading(pipeline: Pipeline, reading: ReaderReading) -> list[Decision]:
    """One tap or scan through ``pipeline``, as the daemon's NFC and scanner adapters hand
    them over (the run's acts and the replay of recorded ones take this one path)."""
    if isinstance(reading, NfcTap):
        return pipeline.on_tap(reading)
    return pipeline.on_scan(reading)


class ReadingsAgenda:
    """Taps and scans made beforehand (a recording's), each due at its own time."""

    def __init__(self, readings: Sequence[ReaderReading], pipeline: Pipeline) -> None:
        self._readings = sorted(readings, key=lambda r: r.at)  # stable: file order at ties
        self._pipeline = pipeline
        self._next = 0
        self.played = 0

    @property
    def due(self) -> datetime:
        return self._readings[self._next].at if self._next < len(self._readings) else _NEVER

    def play(self) -> list[Decision]:
        reading = self._readings[self._next]
        self._next += 1
        self.played += 1
        return play_reading(self._pipeline, reading)


class _Acts:
    def __init__(
        self,
        planned: Sequence[PlannedAct],
        player: ActPlayer,
        pipeline: Pipeline,
        start: datetime,
        record: Callable[[ReaderReading], None] | None = None,
    ) -> None:
        self._planned, self._player, self._pipeline, self._start = planned, player, pipeline, start
        self._record = record
        self._next = 0
        self.due = self._time(0)

    def _time(self, i: int) -> datetime:
        planned = self._planned
        return self._start + timedelta(seconds=planned[i].t) if i < len(planned) else _NEVER

    def play(self) -> list[Decision]:
        decisions: list[Decision] = []
        for reading in self._player.readings(self._planned[self._next], self.due):
            if self._record is not None:
                self._record(reading)
            decisions += play_reading(self._pipeline, reading)
        self._next += 1
        self.due = self._time(self._next)
        return decisions


async def drive(
    adapter: BleAdapter,
    pipeline: Pipeline,
    presence: PresenceSettings,
    clock: Clock,
    start: datetime,
    handle: Callable[[list[Decision]], None],
    last: Callable[[], datetime],
    agenda: Agenda | None = None,
) -> datetime:
    """Put every sighting of ``adapter`` through ``pipeline``, ticked every
    ``presence.tick`` from ``start`` on the readings' own time (a tick first at the same
    instant, as the daemon's ticker runs before a reading stamped with its time), with
    ``agenda``'s readings in time order between them; then tick on from ``last()`` (the
    end of the readings) until exit and visit timeouts have run out, and close the
    remaining visits. Every decision goes to ``handle``. Returns the end instant.

    The simulator's run and the replay of a recording drive the pipeline this one way,
    which is why a recording replays to the journey events of its run."""
    tick = presence.tick
    next_tick = start + tick
    never = _NoAgenda()
    acts: Agenda = agenda if agenda is not None else never

    async def catch_up(until: datetime) -> None:
        nonlocal next_tick
        while True:
            due = acts.due
            if due <= until and due < next_tick:
                if isinstance(clock, VirtualClock) and clock.now() < due:
                    await clock.advance_to(due)  # the verifier checks codes on this clock
                handle(acts.play())
            elif next_tick <= until:
                handle(pipeline.tick(next_tick))
                next_tick += tick
            else:
                return

    async with adapter.backend:
        async for sighting in adapter.readings():
            if next_tick <= sighting.at or acts.due <= sighting.at:
                await catch_up(sighting.at)
            handle(pipeline.on_sighting(sighting))
        # let exit timeouts and visit timeouts run out, as the daemon's ticker would; the
        # backend stays open meanwhile, so a recorder tee still records acts played late
        end = last() + presence.visit_timeout + presence.exit_timeout + 2 * tick
        await catch_up(end)
    if isinstance(clock, VirtualClock) and clock.now() < end:
        await clock.advance_to(end)
    handle(pipeline.close(end))
    return end


class _NoAgenda:
    due = _NEVER

    def play(self) -> list[Decision]:
        return []


def _player(crowd: Crowd, resolver: IdentityResolver, codes: CodeSettings) -> ActPlayer:
    tokens = {
        index: resolver.token_for(s.phone.uuid, s.phone.major, s.phone.install)
        for index, s in crowd.shoppers.items()
    }
    # tag UIDs are hashed as the daemon's NFC adapter hashes them; the key is the run's own
    uid_key = hashlib.sha256(b"firmware_sim nfc tag uid").digest()
    return ActPlayer(crowd.store, crowd.shoppers, tokens, codes, uid_key)


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
    codes: CodeSettings | None = None,
) -> RunResult:
    """A seeded stochastic crowd of ``scenario`` on ``store``, through the pipeline, with
    the acts its crowd parameters plan (:func:`scenario_acts`)."""
    crowd = scenario_crowd(store, scenario, seed)
    acts = scenario_acts(store, scenario, seed, crowd)
    start = SCENARIO_START if clock is None else clock.now()
    return await run_in_process(
        crowd, table, resolver, presence, clock, start, recorder, tee, acts, codes
    )
