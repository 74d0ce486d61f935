"""The simulator's ceiling-grid stores (grid, aisles, open plan) and the rule table their
geometry gives them (firmware_sim.zoning)."""

from __future__ import annotations

import io
import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_sim.__main__ import main
from firmware_sim.store import BUILTIN_STORES, Circle, Zone, builtin_store
from firmware_sim.zoning import GENERATED, distance_to_zone, scanner_zones, table_for

GRID_STORES = ("grid", "aisles", "open_plan")


@pytest.mark.parametrize("name", GRID_STORES)
def test_grid_stores_load_with_a_ceiling_grid_not_aligned_to_zones(name: str) -> None:
    store = builtin_store(name)
    assert len(store.scanners) >= 10
    assert store.beacons, "reference beacons at known positions"
    centres = {zone.centre() for zone in store.zones.values()}
    assert not centres & {s.position for s in store.scanners}
    # most scanners hang over no zone at all
    assert sum(store.zone_at(s.position) is None for s in store.scanners) > len(store.scanners) / 2


def test_the_grid_store_has_the_example_stores_zones() -> None:
    example, grid = builtin_store("example"), builtin_store("grid")
    assert grid.zones == example.zones
    assert grid.door == example.door
    assert not {s.id for s in grid.scanners} & {s.id for s in example.scanners}


def test_aisles_share_their_walls() -> None:
    store = builtin_store("aisles")
    aisles = [store.zones[f"aisle-{n}"] for n in range(1, 5)]
    for left, right in itertools.pairwise(aisles):
        assert left.bounds()[2] == right.bounds()[0]  # one aisle's right wall is the next's left
        assert right.bounds()[0] - left.bounds()[0] == 2.5


def test_the_open_plan_store_is_large() -> None:
    store = builtin_store("open_plan")
    assert store.width * store.depth >= 80 * 50
    assert len(store.zones) >= 8
    assert len(store.scanners) >= 20


@pytest.mark.parametrize("name", ["example", *GRID_STORES])
def test_every_zone_gets_scanners_and_no_scanner_two_zones(name: str) -> None:
    store = builtin_store(name)
    zones = scanner_zones(store)
    assert set(zones) == set(store.zones)
    assert all(zones.values())
    placed = [s for scanners in zones.values() for s in scanners]
    assert len(placed) == len(set(placed))
    for zone, scanners in zones.items():  # a scanner inside a zone is that zone's
        for s in store.scanners:
            if store.zone_at(s.position) == zone:
                assert s.id in scanners


def test_the_example_store_keeps_its_rule_file_and_grids_get_generated_rules() -> None:
    _, source = table_for(builtin_store("example"), None)
    assert source.endswith("example-store.toml")
    table, source = table_for(builtin_store("grid"), None)
    assert source == GENERATED
    assert table.zone_for_scanner("ceil-b1") == "coffee"
    assert table.dwell_thresholds("bakery") == (30.0,)


@given(st.floats(0, 20), st.floats(0, 20))
def test_distance_to_a_zone_is_zero_inside_and_the_gap_outside(x: float, y: float) -> None:
    square = Zone(polygon=[(5.0, 5.0), (10.0, 5.0), (10.0, 10.0), (5.0, 10.0)])
    circle = Zone(circle=Circle(center=(10.0, 10.0), radius=3.0))
    gap_x, gap_y = max(5.0 - x, 0.0, x - 10.0), max(5.0 - y, 0.0, y - 10.0)
    assert distance_to_zone(square, (x, y)) == pytest.approx(math.hypot(gap_x, gap_y), abs=1e-9)
    assert distance_to_zone(circle, (x, y)) == pytest.approx(
        max(0.0, math.dist((x, y), (10.0, 10.0)) - 3.0), abs=1e-9
    )


@pytest.mark.parametrize("name", GRID_STORES)
def test_run_places_shoppers_on_each_grid_store(name: str) -> None:
    out = io.StringIO()
    path = BUILTIN_STORES / f"{name}.toml"
    code = main(["run", "--store", str(path), "--shoppers", "3", "--duration", "3m"], out)
    assert code == 0
    text = out.getvalue()
    assert GENERATED in text
    assert "zone.enter" in text
