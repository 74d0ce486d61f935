"""The floor plan the presence layer reads (the simulator's store format)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proximity.errors import ConfigError
from proximity.presence.floorplan import (
    Circle,
    Polygon,
    load_floor_plan,
    polygon_problem,
    shape_distance,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "firmware_sim" / "stores" / "example.toml"

coords = st.floats(-100, 100, allow_nan=False).map(lambda v: round(v, 3))
sizes = st.floats(0.5, 30, allow_nan=False).map(lambda v: round(v, 3))


@st.composite
def rectangles(draw: st.DrawFn) -> Polygon:
    x, y, w, h = draw(coords), draw(coords), draw(sizes), draw(sizes)
    return Polygon(((x, y), (x + w, y), (x + w, y + h), (x, y + h)))


@st.composite
def convex_polygons(draw: st.DrawFn) -> Polygon:
    """A regular-ish convex polygon: points on a circle at increasing angles."""
    cx, cy, r = draw(coords), draw(coords), draw(sizes)
    n = draw(st.integers(3, 9))
    drawn = draw(st.lists(st.floats(0, 2 * math.pi - 0.01), min_size=n, max_size=n))
    angles = sorted({round(a, 2) for a in drawn})
    if len(angles) < 3:
        angles = [0.0, 2.1, 4.2]
    pts = tuple((cx + r * math.cos(a), cy + r * math.sin(a)) for a in angles)
    return Polygon(pts)


@given(rectangles())
def test_rectangle_centroid_is_its_middle_and_inside(rect: Polygon) -> None:
    (x0, y0), (x1, _), (_, y1) = rect.points[0], rect.points[1], rect.points[2]
    cx, cy = rect.centroid
    assert cx == pytest.approx((x0 + x1) / 2)
    assert cy == pytest.approx((y0 + y1) / 2)
    assert rect.contains(cx, cy)


@given(convex_polygons())
def test_convex_polygon_contains_its_centroid_and_samples(poly: Polygon) -> None:
    if poly.area < 1e-3:
        return
    assert poly.contains(*poly.centroid)
    assert all(poly.contains(*p) for p in poly.samples())
    assert all(poly.contains(*p) for p in poly.points)  # vertices are on the edge


@given(coords, coords, sizes, st.floats(0, 2 * math.pi), st.floats(0, 3))
def test_circle_contains_exactly_the_points_within_its_radius(
    cx: float, cy: float, r: float, angle: float, scale: float
) -> None:
    circle = Circle((cx, cy), r)
    d = r * scale
    x, y = cx + d * math.cos(angle), cy + d * math.sin(angle)
    if abs(d - r) > 1e-6:
        assert circle.contains(x, y) == (d < r)
    assert circle.centroid == (cx, cy)
    assert all(circle.contains(*p) for p in circle.samples())


@given(rectangles(), coords, coords)
def test_contains_is_invariant_under_translation(rect: Polygon, dx: float, dy: float) -> None:
    moved = Polygon(tuple((x + dx, y + dy) for x, y in rect.points))
    for px, py in [rect.centroid, (rect.points[0][0] - 1, rect.points[0][1] - 1)]:
        assert moved.contains(px + dx, py + dy) == rect.contains(px, py)


@given(rectangles(), coords, coords)
def test_distance_is_zero_exactly_inside(rect: Polygon, x: float, y: float) -> None:
    assert (rect.distance_to(x, y) == 0) == rect.contains(x, y) or rect.distance_to(x, y) < 1e-9


def test_shape_distances() -> None:
    a = Polygon(((0, 0), (2, 0), (2, 2), (0, 2)))
    b = Polygon(((3, 0), (5, 0), (5, 2), (3, 2)))
    assert shape_distance(a, b) == pytest.approx(1.0)
    assert shape_distance(a, Circle((2.5, 1), 1)) == 0
    assert shape_distance(Circle((0, 0), 1), Circle((5, 0), 1)) == pytest.approx(3.0)
    assert shape_distance(Circle((10, 1), 1), a) == pytest.approx(7.0)


def test_polygon_problems() -> None:
    assert polygon_problem([(0, 0), (1, 0), (1, 1)]) is None
    assert "crosses itself" in (polygon_problem([(0, 0), (2, 2), (2, 0), (0, 2)]) or "")
    assert "no area" in (polygon_problem([(0, 0), (1, 1), (2, 2)]) or "")
    assert "at least 3" in (polygon_problem([(0, 0), (1, 1)]) or "")


def test_the_example_store_reads_as_a_floor_plan() -> None:
    plan = load_floor_plan(EXAMPLE)
    assert plan.name == "example"
    assert plan.zone_ids == ("entrance", "coffee", "bakery", "checkout")
    assert plan.scanner_ids == {"gw-entrance", "gw-coffee", "gw-bakery", "gw-checkout"}
    assert plan.zone_at(6.5, 15.0) == "coffee"
    assert plan.zone_at(20.0, 12.0) is None
    assert [b.id for b in plan.beacons] == ["coffee-shelf", "bakery-wall", "entrance-url"]
    assert plan.beacons[0].key is not None
    assert plan.beacons[0].key[1:] == (100, 1)
    assert plan.beacons[2].key is None  # an Eddystone-URL has no identity
    assert all(not adj for adj in plan.adjacency.values())  # the zones are far apart
    assert plan.aisle_samples()
    assert all(plan.zone_at(*p) is None for p in plan.aisle_samples())


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "store.toml"
    path.write_text(text, encoding="utf-8")
    return path


SCANNER = '\n[[scanners]]\nid = "s1"\nposition = [1.0, 1.0]\n'
CIRCLE = "[zones.a]\ncircle = { center = [0, 0], radius = 1 }\n"


def test_adjacency_from_geometry_and_declared(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
[zones.a]
polygon = [[0, 0], [2, 0], [2, 2], [0, 2]]
[zones.b]
polygon = [[3, 0], [5, 0], [5, 2], [3, 2]]
[zones.c]
circle = { center = [20, 20], radius = 1 }
adjacent = ["a"]
"""
        + SCANNER,
    )
    plan = load_floor_plan(path)
    assert plan.adjacency["a"] == {"b", "c"}
    assert plan.adjacency["b"] == {"a"}
    assert plan.adjacency["c"] == {"a"}
    assert plan.name == "store"  # the file's name when it has none


