"""Floor-plan presence: the fused filter and the nearest-scanner comparator, through the
journey tracker and the pipeline."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proximity.config import PresenceSettings, load_settings
from proximity.errors import ConfigError
from proximity.events import EventKind, JourneyEvent
from proximity.journey.tracker import JourneyTracker
from proximity.presence.estimate import ELSEWHERE, Calibration
from proximity.presence.floorplan import (
    FloorPlan,
    PlanScanner,
    Polygon,
    Zone,
    load_floor_plan,
)
from proximity.presence.fused import FusedParams
from proximity.presence.locator import Locator, Method
from proximity.presence.machine import PresenceConfig
from tests.factories import at, make_shopper

EXAMPLE = Path(__file__).resolve().parent.parent / "firmware_sim" / "stores" / "example.toml"
METHODS: tuple[Method, ...] = ("fused", "nearest")


def corridor() -> FloorPlan:
    """Three 4 m rooms side by side along x (a, b, c: a-b and b-c share a wall), a scanner
    over each, and an aisle strip in front of them."""
    zones = [
        Zone(name, Polygon(((x, 4.0), (x + 4.0, 4.0), (x + 4.0, 8.0), (x, 8.0))))
        for name, x in (("a", 0.0), ("b", 4.0), ("c", 8.0))
    ]
    scanners = [PlanScanner(f"s-{z.id}", z.centroid, 2.8) for z in zones]
    scanners.append(PlanScanner("s-aisle", (6.0, 1.0), 2.8))
    return FloorPlan.build("corridor", zones, scanners, width=12.0, depth=8.0)


class Radio:
    """Readings as a log-distance radio with noise would give them (not the simulator's)."""

    def __init__(self, plan: FloorPlan, seed: int, sigma: float = 4.0) -> None:
        self.plan = plan
        self.rng = random.Random(seed)
        self.sigma = sigma

    def rssi(self, where: tuple[float, float], scanner: PlanScanner) -> int | None:
        (x, y), (sx, sy) = where, scanner.position
        d = math.sqrt((x - sx) ** 2 + (y - sy) ** 2 + (scanner.height - 1.2) ** 2)
        value = round(-59 - 22 * math.log10(d) + self.rng.gauss(0, self.sigma))
        return value if value >= -94 else None


def walk(
    tracker: JourneyTracker,
    locator: Locator,
    radio: Radio,
    path: Sequence[tuple[float, float, float]],
    silent: frozenset[str] = frozenset(),
    start: float = 0.0,
) -> list[JourneyEvent]:
    """(x, y, seconds) legs: stand at each point that long, every scanner heard each second
    (staggered), the tracker ticked each second."""
    shopper = make_shopper()
    events: list[JourneyEvent] = []
    t = start
    for x, y, seconds in path:
        end = t + seconds
        while t < end:
            for n, scanner in enumerate(radio.plan.scanners):
                if scanner.id in silent:
                    continue
                rssi = radio.rssi((x, y), scanner)
                moment = at(t + n * 0.1)
                locator.heard(scanner.id, moment)
                if rssi is not None:
                    events += tracker.observe_reading(shopper, scanner.id, rssi, -59, moment)
            t += 1.0
            events += tracker.tick(at(t))
    return events


def tracker_for(
    plan: FloorPlan, method: Method, thresholds: tuple[float, ...] = ()
) -> tuple[JourneyTracker, Locator]:
    locator = Locator(plan, method)
    tracker = JourneyTracker(
        "store-001", PresenceConfig(), lambda zone: thresholds, locator=locator
    )
    return tracker, locator


def zone_events(events: list[JourneyEvent]) -> list[tuple[str, str | None]]:
    return [
        (str(e.kind), e.zone)
        for e in events
        if e.kind in (EventKind.ZONE_ENTER, EventKind.ZONE_EXIT)
    ]


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_a_phone_standing_still_ends_in_its_zone(method: Method, seed: int) -> None:
    plan = load_floor_plan(EXAMPLE)
    tracker, locator = tracker_for(plan, method)
    radio = Radio(plan, seed)
    events = walk(tracker, locator, radio, [(6.5, 15.0, 30)])
    assert zone_events(events)[-1:] == [("zone.enter", "coffee")]
    assert tracker.posterior("s-test-0001") is not None


@settings(max_examples=30, deadline=None)
@given(
    readings=st.lists(
        st.tuples(
            st.sampled_from(["gw-entrance", "gw-coffee", "gw-bakery", "gw-checkout", "nope"]),
            st.integers(-127, 20),
            st.integers(-100, 0),
            st.floats(0, 5),
        ),
        max_size=60,
    )
)
def test_the_posterior_is_a_distribution(readings: list[tuple[str, int, int, float]]) -> None:
    plan = load_floor_plan(EXAMPLE)
    estimator = Locator(plan, "fused").estimator()
    t = 0.0
    for scanner, rssi, tx, gap in readings:
        t += gap
        estimator.observe(scanner, rssi, tx, t)
        posterior = estimator.posterior()
        assert set(posterior) == {*plan.zone_ids, ELSEWHERE}
        assert sum(posterior.values()) == pytest.approx(1.0)
        assert all(0 <= p <= 1 for p in posterior.values())
    estimator.advance(t + 100)
    assert sum(estimator.posterior().values()) == pytest.approx(1.0)
    assert estimator.zone is None  # nothing heard for 100 s: gone


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_silent_scanner_moves_nobody_heard_by_others(method: Method, seed: int) -> None:
    plan = corridor()
    tracker, locator = tracker_for(plan, method)
    radio = Radio(plan, seed)
    events = walk(tracker, locator, radio, [(6.0, 6.0, 30)])
    assert zone_events(events) == [("zone.enter", "b")]
    # the scanner over b goes down; the others still hear the shopper
    events = walk(tracker, locator, radio, [(6.0, 6.0, 60)], silent=frozenset({"s-b"}), start=30)
    assert zone_events(events) == []


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_walking_across_adjacent_zones_enters_and_exits_in_order(method: Method, seed: int) -> None:
    plan = corridor()
    assert plan.adjacency["b"] == {"a", "c"}
    tracker, locator = tracker_for(plan, method, thresholds=(10.0,))
    radio = Radio(plan, seed, sigma=3.0)
    path = [(2.0, 6.0, 30), (6.0, 6.0, 30), (10.0, 6.0, 30)]
    events = walk(tracker, locator, radio, path)
    events += tracker.close_all(at(200))
    assert zone_events(events) == [
        ("zone.enter", "a"),
        ("zone.exit", "a"),
        ("zone.enter", "b"),
        ("zone.exit", "b"),
        ("zone.enter", "c"),
        ("zone.exit", "c"),
    ]
    kinds = [e.kind for e in events]
    assert kinds[0] is EventKind.VISIT_START
    assert kinds[-1] is EventKind.VISIT_END
    dwells = [(e.zone, e.threshold_s) for e in events if e.kind is EventKind.ZONE_DWELL]
    assert dwells == [("a", 10.0), ("b", 10.0), ("c", 10.0)]
    exits = [e.dwell_s for e in events if e.kind is EventKind.ZONE_EXIT]
    assert all(d is not None and 10 <= d <= 40 for d in exits), exits


def test_a_shopper_no_scanner_hears_leaves_after_the_exit_timeout() -> None:
    plan = corridor()
    tracker, locator = tracker_for(plan, "fused")
    events = walk(tracker, locator, Radio(plan, 1), [(6.0, 6.0, 20)])
    assert zone_events(events) == [("zone.enter", "b")]
    events = []
    for second in range(20, 120):
        events += tracker.tick(at(second))
    exit_ = next(e for e in events if e.kind is EventKind.ZONE_EXIT)
    assert timedelta(seconds=14) <= exit_.at - at(20) <= timedelta(seconds=17)
    assert exit_.dwell_s is not None
    assert exit_.dwell_s < 20  # the stay ended when the shopper was last heard
    assert events[-1].kind is EventKind.VISIT_END
    assert tracker.active_visits == 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_shopper_gone_quiet_while_the_scanners_hear_others_has_left_the_store(
    seed: int,
) -> None:
    """Several scanners heard the phone every second; now none does, though each still
    hears other phones: the shopper walked out (or put the phone away) and is out of the
    zone after about four advertisements' silence, not the whole exit timeout."""
    plan = corridor()
    tracker, locator = tracker_for(plan, "fused")
    events = walk(tracker, locator, Radio(plan, seed), [(6.0, 6.0, 20)])
    assert zone_events(events) == [("zone.enter", "b")]
    entered = next(e.at for e in events if e.kind is EventKind.ZONE_ENTER)
    heard_for = (at(20) - entered).total_seconds()  # the last second of readings ends at 20
    events = []
    for second in range(20, 40):
        for scanner in plan.scanners:  # the scanners are alive: they hear someone else
            locator.heard(scanner.id, at(second + 0.5))
        events += tracker.tick(at(second + 1))
    exit_ = next(e for e in events if e.kind is EventKind.ZONE_EXIT)
    assert timedelta(seconds=3) <= exit_.at - at(20) <= timedelta(seconds=6), exit_.at
    # the stay ended at the last reading, not when the silence was judged long enough
    assert exit_.dwell_s is not None
    assert heard_for - 1.5 <= exit_.dwell_s <= heard_for + 0.5, (exit_.dwell_s, heard_for)


def test_calibration_learns_a_scanners_offset_and_exponent() -> None:
    calibration = Calibration(exponent=2.3)
    rng = random.Random(4)
    for _ in range(400):
        d = rng.choice([1.5, 3.0, 6.0, 9.0])
        rssi = round(-62 + 5 - 10 * 2.8 * math.log10(d) + rng.gauss(0, 2))
        calibration.add("s", d, rssi, -62)
    offset, exponent = calibration.params("s")
    assert offset == pytest.approx(5, abs=1.5)
    assert exponent == pytest.approx(2.8, abs=0.3)
    assert calibration.params("other") == (0.0, 2.3)


def test_fused_and_nearest_need_a_floor_plan(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[presence]\nmethod = "fused"\n')
    with pytest.raises(ConfigError, match=r"c.toml:1:1: presence: .*needs the store's floor"):
        load_settings(path)
    path.write_text('[presence]\nmethod = "nearest"\nfloor_plan = "store.toml"\n')
    assert load_settings(path).presence.floor_plan == tmp_path / "store.toml"
    path.write_text('[presence]\nmethod = "closest"\n')
    with pytest.raises(ConfigError, match=r"presence\.method"):
        load_settings(path)
    assert PresenceSettings().method == "threshold"


def test_fused_places_a_simulated_crowd_end_to_end() -> None:
    """Pipeline.for_presence with method "fused" on the example store, a short sparse
    crowd through the simulator's in-process run: enters mostly where the truth is.
    Measured: precision 0.72 (threshold 0.80), recall 1.00 at seed 7 (tolerance 20 s)."""
    import asyncio

    from firmware_sim.harness import demo_resolver, load_table, run_scenario
    from firmware_sim.scenarios import SCENARIOS
    from firmware_sim.store import load_store

    presence = PresenceSettings(method="fused", floor_plan=EXAMPLE)
    scenario = SCENARIOS["sparse"].with_crowd(shoppers=12, arrival_window_s=600)
    result = asyncio.run(
        run_scenario(load_store(EXAMPLE), scenario, 7, load_table(), demo_resolver(), presence)
    )
    enter = result.score().kinds["enter"]
    assert enter.precision is not None
    assert enter.recall is not None
    assert enter.precision >= 0.7, enter
    assert enter.recall >= 0.75, enter
    assert result.counts()["visit.start"] == result.counts()["visit.end"] > 0


def test_config_check_validates_the_floor_plan_against_the_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from proximity.cli.main import main

    config = tmp_path / "gateway.toml"
    config.write_text(f'[presence]\nmethod = "fused"\nfloor_plan = "{EXAMPLE}"\n')
    assert main(["config", "check", str(config)]) == 0
    out = capsys.readouterr().out
    assert "floor plan example: 4 zones, 4 scanners, 3 reference beacons" in out
    # a plan without the rules' bakery zone, and with a polygon that crosses itself
    plan = tmp_path / "store.toml"
    text = EXAMPLE.read_text().replace("[zones.bakery]", "[zones.bread]")
    plan.write_text(text)
    config.write_text('[presence]\nmethod = "nearest"\nfloor_plan = "store.toml"\n')
    assert main(["config", "check", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"{plan}: the rules' zone 'bakery' is not in the floor plan" in err
    plan.write_text(text.replace("[10.0, 18.0], [3.0, 18.0]", "[3.0, 18.0], [10.0, 18.0]"))
    assert main(["config", "check", str(config)]) == 1
    err = capsys.readouterr().err
    line = next(n for n, t in enumerate(text.splitlines(), 1) if t.startswith("polygon = [[3.0"))
    assert f"{plan}:{line}:11: zones.coffee.polygon: the polygon crosses itself" in err


def test_the_scanner_that_heard_a_shopper_best_going_down_holds_their_zone() -> None:
    """Without the hold, the far scanners' weak readings alone let the posterior drift out
    of the zone; liveness tells the silence is the scanner's, not the shopper's."""
    plan = load_floor_plan(EXAMPLE)
    for seed in (1, 2, 3):
        tracker, locator = tracker_for(plan, "fused")
        radio = Radio(plan, seed)
        walk(tracker, locator, radio, [(6.5, 15.0, 30)])
        assert tracker.posterior("s-test-0001") is not None
        events = walk(
            tracker,
            locator,
            radio,
            [(6.5, 15.0, 120)],
            silent=frozenset({"gw-coffee"}),
            start=30,
        )
        assert zone_events(events) == [], seed


def test_with_a_floor_plan_every_scanner_of_the_plan_places_shoppers(tmp_path: Path) -> None:
    """Scanners no rule-file zone lists place shoppers; scanners outside the plan are
    ignored and counted; the plan's reference beacons calibrate and are no shoppers."""
    from uuid import UUID

    from firmware_sim.harness import load_table
    from proximity.identity.resolver import IdentityResolver
    from proximity.pipeline import Pipeline
    from tests.factories import APP_UUID, KEY, make_sighting

    plan = tmp_path / "store.toml"
    plan.write_text(
        "[zones.coffee]\npolygon = [[0, 0], [6, 0], [6, 6], [0, 6]]\n"
        "[zones.bakery]\ncircle = { center = [20, 3], radius = 3 }\n"
        '[[scanners]]\nid = "ceil-1"\nposition = [3.0, 3.0]\n'
        '[[scanners]]\nid = "ceil-2"\nposition = [20.0, 3.0]\n'
        '[[beacons]]\nid = "shelf"\nformat = "ibeacon"\n'
        'uuid = "b9407f30-f5f8-466e-aff9-25556b57fe6d"\nmajor = 100\nminor = 1\n'
        "position = [4.0, 3.0]\n"
    )
    table = load_table()
    assert table.zone_for_scanner("ceil-1") is None  # the rules do not know it
    pipeline = Pipeline.for_presence(
        "store-001",
        table,
        IdentityResolver([APP_UUID], KEY),
        PresenceSettings(method="fused", floor_plan=plan),
    )
    assert pipeline.locator is not None
    assert pipeline.on_sighting(make_sighting(scanner="gw-coffee")) == []
    assert pipeline.ignored["scanner_not_in_plan"] == 1
    shelf = make_sighting(
        uuid=UUID("b9407f30-f5f8-466e-aff9-25556b57fe6d"), major=100, minor=1, scanner="ceil-1"
    )
    assert pipeline.on_sighting(shelf) == []
    assert pipeline.ignored["reference_beacon"] == 1
    assert pipeline.locator.references_heard == 1
    events = []
    for second in range(20):
        for scanner, rssi in (("ceil-1", -64), ("ceil-2", -85)):
            sighting = make_sighting(scanner=scanner, rssi=rssi, at=at(second))
            events += [d.event for d in pipeline.on_sighting(sighting)]
        events += [d.event for d in pipeline.tick(at(second + 1))]
    assert [(str(e.kind), e.zone) for e in events][:2] == [
        ("visit.start", None),
        ("zone.enter", "coffee"),
    ]


def test_rules_lint_knows_the_zones_a_floor_plan_places(tmp_path: Path) -> None:
    from datetime import date

    from proximity.engine.lint import lint
    from proximity.engine.loader import load_rule_files

    rules = Path(__file__).resolve().parent.parent / "rules" / "example-store.toml"
    bare = tmp_path / "rules.toml"
    bare.write_text(
        "\n".join(
            line for line in rules.read_text().splitlines() if not line.startswith("scanners")
        )
    )
    ruleset = load_rule_files([bare])
    unplaced = [str(f) for f in lint(ruleset, date(2026, 12, 1)) if "no scanners" in str(f)]
    assert unplaced
    placed = frozenset(load_floor_plan(EXAMPLE).zone_ids)
    assert not [f for f in lint(ruleset, date(2026, 12, 1), placed) if "no scanners" in str(f)]


def test_inspect_presence_shows_each_zone_change_with_its_posterior(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from firmware_sim.__main__ import main as sim_main
    from proximity.cli.main import main

    recording = tmp_path / "readings.jsonl"
    assert sim_main(["run", "--shoppers", "1", "--record-readings", str(recording)]) == 0
    capsys.readouterr()
    config = tmp_path / "gateway.toml"
    config.write_text(f'[presence]\nmethod = "fused"\nfloor_plan = "{EXAMPLE}"\n')
    assert main(["inspect", "presence", "--config", str(config), "--json", str(recording)]) == 0
    out = capsys.readouterr().out.splitlines()
    lines = [json.loads(line) for line in out if line.startswith("{")]
    changes = [line for line in lines if line.get("kind") in ("zone.enter", "zone.exit")]
    assert changes
    assert changes[0]["kind"] == "zone.enter"
    first = changes[0]["posterior"]
    assert set(first) == {"entrance", "coffee", "bakery", "checkout", "elsewhere"}
    assert max(first, key=first.get) == changes[0]["zone"]
    assert all("phone_offset_db" not in line for line in changes)  # a scanner per zone
    config.write_text("[presence]\n")
    assert main(["inspect", "presence", "--config", str(config), str(recording)]) == 2


def hall() -> FloorPlan:
    """The three rooms of :func:`corridor` along the back of a hall 8 m deep, a scanner over
    each room and two over the hall."""
    zones = [
        Zone(name, Polygon(((x, 8.0), (x + 4.0, 8.0), (x + 4.0, 12.0), (x, 12.0))))
        for name, x in (("a", 0.0), ("b", 4.0), ("c", 8.0))
    ]
    scanners = [PlanScanner(f"s-{z.id}", z.centroid, 2.8) for z in zones]
    scanners += [PlanScanner("s-hall-1", (3.0, 3.0), 2.8), PlanScanner("s-hall-2", (9.0, 3.0), 2.8)]
    return FloorPlan.build("hall", zones, scanners, width=12.0, depth=12.0)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_fused_follows_a_shopper_out_of_a_zone_into_the_aisle(seed: int) -> None:
    """The aisles are cells of their own: a shopper who steps out of b into the hall is
    decided out within seconds, not kept in b while their readings still look more like
    b than like the average of the whole hall (a single "elsewhere" state did that)."""
    plan = hall()
    tracker, locator = tracker_for(plan, "fused")
    radio = Radio(plan, seed)
    events = walk(tracker, locator, radio, [(6.0, 10.0, 30)])
    assert zone_events(events) == [("zone.enter", "b")]
    events = walk(tracker, locator, radio, [(6.0, 4.0, 30)], start=30)
    assert zone_events(events) == [("zone.exit", "b")]
    exit_ = next(e for e in events if e.kind is EventKind.ZONE_EXIT)
    assert exit_.at - at(30) <= timedelta(seconds=8), exit_.at - at(30)


def ceiling(scanners_per_side: int) -> FloorPlan:
    """The three rooms of :func:`hall` under a square grid of ceiling scanners."""
    rooms = hall()
    n = scanners_per_side
    grid = [
        PlanScanner(f"c-{i}-{j}", ((i + 0.5) * 12.0 / n, (j + 0.5) * 12.0 / n), 2.8)
        for i in range(n)
        for j in range(n)
    ]
    return FloorPlan.build("ceiling", rooms.zones, grid, width=12.0, depth=12.0)


def test_readings_count_for_less_where_many_scanners_hear_each_advertisement() -> None:
    """Up to ``temper_scanners`` in range, each reading is tempered by ``temper``; beyond,
    by ``temper · √(temper_scanners / in range)``, so one advertisement heard by many
    scanners does not outweigh everything before it."""
    base = FusedParams()
    few = Locator(corridor(), "fused").fused
    assert few.in_range == pytest.approx(4.0)  # 12 m by 8 m: every scanner in range
    assert few.temper == base.temper

    dense = Locator(ceiling(9), "fused").fused  # 81 scanners over 12 m by 12 m
    assert dense.in_range == pytest.approx(81.0)
    assert dense.temper == pytest.approx(base.temper * math.sqrt(base.temper_scanners / 81.0))

    # two rooms 150 m apart: a phone is in range of one scanner, or none between them
    rooms = [
        Zone(name, Polygon(((x, 0.0), (x + 4.0, 0.0), (x + 4.0, 4.0), (x, 4.0))))
        for name, x in (("a", 0.0), ("b", 150.0))
    ]
    apart = [PlanScanner(f"s-{z.id}", z.centroid, 2.8) for z in rooms]
    far = Locator(FloorPlan.build("far", rooms, apart, width=154.0, depth=4.0), "fused").fused
    assert far.in_range < 1.0
    assert far.temper == base.temper


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), louder=st.integers(-5, 5))
def test_fused_learns_how_much_louder_a_phone_is_than_the_others(seed: int, louder: int) -> None:
    """Two phones standing in different rooms, one radiating ``louder`` dB more than it
    claims: under nine ceiling scanners the filter learns the difference (within 1.5 dB)
    and still places both in their rooms."""
    plan = ceiling(3)
    locator = Locator(plan, "fused")
    assert locator.fused.learn_offset
    radio = Radio(plan, seed)
    phones = {
        "plain": ((2.0, 10.0), 0, locator.estimator()),
        "loud": ((10.0, 10.0), louder, locator.estimator()),
    }
    for tick in range(120):
        for where, extra, estimator in phones.values():
            for scanner in plan.scanners:
                rssi = radio.rssi(where, scanner)
                if rssi is not None:
                    estimator.observe(scanner.id, rssi + extra, -59, tick * 1.0)
    plain, loud = (phones[k][2] for k in ("plain", "loud"))
    assert loud.offset - plain.offset == pytest.approx(louder, abs=1.5)
    assert (plain.zone, loud.zone) == ("a", "c")


def test_with_a_scanner_per_zone_no_offset_is_learnt() -> None:
    """Four scanners in range (the example store): a louder phone looks like a nearer one,
    so the filter does not try to tell them apart."""
    plan = load_floor_plan(EXAMPLE)
    locator = Locator(plan, "fused")
    assert not locator.fused.learn_offset
    estimator = locator.estimator()
    radio = Radio(plan, 1)
    for tick in range(60):
        for scanner in plan.scanners:
            rssi = radio.rssi((6.5, 15.0), scanner)
            if rssi is not None:
                estimator.observe(scanner.id, rssi + 6, -59, float(tick))
    assert estimator.offset == 0.0


def test_inspect_presence_shows_the_phone_offset_where_fused_learns_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """15 ceiling scanners in range (the grid store): each zone change says how much louder
    than the store's other phones the phone is heard (the example store, with a scanner per
    zone, learns and shows none: the test above)."""
    import json

    from firmware_sim.__main__ import main as sim_main
    from proximity.cli.main import main

    grid = EXAMPLE.parent / "grid.toml"
    recording = tmp_path / "readings.jsonl"
    args = ["run", "--store", str(grid), "--shoppers", "1", "--duration", "10m"]
    assert sim_main([*args, "--record-readings", str(recording)]) == 0
    capsys.readouterr()
    config = tmp_path / "gateway.toml"
    config.write_text(f'[presence]\nmethod = "fused"\nfloor_plan = "{grid}"\n')
    assert main(["inspect", "presence", "--config", str(config), "--json", str(recording)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert lines
    assert all(-6 <= line["phone_offset_db"] <= 6 for line in lines)
    assert main(["inspect", "presence", "--config", str(config), str(recording)]) == 0
    assert " dB)" in capsys.readouterr().out


@pytest.mark.parametrize("method", METHODS)
def test_ticked_in_slices_with_readings_between_each_visit_stays_in_time_order(
    method: Method,
) -> None:
    """The daemon's tick in slices, one visit each, and between two slices a shopper's
    readings of just after the tick's time (as the loop hands them over meanwhile): every
    visit's events keep their time order, and each shopper still walks a, b, c."""
    plan = corridor()
    tracker, locator = tracker_for(plan, method, thresholds=(10.0,))
    radio = Radio(plan, 7, sigma=3.0)
    shoppers = [make_shopper(token=f"s-test-{n:04d}") for n in range(4)]
    events: list[JourneyEvent] = []

    def hear(n: int, second: int) -> None:
        start = 2 * n  # each shopper two seconds after the one before
        leg = (second - start) // 30
        if not 0 <= leg < 3:
            return
        where = ((2.0, 6.0), (6.0, 6.0), (10.0, 6.0))[leg]
        for k, scanner in enumerate(plan.scanners):
            moment = at(second + 0.01 + 0.1 * k)  # after the tick at ``second``
            locator.heard(scanner.id, moment)
            rssi = radio.rssi(where, scanner)
            if rssi is not None:
                events.extend(tracker.observe_reading(shoppers[n], scanner.id, rssi, -59, moment))

    for second in range(130):
        now = at(second)
        heard = set()
        for k, part in enumerate(tracker.tick_in_slices(now, 1)):
            events.extend(part)
            n = (second + k) % len(shoppers)  # someone is heard between two slices
            hear(n, second)
            heard.add(n)
        for n in range(len(shoppers)):
            if n not in heard:
                hear(n, second)
    events += tracker.close_all(at(200))
    by_visit: dict[str, list[JourneyEvent]] = {}
    for e in events:
        by_visit.setdefault(e.visit, []).append(e)
    assert len(by_visit) == len(shoppers)
    for visit_events in by_visit.values():
        times = [e.at for e in visit_events]
        assert times == sorted(times), [(str(e.kind), e.zone, e.at) for e in visit_events]
        entered = [zone for kind, zone in zone_events(visit_events) if kind == "zone.enter"]
        assert list(dict.fromkeys(entered)) == ["a", "b", "c"], entered  # a flap may repeat
        assert zone_events(visit_events)[-1] == ("zone.exit", "c")
