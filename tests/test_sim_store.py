"""The simulator's store model: parsing, geometry, and errors at path:line:column."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from firmware_sim.store import StoreError, Zone, builtin_store, load_store

RULE_ZONES = {"entrance", "coffee", "bakery", "checkout"}

MINIMAL = """\
name = "tiny"
width = 10.0
depth = 8.0
door = [5.0, 0.0]

[zones.front]
circle = { center = [5.0, 2.0], radius = 1.5 }

[zones.back]
polygon = [[1.0, 5.0], [4.0, 5.0], [4.0, 7.0], [1.0, 7.0]]
dwell = "2m"

[[scanners]]
id = "gw-front"
position = [5.0, 2.0]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "store.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_example_store_matches_the_example_rules() -> None:
    store = builtin_store()
    assert set(store.zones) == RULE_ZONES
    assert {s.id for s in store.scanners} == {f"gw-{z}" for z in RULE_ZONES}
    for scanner in store.scanners:  # each scanner hangs over its own zone
        assert store.zone_at(scanner.position) == scanner.id.removeprefix("gw-")


def test_a_minimal_store_parses_with_defaults(tmp_path: Path) -> None:
    store = load_store(write(tmp_path, MINIMAL))
    assert store.width == 10.0
    assert store.zones["back"].dwell == 120.0
    assert store.zones["front"].affinity == 0.7
    assert store.scanners[0].sensitivity == -94.0
    assert store.radio.exponent == 2.2


def test_zone_geometry(tmp_path: Path) -> None:
    store = load_store(write(tmp_path, MINIMAL))
    assert store.zone_at((5.0, 2.0)) == "front"
    assert store.zone_at((6.4, 2.0)) == "front"
    assert store.zone_at((6.6, 2.0)) is None
    assert store.zone_at((2.0, 6.0)) == "back"
    assert store.zone_at((4.0, 6.0)) == "back"  # on the edge counts as inside
    assert store.zone_at((4.1, 6.0)) is None
    assert store.zone_at(None) is None
    rng = random.Random(1)
    for _ in range(50):
        assert store.zone_at(store.zones["back"].random_point(rng)) == "back"
        assert store.zone_at(store.random_aisle_point(rng)) is None


def test_a_non_convex_polygon() -> None:
    zone = Zone(polygon=[(0, 0), (4, 0), (4, 4), (2, 1), (0, 4)])
    assert zone.contains((1.0, 0.5))
    assert not zone.contains((2.0, 3.0))  # inside the notch


@pytest.mark.parametrize(
    ("change", "line", "column", "message"),
    [
        (("radius = 1.5", "radius = -1"), 7, 42, "zones.front.circle.radius"),
        (('dwell = "2m"', 'dwell = "soon"'), 11, 9, "zones.back.dwell"),
        (("position = [5.0, 2.0]", "position = [50.0, 2.0]"), 1, 1, "outside the 10 × 8 m floor"),
        (("[zones.back]\n", "[zones.back]\nsize = 3\n"), 10, 1, "zones.back.size: Extra inputs"),
        (
            ("circle = { center = [5.0, 2.0], radius = 1.5 }", 'name = "no shape"'),
            6,
            1,
            "exactly one of circle or polygon",
        ),
        (("width = 10.0", 'width = "wide"'), 2, 9, "width"),
    ],
)
def test_errors_are_located(
    tmp_path: Path, change: tuple[str, str], line: int, column: int, message: str
) -> None:
    path = write(tmp_path, MINIMAL.replace(*change))
    with pytest.raises(StoreError) as caught:
        load_store(path)
    err = caught.value
    assert (err.line, err.column) == (line, column), str(err)
    assert message in err.message
    assert str(err).startswith(f"{path}:{line}:{column}: ")


def test_a_toml_syntax_error_is_located(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("depth = 8.0", "depth = = 8.0"))
    with pytest.raises(StoreError, match=r":3:9: TOML syntax error"):
        load_store(path)


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot read store file"):
        load_store(tmp_path / "nope.toml")


def test_duplicate_scanners_are_refused(tmp_path: Path) -> None:
    text = MINIMAL + '\n[[scanners]]\nid = "gw-front"\nposition = [1.0, 1.0]\n'
    with pytest.raises(StoreError, match="listed twice"):
        load_store(write(tmp_path, text))
