"""The store's floor plan as the presence layer needs it: zones, scanners, reference beacons.

The file is the simulator's store format (``firmware_sim/stores/*.toml``): one
file describes a store for both. The product reads the geometry and ignores what
only the simulator uses (affinity, dwell, door, readers, radio, sensitivity...)::

    name = "example"
    width = 40.0                       # metres along x (optional here)
    depth = 25.0                       # metres along y

    [zones.coffee]                     # the rule files' zone id
    polygon = [[3, 12], [10, 12], [10, 18], [3, 18]]
    adjacent = ["bakery"]              # optional: shoppers walk between these directly

    [zones.bakery]
    circle = { center = [33, 19], radius = 3.5 }

    [[scanners]]
    id = "gw-coffee"                   # the scanner id its sightings carry
    position = [6.5, 15.0]
    height = 2.8                       # metres above the floor (default 2.8)

    [[beacons]]                        # optional: fixed reference beacons
    id = "coffee-shelf"
    format = "ibeacon"                 # ibeacon, altbeacon: uuid, major, minor
    uuid = "b9407f30-f5f8-466e-aff9-25556b57fe6d"   # eddystone-uid: namespace, instance
    major = 100
    minor = 1
    position = [3.5, 15.0]
    height = 1.4                       # default 1.5

Two zones are adjacent (a shopper can walk from one straight into the other) when
their shapes come within :data:`ADJACENT_WITHIN_M` of each other, or when either
lists the other under ``adjacent``. A problem is a :class:`ConfigError` reading
``path:line:column: message``.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from proximity.engine.tomlpos import Position, locate, syntax_error
from proximity.errors import ConfigError

Point = tuple[float, float]
ADJACENT_WITHIN_M = 1.5
"""Zones whose shapes come this close share a boundary a shopper walks across."""
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Circle:
    center: Point
    radius: float

    def contains(self, x: float, y: float) -> bool:
        cx, cy = self.center
        return (x - cx) ** 2 + (y - cy) ** 2 <= self.radius * self.radius

    @property
    def centroid(self) -> Point:
        return self.center

    def bounds(self) -> tuple[float, float, float, float]:
        (cx, cy), r = self.center, self.radius
        return cx - r, cy - r, cx + r, cy + r

    def distance_to(self, x: float, y: float) -> float:
        """Metres from (x, y) to the shape (0 inside)."""
        return max(0.0, math.dist(self.center, (x, y)) - self.radius)

    def samples(self) -> tuple[Point, ...]:
        """The centre and six points on a ring at 60 % of the radius."""
        (cx, cy), r = self.center, 0.6 * self.radius
        ring = tuple(
            (cx + r * math.cos(k * math.pi / 3), cy + r * math.sin(k * math.pi / 3))
            for k in range(6)
        )
        return (self.center, *ring)


@dataclass(frozen=True, slots=True)
class Polygon:
    points: tuple[Point, ...]

    def contains(self, x: float, y: float) -> bool:
        """Ray casting; a point on an edge is inside."""
        inside = False
        pts = self.points
        n = len(pts)
        for i in range(n):
            (x1, y1), (x2, y2) = pts[i], pts[(i + 1) % n]
            if _segment_distance((x, y), (x1, y1), (x2, y2)) <= 1e-9:
                return True
            if (y1 > y) != (y2 > y):
                cross = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
                if x < cross:
                    inside = not inside
        return inside

    @property
    def area(self) -> float:
        pts = self.points
        return 0.5 * abs(
            sum(
                pts[i][0] * pts[(i + 1) % len(pts)][1] - pts[(i + 1) % len(pts)][0] * pts[i][1]
                for i in range(len(pts))
            )
        )

    @property
    def centroid(self) -> Point:
        """The centre of mass of the polygon's area (shoelace)."""
        pts = self.points
        a = cx = cy = 0.0
        for i in range(len(pts)):
            (x1, y1), (x2, y2) = pts[i], pts[(i + 1) % len(pts)]
            cross = x1 * y2 - x2 * y1
            a += cross
            cx += (x1 + x2) * cross
            cy += (y1 + y2) * cross
        if abs(a) < 1e-12:
            n = len(pts)
            return sum(p[0] for p in pts) / n, sum(p[1] for p in pts) / n
        return cx / (3 * a), cy / (3 * a)

    def bounds(self) -> tuple[float, float, float, float]:
        xs = [x for x, _ in self.points]
        ys = [y for _, y in self.points]
        return min(xs), min(ys), max(xs), max(ys)

    def distance_to(self, x: float, y: float) -> float:
        if self.contains(x, y):
            return 0.0
        pts = self.points
        return min(
            _segment_distance((x, y), pts[i], pts[(i + 1) % len(pts)]) for i in range(len(pts))
        )

    def samples(self) -> tuple[Point, ...]:
        """The centroid (when inside) and the points of a 3 × 3 grid over the bounds that
        are inside: a handful of places a shopper in the zone can stand."""
        x0, y0, x1, y1 = self.bounds()
        grid = [
            (x0 + (x1 - x0) * fx, y0 + (y1 - y0) * fy)
            for fy in (1 / 6, 1 / 2, 5 / 6)
            for fx in (1 / 6, 1 / 2, 5 / 6)
        ]
        c = self.centroid
        points = [c] if self.contains(*c) else []
        points += [p for p in grid if self.contains(*p) and p != c]
        return tuple(points) or (self.points[0],)


