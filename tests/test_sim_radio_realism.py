"""Radio realism for presence scoring: phones of different tx power, scanners that go down."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim.crowd import Crowd, CrowdParams, make_crowd
from firmware_sim.harness import scenario_crowd, seeded
from firmware_sim.radio import RadioModel
from firmware_sim.scenarios import SCENARIOS, Outage
from firmware_sim.store import builtin_store

SMALL = CrowdParams(shoppers=6, arrival_window_s=120.0)


def crowd(params: CrowdParams, seed: int = 5) -> list[tuple[int, float, tuple[float, ...]]]:
    store = builtin_store()
    radio = RadioModel(store.radio, random.Random(seed))
    return [
        (s.phone.index, s.phone.offset_db, tuple(seg.start for seg in s.itinerary.segments))
        for s in make_crowd(store, params, random.Random(seed), radio)
    ]


@given(st.floats(0.5, 10.0), st.integers(0, 1000))
@settings(max_examples=25, deadline=None)
def test_tx_power_spread_offsets_phones_and_changes_nothing_else(spread: float, seed: int) -> None:
    plain = crowd(SMALL, seed)
    mixed = crowd(SMALL.model_copy(update={"tx_power_spread_db": spread}), seed)
    assert [(i, times) for i, _, times in plain] == [(i, times) for i, _, times in mixed]
    deltas = [m[1] - p[1] for p, m in zip(plain, mixed, strict=True)]
    assert all(-spread <= d <= spread for d in deltas)
    assert len(set(deltas)) == len(deltas)  # drawn per shopper


def test_no_spread_draws_nothing() -> None:
    assert crowd(SMALL) == crowd(SMALL.model_copy(update={"tx_power_spread_db": 0.0}))


def heard(outages: dict[str, tuple[float, float]]) -> list[tuple[float, str, int]]:
    store = builtin_store()
    shoppers = make_crowd(store, SMALL, random.Random(3))
    radio = RadioModel(store.radio, random.Random(4))
    c = Crowd(store, shoppers, radio, random.Random(5), outages)
    return [(h.t, h.scanner, h.rssi) for h in c.heard()]


def test_a_scanner_that_is_down_hears_nothing_and_the_others_hear_as_before() -> None:
    window = (30.0, 90.0)
    before = heard({})
    during = heard({"gw-coffee": window})
    expected = [h for h in before if not (h[1] == "gw-coffee" and window[0] <= h[0] < window[1])]
    assert during == expected
    assert len(during) < len(before)


def test_an_unknown_scanner_cannot_go_down() -> None:
    with pytest.raises(ValueError, match="no scanner gw-nowhere"):
        heard({"gw-nowhere": (0.0, 1.0)})


@pytest.mark.parametrize("store_name", ["example", "grid"])
def test_node_failure_picks_a_quarter_of_the_scanners_per_seed(store_name: str) -> None:
    store = builtin_store(store_name)
    scenario = SCENARIOS["node_failure"]
    down = scenario.outages(store, seeded(1, "x"))
    assert len(down) == max(1, round(len(store.scanners) / 4))
    assert set(down.values()) == {(900.0, 1800.0)}
    assert down == scenario.outages(store, seeded(1, "x"))
    small = scenario.with_crowd(shoppers=2, arrival_window_s=600)
    assert small.outage == scenario.outage
    assert set(scenario_crowd(store, small, 1).outages.values()) == {(150.0, 300.0)}


def test_an_outage_is_validated() -> None:
    with pytest.raises(ValueError, match="invalid outage"):
        Outage(share=0.0, start=0.0, duration=0.5)
