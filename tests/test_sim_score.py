"""Scoring presence against ground truth: properties of the score, and the whole loop."""

from __future__ import annotations

import asyncio
import io
import json
import random
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_sim.__main__ import main
from firmware_sim.crowd import Crowd, Stay, in_store, scripted_shopper, true_stays
from firmware_sim.crowd_backend import CrowdBleBackend
from firmware_sim.harness import demo_resolver, load_table, run_scenario
from firmware_sim.radio import RadioModel
from firmware_sim.scenarios import SCENARIOS
from firmware_sim.score import (
    Observed,
    expected_transitions,
    match_times,
    percentile,
    score,
    wrong_zone_time,
)
from firmware_sim.store import builtin_store
from proximity.adapters.ble.adapter import BleAdapter
from proximity.clock import VirtualClock
from proximity.config import DEMO_APP_UUID
from proximity.readings import BeaconSighting
from tests.factories import T0

THRESHOLDS = {"a": (5.0, 30.0), "b": (20.0,)}
Journey = tuple[dict[str, list[Stay]], dict[str, list[tuple[float, float]]]]


@st.composite
def journeys(draw: st.DrawFn) -> Journey:
    """Shoppers with disjoint true stays (back to back allowed) inside one visit each."""
    truth: dict[str, list[Stay]] = {}
    visits: dict[str, list[tuple[float, float]]] = {}
    for n in range(draw(st.integers(1, 4))):
        t = draw(st.floats(0, 100))
        begin = t
        stays = []
        for _ in range(draw(st.integers(1, 6))):
            t += draw(st.sampled_from([0.0, 0.5, 3.0, 25.0, 60.0]))
            length = draw(st.floats(1.0, 120.0))
            stays.append(Stay(draw(st.sampled_from("abc")), t, t + length))
            t += length
        truth[f"shopper-{n}"] = stays
        visits[f"shopper-{n}"] = [(begin, t + draw(st.floats(0, 30)))]
    return truth, visits


def perfect(truth: dict[str, list[Stay]], shift: float = 0.0) -> list[Observed]:
    return [
        Observed(e.shopper, e.kind, e.zone, e.at + shift, e.threshold)
        for e in expected_transitions(truth, THRESHOLDS, min_stay_s=10.0)
    ]


@given(journeys())
def test_perfect_events_score_perfectly(journey: Journey) -> None:
    truth, visits = journey
    result = score(truth, visits, perfect(truth), THRESHOLDS, tolerance_s=10.0, min_stay_s=10.0)
    for kind in result.kinds.values():
        assert kind.false == 0
        assert kind.missed == 0
        assert kind.precision in (None, 1.0)
        assert kind.recall in (None, 1.0)
    for lat in result.latency.values():
        assert lat.p50 in (None, 0.0)
        assert lat.p99 in (None, 0.0)
    assert result.wrong_zone_s == pytest.approx(0.0, abs=1e-9)


@given(journeys(), st.floats(-9.0, 9.0))
def test_shifting_every_event_shifts_the_latency(journey: Journey, d: float) -> None:
    truth, visits = journey
    result = score(truth, visits, perfect(truth, d), THRESHOLDS, tolerance_s=10.0)
    assert result.kinds["enter"].recall in (None, 1.0)
    assert result.kinds["exit"].precision in (None, 1.0)
    assert all(kind.false == kind.missed == 0 for kind in result.kinds.values())
    for lat in result.latency.values():
        if lat.count:
            assert lat.p50 == pytest.approx(d)
            assert lat.p90 == pytest.approx(d)
            assert lat.p99 == pytest.approx(d)


@given(journeys())
def test_no_events_means_no_precision_and_zero_recall(journey: Journey) -> None:
    truth, visits = journey
    result = score(truth, visits, [], THRESHOLDS, min_stay_s=0.0)
    assert result.kinds["enter"].precision is None
    assert result.kinds["enter"].recall == 0.0
    in_zone = sum(s.end - s.start for stays in truth.values() for s in stays)
    assert result.wrong_zone_s == pytest.approx(in_zone)


def test_events_out_of_tolerance_are_false_and_missed() -> None:
    truth = {"s": [Stay("a", 10.0, 100.0)]}
    visits = {"s": [(0.0, 110.0)]}
    events = [Observed("s", "enter", "a", 40.0), Observed("s", "enter", "b", 10.0)]
    result = score(truth, visits, events, {}, tolerance_s=10.0)
    enter = result.kinds["enter"]
    assert (enter.matched, enter.false, enter.missed) == (0, 2, 1)
    assert result.kinds["exit"].missed == 1


def test_pass_throughs_are_neither_required_nor_wrong() -> None:
    truth = {"s": [Stay("a", 10.0, 13.0), Stay("b", 20.0, 80.0)]}
    visits = {"s": [(0.0, 90.0)]}
    events = [Observed("s", "enter", "a", 11.0), Observed("s", "enter", "b", 21.0)]
    enter = score(truth, visits, events, {}, min_stay_s=10.0).kinds["enter"]
    assert (enter.matched, enter.false, enter.missed, enter.ignored) == (1, 0, 0, 1)