Shape = Circle | Polygon


def shape_distance(a: Shape, b: Shape) -> float:
    """Metres between two shapes (0 when they touch or overlap)."""
    if isinstance(a, Circle) and isinstance(b, Circle):
        return max(0.0, math.dist(a.center, b.center) - a.radius - b.radius)
    if isinstance(a, Circle):
        a, b = b, a
    if isinstance(b, Circle):
        return max(0.0, a.distance_to(*b.center) - b.radius)
    assert isinstance(a, Polygon)
    if any(b.contains(*p) for p in a.points) or any(a.contains(*p) for p in b.points):
        return 0.0
    pa, pb = a.points, b.points
    best = math.inf
    for i in range(len(pa)):
        s1 = (pa[i], pa[(i + 1) % len(pa)])
        for j in range(len(pb)):
            s2 = (pb[j], pb[(j + 1) % len(pb)])
            if _segments_cross(*s1, *s2):
                return 0.0
            best = min(
                best,
                _segment_distance(s1[0], *s2),
                _segment_distance(s1[1], *s2),
                _segment_distance(s2[0], *s1),
                _segment_distance(s2[1], *s1),
            )
    return best


@dataclass(frozen=True, slots=True)
class Zone:
    id: str
    shape: Shape
    name: str | None = None
    declared_adjacent: tuple[str, ...] = ()

    def contains(self, x: float, y: float) -> bool:
        return self.shape.contains(x, y)

    @property
    def centroid(self) -> Point:
        return self.shape.centroid

    def samples(self) -> tuple[Point, ...]:
        return self.shape.samples()


@dataclass(frozen=True, slots=True)
class PlanScanner:
    id: str
    position: Point
    height: float = 2.8


@dataclass(frozen=True, slots=True)
class ReferenceBeacon:
    """A fixed beacon at a known place: what scanners hear of it calibrates them."""

    id: str
    position: Point
    height: float = 1.5
    key: tuple[UUID, int, int] | None = None
    """(uuid, major, minor) as the BLE decoder reports it (None: a frame without an
    identity, such as Eddystone-URL, which cannot be told apart from others)."""
    tx_power: int | None = None
    """Its calibrated power at 1 m, dBm, if the plan gives it (else the frame's)."""