@pytest.mark.parametrize(
    ("body", "where", "message"),
    [
        ("[zones.a]\npolygon = [[0, 0], [1, 1]]\n" + SCANNER, ":2:11: zones.a.", "at least 3"),
        (
            "[zones.a]\npolygon = [[0, 0], [2, 2], [2, 0], [0, 2]]\n" + SCANNER,
            ":2:11: zones.a.polygon:",
            "crosses itself",
        ),
        (CIRCLE.replace("= 1", "= -1") + SCANNER, "zones.a.circle.radius", "positive"),
        ("[zones.a]\nname = 'x'\n" + SCANNER, ":1:1: zones.a:", "exactly one of circle or"),
        (
            CIRCLE + 'adjacent = ["nope"]\n' + SCANNER,
            "zones.a.adjacent.0",
            "no zone 'nope'",
        ),
        (CIRCLE + SCANNER + SCANNER, ":9:6: scanners.1.id:", "listed twice"),
        (CIRCLE, "scanners", "at least one [[scanners]]"),
        (CIRCLE.replace("[0, 0]", '[0, "x"]') + SCANNER, "zones.a.circle.center", "[x, y]"),
        ("name = 3\n", ":1:8: name:", "non-empty string"),
        ("[zones.a\n", ":1:9: TOML syntax error", "Expected ']'"),
    ],
)
def test_loader_errors_name_the_file_and_place(
    tmp_path: Path, body: str, where: str, message: str
) -> None:
    path = _write(tmp_path, body)
    with pytest.raises(ConfigError) as caught:
        load_floor_plan(path)
    text = str(caught.value)
    assert text.startswith(str(path)), text
    assert where in text, text
    assert message in text, text


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read floor plan"):
        load_floor_plan(tmp_path / "nope.toml")