def test_wrong_zone_time_follows_the_last_entered_zone() -> None:
    truth = {"s": [Stay("a", 0.0, 50.0), Stay("b", 50.0, 100.0)]}
    visits = {"s": [(0.0, 100.0)]}
    events = [
        Observed("s", "enter", "a", 0.0),
        Observed("s", "enter", "b", 60.0),  # 10 s late: wrong from 50 to 60
        Observed("s", "exit", "a", 70.0),  # b was entered last: nothing changes
        Observed("s", "exit", "b", 90.0),  # 10 s early: wrong from 90 to 100
    ]
    wrong, total = wrong_zone_time(truth, visits, events)
    assert wrong == pytest.approx(20.0)
    assert total == 100.0


def test_matching_and_percentiles() -> None:
    assert match_times([1.0, 2.0, 50.0], [1.5, 49.0, 80.0], 2.0) == [(0, 0), (2, 1)]
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([0.0, 10.0], 50) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 90) == pytest.approx(3.7)


def test_dwell_transitions_come_from_the_rules_thresholds() -> None:
    truth = {"s": [Stay("a", 0.0, 20.0)]}
    dwell = [e for e in expected_transitions(truth, THRESHOLDS) if e.kind == "dwell"]
    assert [(e.at, e.threshold) for e in dwell] == [(5.0, 5.0)]  # 30 s was not reached


# -- the simulator end to end ------------------------------------------------------------


def test_a_scripted_shopper_has_the_truth_it_was_given() -> None:
    store = builtin_store()
    shopper = scripted_shopper(store, [("entrance", 20), ("coffee", 60), ("checkout", 30)])
    stays = [s for s in true_stays(store, shopper.itinerary) if s.end - s.start >= 10]
    assert [s.zone for s in stays] == ["entrance", "coffee", "checkout"]
    assert stays[1].end - stays[1].start >= 60
    ((arrive, leave),) = in_store(shopper.itinerary)
    assert shopper.itinerary.position(arrive - 1) is None
    assert shopper.itinerary.position(leave) is None


async def test_the_crowd_speaks_bleak_on_a_virtual_clock() -> None:
    store = builtin_store()
    shoppers = [
        scripted_shopper(store, [("coffee", 30)], index=i, arrive=5.0 * i) for i in range(3)
    ]
    crowd = Crowd(store, shoppers, RadioModel(store.radio, random.Random(1)), random.Random(2))
    clock = VirtualClock(T0)
    backend = CrowdBleBackend(crowd, clock)
    adapter = BleAdapter(backend)
    async with backend:
        sightings = [s async for s in adapter.readings()]
    assert all(isinstance(s, BeaconSighting) for s in sightings)
    phones = [s for s in sightings if isinstance(s, BeaconSighting) and s.uuid == DEMO_APP_UUID]
    assert {s.minor & 0x7FFF for s in phones} == {1, 2, 3}
    assert len(phones) < len(sightings)  # the store's fixed beacons are heard too
    assert {s.scanner for s in sightings} <= {sc.id for sc in store.scanners}
    assert [s.at for s in sightings] == sorted(s.at for s in sightings)
    assert clock.now() > T0


def test_a_quiet_store_is_scored_well_through_the_real_pipeline() -> None:
    scenario = SCENARIOS["quiet"].with_crowd(shoppers=8, arrival_window_s=600)
    result = asyncio.run(run_scenario(builtin_store(), scenario, 3, load_table(), demo_resolver()))
    assert result.sightings > 1000
    s = result.score()
    assert s.kinds["enter"].recall is not None
    assert s.kinds["enter"].recall > 0.8
    assert s.kinds["dwell"].recall is not None
    assert s.kinds["dwell"].recall > 0.8
    assert s.wrong_zone is not None
    assert s.wrong_zone < 0.5


def _score_json(tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    out = io.StringIO()
    code = main(
        [
            "score",
            "--scenarios",
            "sparse,noisy",
            "--shoppers",
            "6",
            "--duration",
            "10m",
            "--seed",
            "11",
            "--json",
            str(path),
        ],
        out,
    )
    assert code == 0
    assert "sparse" in out.getvalue()
    return path.read_text(encoding="utf-8")


def test_the_same_seed_gives_identical_json(tmp_path: Path) -> None:
    first = _score_json(tmp_path, "a.json")
    assert first == _score_json(tmp_path, "b.json")
    report = json.loads(first)
    assert set(report["scenarios"]) == {"sparse", "noisy"}
    assert report["rows"][0]["metric"] == "precision"


def test_run_records_journey_events_without_addresses(tmp_path: Path) -> None:
    record = tmp_path / "journey.jsonl"
    out = io.StringIO()
    code = main(
        ["run", "--shoppers", "4", "--duration", "5m", "--seed", "2", "--record", str(record)],
        out,
    )
    assert code == 0
    text = record.read_text(encoding="utf-8")
    lines = [json.loads(line) for line in text.splitlines()]
    assert {"visit.start", "zone.enter", "zone.exit"} <= {line["kind"] for line in lines}
    assert f"recorded {len(lines)} journey events" in out.getvalue()
    # phones' addresses (six hex octets) stay inside the BLE adapter
    assert re.search(r"([0-9A-F]{2}:){5}[0-9A-F]{2}", text) is None