@dataclass(frozen=True, slots=True)
class FloorPlan:
    name: str
    zones: tuple[Zone, ...]
    scanners: tuple[PlanScanner, ...]
    beacons: tuple[ReferenceBeacon, ...] = ()
    width: float | None = None
    depth: float | None = None
    adjacency: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Zone id → the zones a shopper can walk into straight from it (symmetric)."""

    @classmethod
    def build(
        cls,
        name: str,
        zones: Sequence[Zone],
        scanners: Sequence[PlanScanner],
        beacons: Sequence[ReferenceBeacon] = (),
        width: float | None = None,
        depth: float | None = None,
        within_m: float = ADJACENT_WITHIN_M,
    ) -> FloorPlan:
        """A plan with its adjacency computed from the shapes and the declared pairs."""
        adjacency: dict[str, set[str]] = {z.id: set() for z in zones}
        for i, a in enumerate(zones):
            for b in zones[i + 1 :]:
                if shape_distance(a.shape, b.shape) <= within_m:
                    adjacency[a.id].add(b.id)
                    adjacency[b.id].add(a.id)
        for zone in zones:
            for other in zone.declared_adjacent:
                adjacency[zone.id].add(other)
                adjacency[other].add(zone.id)
        return cls(
            name,
            tuple(zones),
            tuple(scanners),
            tuple(beacons),
            width,
            depth,
            {k: frozenset(v) for k, v in adjacency.items()},
        )

    def zone(self, zone_id: str) -> Zone:
        for zone in self.zones:
            if zone.id == zone_id:
                return zone
        raise KeyError(zone_id)

    @property
    def zone_ids(self) -> tuple[str, ...]:
        return tuple(z.id for z in self.zones)

    @property
    def scanner_ids(self) -> frozenset[str]:
        return frozenset(s.id for s in self.scanners)

    def zone_at(self, x: float, y: float) -> str | None:
        """The zone at (x, y), the first listed where zones overlap (None: in no zone)."""
        for zone in self.zones:
            if zone.contains(x, y):
                return zone.id
        return None

    def bounds(self) -> tuple[float, float, float, float]:
        """The floor: (0, 0, width, depth) if given, else what zones and scanners span."""
        if self.width is not None and self.depth is not None:
            return 0.0, 0.0, self.width, self.depth
        boxes = [z.shape.bounds() for z in self.zones]
        boxes += [(*s.position, *s.position) for s in self.scanners]
        return (
            min(b[0] for b in boxes) - 2.0,
            min(b[1] for b in boxes) - 2.0,
            max(b[2] for b in boxes) + 2.0,
            max(b[3] for b in boxes) + 2.0,
        )

    def aisle_samples(self, spacing: float = 2.0) -> tuple[Point, ...]:
        """Points of a grid over the floor that are in no zone: where "elsewhere" is."""
        x0, y0, x1, y1 = self.bounds()
        nx = max(1, round((x1 - x0) / spacing))
        ny = max(1, round((y1 - y0) / spacing))
        points = []
        for j in range(ny):
            for i in range(nx):
                x = x0 + (i + 0.5) * (x1 - x0) / nx
                y = y0 + (j + 0.5) * (y1 - y0) / ny
                if self.zone_at(x, y) is None:
                    points.append((x, y))
        return tuple(points)


# -- loading ----------------------------------------------------------------------------------


class _Problem(Exception):
    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


def load_floor_plan(path: Path) -> FloorPlan:
    """Read a store file as a floor plan; raise :class:`ConfigError` at the first problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ConfigError(f"{path}: cannot read floor plan: {reason}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message, at = syntax_error(exc)
        at = at or Position(1, 1)
        raise ConfigError(f"{path}:{at.line}:{at.column}: TOML syntax error: {message}") from None
    try:
        return parse_floor_plan(data, default_name=path.stem)
    except _Problem as exc:
        pos = locate(text).lookup(exc.loc)
        where = ".".join(str(p) for p in exc.loc)
        raise ConfigError(
            f"{path}:{pos.line}:{pos.column}: {where or 'floor plan'}: {exc.message}"
        ) from None


def parse_floor_plan(data: Mapping[str, Any], default_name: str = "store") -> FloorPlan:
    """A floor plan from a parsed store file (see :func:`load_floor_plan`)."""
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise _Problem(("name",), "must be a non-empty string")
    width = _optional_positive(data, "width")
    depth = _optional_positive(data, "depth")
    zones_data = data.get("zones")
    if not isinstance(zones_data, dict) or not zones_data:
        raise _Problem(("zones",), "a floor plan needs at least one [zones.ID] table")
    zones = [_zone(zone_id, z) for zone_id, z in zones_data.items()]
    ids = {z.id for z in zones}
    for zone in zones:
        for n, other in enumerate(zone.declared_adjacent):
            if other not in ids:
                raise _Problem(
                    ("zones", zone.id, "adjacent", n),
                    f"no zone {other!r} in this plan ({', '.join(sorted(ids))})",
                )
            if other == zone.id:
                raise _Problem(
                    ("zones", zone.id, "adjacent", n), "a zone is not adjacent to itself"
                )
    scanners_data = data.get("scanners")
    if not isinstance(scanners_data, list) or not scanners_data:
        raise _Problem(("scanners",), "a floor plan needs at least one [[scanners]] entry")
    scanners: list[PlanScanner] = []
    for n, s in enumerate(scanners_data):
        scanner = _scanner(n, s)
        if any(scanner.id == other.id for other in scanners):
            raise _Problem(("scanners", n, "id"), f"scanner {scanner.id!r} is listed twice")
        scanners.append(scanner)
    beacons_data = data.get("beacons", [])
    if not isinstance(beacons_data, list):
        raise _Problem(("beacons",), "must be an array of tables ([[beacons]])")
    beacons: list[ReferenceBeacon] = []
    for n, b in enumerate(beacons_data):
        beacon = _beacon(n, b)
        if any(beacon.id == other.id for other in beacons):
            raise _Problem(("beacons", n, "id"), f"beacon {beacon.id!r} is listed twice")
        beacons.append(beacon)
    return FloorPlan.build(name, zones, scanners, beacons, width, depth)


def _optional_positive(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if not _is_number(value) or value <= 0:
        raise _Problem((key,), "must be a positive number of metres")
    return float(value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _point(value: object, loc: tuple[str | int, ...]) -> Point:
    if not isinstance(value, list) or len(value) != 2 or not all(_is_number(v) for v in value):
        raise _Problem(loc, "a point is [x, y] in metres")
    return float(value[0]), float(value[1])


def _zone(zone_id: str, data: object) -> Zone:
    loc: tuple[str | int, ...] = ("zones", zone_id)
    if not _ID.match(zone_id):
        raise _Problem(loc, f"zone id {zone_id!r}: letters, digits, '_', '.', '-' only")
    if not isinstance(data, dict):
        raise _Problem(loc, "a zone is a table with a circle or a polygon")
    if ("circle" in data) == ("polygon" in data):
        raise _Problem(loc, "give exactly one of circle or polygon")
    shape: Shape
    if "circle" in data:
        circle = data["circle"]
        if not isinstance(circle, dict):
            raise _Problem((*loc, "circle"), "circle = { center = [x, y], radius = r }")
        center = _point(circle.get("center"), (*loc, "circle", "center"))
        radius = circle.get("radius")
        if not isinstance(radius, int | float) or not _is_number(radius) or radius <= 0:
            raise _Problem((*loc, "circle", "radius"), "radius must be a positive number")
        shape = Circle(center, float(radius))
    else:
        polygon = data["polygon"]
        if not isinstance(polygon, list) or len(polygon) < 3:
            raise _Problem((*loc, "polygon"), "a polygon needs at least 3 points [[x, y], ...]")
        points = tuple(_point(p, (*loc, "polygon", n)) for n, p in enumerate(polygon))
        problem = polygon_problem(points)
        if problem is not None:
            raise _Problem((*loc, "polygon"), problem)
        shape = Polygon(points)
    name = data.get("name")
    if name is not None and not isinstance(name, str):
        raise _Problem((*loc, "name"), "must be a string")
    adjacent = data.get("adjacent", [])
    if not isinstance(adjacent, list) or not all(isinstance(a, str) for a in adjacent):
        raise _Problem((*loc, "adjacent"), 'a list of zone ids: adjacent = ["bakery"]')
    return Zone(zone_id, shape, name, tuple(adjacent))


def polygon_problem(points: Sequence[Point]) -> str | None:
    """Why ``points`` is not a simple polygon with an area (None: it is one)."""
    if len(points) < 3:
        return "a polygon needs at least 3 points"
    n = len(points)
    for i in range(n):
        if points[i] == points[(i + 1) % n]:
            return f"points {i + 1} and {(i + 1) % n + 1} are the same"
    for i in range(n):
        a1, a2 = points[i], points[(i + 1) % n]
        for j in range(i + 2, n):
            if i == 0 and j == n - 1:
                continue  # the closing edge shares the first point
            b1, b2 = points[j], points[(j + 1) % n]
            if _segments_cross(a1, a2, b1, b2):
                return f"the polygon crosses itself (edges {i + 1} and {j + 1})"
    if Polygon(tuple(points)).area < 1e-9:
        return "the polygon has no area (its points are on one line)"
    return None


def _scanner(n: int, data: object) -> PlanScanner:
    loc: tuple[str | int, ...] = ("scanners", n)
    if not isinstance(data, dict):
        raise _Problem(loc, "a scanner is a table: id, position, height")
    scanner_id = data.get("id")
    if not isinstance(scanner_id, str) or not _ID.match(scanner_id):
        raise _Problem((*loc, "id"), "a scanner id: letters, digits, '_', '.', '-' (1-64)")
    position = _point(data.get("position"), (*loc, "position"))
    height = data.get("height", 2.8)
    if not _is_number(height) or not 0 <= height <= 20:
        raise _Problem((*loc, "height"), "height is metres above the floor, 0 to 20")
    return PlanScanner(scanner_id, position, float(height))


def _beacon(n: int, data: object) -> ReferenceBeacon:
    loc: tuple[str | int, ...] = ("beacons", n)
    if not isinstance(data, dict):
        raise _Problem(loc, "a beacon is a table: id, format, position, ...")
    beacon_id = data.get("id")
    if not isinstance(beacon_id, str) or not _ID.match(beacon_id):
        raise _Problem((*loc, "id"), "a beacon id: letters, digits, '_', '.', '-' (1-64)")
    position = _point(data.get("position"), (*loc, "position"))
    height = data.get("height", 1.5)
    if not _is_number(height) or not 0 <= height <= 20:
        raise _Problem((*loc, "height"), "height is metres above the floor, 0 to 20")
    fmt = data.get("format")
    key: tuple[UUID, int, int] | None = None
    try:
        if fmt in ("ibeacon", "altbeacon"):
            major, minor = data.get("major", 0), data.get("minor", 0)
            for k, v in (("major", major), ("minor", minor)):
                if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 0xFFFF:
                    raise _Problem((*loc, k), f"{k} is 0-65535")
            key = (UUID(str(data.get("uuid"))), major, minor)
        elif fmt == "eddystone-uid":
            namespace, instance = str(data.get("namespace")), str(data.get("instance"))
            if not re.fullmatch(r"[0-9a-fA-F]{20}", namespace):
                raise _Problem((*loc, "namespace"), "an Eddystone namespace is 20 hex digits")
            if not re.fullmatch(r"[0-9a-fA-F]{12}", instance):
                raise _Problem((*loc, "instance"), "an Eddystone instance is 12 hex digits")
            key = (UUID(hex=namespace + instance), 0, 0)
    except ValueError:
        raise _Problem((*loc, "uuid"), "not a UUID") from None
    tx_power = data.get("tx_power")
    if tx_power is not None and (
        not isinstance(tx_power, int) or isinstance(tx_power, bool) or not -100 <= tx_power <= 20
    ):
        raise _Problem((*loc, "tx_power"), "tx_power is the power at 1 m, -100 to 20 dBm")
    return ReferenceBeacon(beacon_id, position, float(height), key, tx_power)


# -- geometry helpers -------------------------------------------------------------------------


def _segment_distance(p: Point, a: Point, b: Point) -> float:
    (px, py), (ax, ay), (bx, by) = p, a, b
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    if length2 == 0:
        return math.dist(p, a)
    t = max(0.0, min(1.0, ((px - ax) * dx + (py - ay) * dy) / length2))
    return math.dist(p, (ax + t * dx, ay + t * dy))


def _orientation(a: Point, b: Point, c: Point) -> float:
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])


def _segments_cross(a1: Point, a2: Point, b1: Point, b2: Point) -> bool:
    """Whether two segments share a point (touching counts)."""
    d1, d2 = _orientation(b1, b2, a1), _orientation(b1, b2, a2)
    d3, d4 = _orientation(a1, a2, b1), _orientation(a1, a2, b2)
    if ((d1 > 0) != (d2 > 0) and d1 != 0 and d2 != 0) and (
        (d3 > 0) != (d4 > 0) and d3 != 0 and d4 != 0
    ):
        return True
    eps = 1e-12
    return (
        (abs(d1) <= eps and _segment_distance(a1, b1, b2) <= 1e-9)
        or (abs(d2) <= eps and _segment_distance(a2, b1, b2) <= 1e-9)
        or (abs(d3) <= eps and _segment_distance(b1, a1, a2) <= 1e-9)
        or (abs(d4) <= eps and _segment_distance(b2, a1, a2) <= 1e-9)
    )
