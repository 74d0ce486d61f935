"""The simulated store: a floor plan in metres, named zones, and where the scanners hang.

A store file (TOML, examples in ``firmware_sim/stores/``)::

    name = "example"
    width = 30.0                 # metres along x
    depth = 20.0                 # metres along y
    door = [15.0, 0.0]           # where shoppers come in and leave

    [zones.coffee]               # named as in the rule file's [zones]
    polygon = [[2, 8], [9, 8], [9, 14], [2, 14]]

    [zones.bakery]
    circle = { center = [24, 14], radius = 3.5 }

    [[scanners]]
    id = "gw-coffee"             # the scanner id the rule file's zones list
    position = [5.5, 11]
    height = 2.8                 # metres above the floor
    sensitivity = -94            # dBm: quieter packets are not heard

    [[beacons]]                  # optional: fixed beacons (firmware_sim.beacons.FixedBeacon)
    id = "shelf-coffee"          # a name; the beacon's address is derived from it
    format = "ibeacon"           # ibeacon, altbeacon, eddystone-uid, eddystone-url, eddystone-tlm
    position = [4.0, 13.0]
    height = 1.5                 # metres above the floor (default 1.5)
    uuid = "…"                   # ibeacon, altbeacon: the proximity UUID / id1 (required)
    major = 1                    # ibeacon, altbeacon: 0-65535 (default 0)
    minor = 7
    interval = "1s"              # advertising interval, 20 ms to 10.24 s (default 1 s)
    tx_power = -59               # dBm at 1 m (Eddystone frames carry it +41, at 0 m)

    [[beacons]]
    id = "bakery-uid"
    format = "eddystone-uid"     # eddystone-uid: namespace (20 hex) and instance (12 hex)
    namespace = "…"              # eddystone-url: url (17 bytes at most, encoded)
    instance = "…"               # eddystone-tlm: telemetry only, no identity keys
    position = [33.0, 22.0]
    tlm_every = 10               # eddystone-uid/-url: every Nth frame is TLM (default 10)
    battery_mv = 3000            # TLM: battery at the start, draining
    battery_drain_mv_per_day = 2 #   this much a day
    temperature = 21.0           # TLM: mean °C, swinging ±1.5 °C over a day
    uptime = "3d"                # TLM: powered this long before the run (uptime, ADV_CNT)

    [[readers]]                  # optional: NFC readers and code scanners shoppers act at
    id = "till-1"                # the reader id the rule file's zones list under readers
    kind = "qr"                  # nfc (a tap of the phone or a tag) or qr (a code scanned)
    role = "till"                # till: check-ins and coupons; cart-dock: carts bound
    position = [34.0, 2.0]
    zone = "checkout"            # optional: the zone it stands in (checked against position)

    [radio]                      # optional: this floor's radio (firmware_sim.radio.RadioParams)
    exponent = 2.2

Zones should not overlap; where they do, the first one in the file wins. A key a
beacon's format does not take (a ``url`` on an iBeacon), or a missing one, is an
error, as is anything off the floor or an id used twice. A reader stands in a
zone (the rule file places its acts by the zone that lists it), so a reader in no
zone, or not in the zone it names, is an error too. A problem is reported as
``path:line:column: message``.

Fixed beacons share the air with the shoppers' phones but draw their timing and
their radio from generators of their own, so declaring a beacon leaves every
shopper's advertisements and RSSI (and so the presence scores) as they were.
"""

from __future__ import annotations

import math
import random
import tomllib
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from firmware_sim.beacons import FixedBeacon
from firmware_sim.radio import RadioParams
from firmware_sim.walk import Seconds
from proximity.engine.tomlpos import Position, locate, syntax_error

BUILTIN_STORES = Path(__file__).parent / "stores"
EXAMPLE_STORE = BUILTIN_STORES / "example.toml"

Point = tuple[float, float]


class StoreError(ValueError):
    """A store file is unreadable or invalid, located as ``path:line:column``."""

    def __init__(self, path: Path | str, line: int, column: int, message: str) -> None:
        super().__init__(f"{path}:{line}:{column}: {message}")
        self.path = Path(path)
        self.line = line
        self.column = column
        self.message = message


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Circle(_Model):
    center: Point
    radius: float = Field(gt=0)


class Zone(_Model):
    name: str | None = None
    """A human name (the rule file has the authoritative one)."""
    circle: Circle | None = None
    polygon: list[Point] | None = Field(default=None, min_length=3)
    affinity: float = Field(default=0.7, ge=0, le=1)
    """The share of shoppers of a stochastic crowd who stop in this zone."""
    dwell: Seconds = 45.0
    """The median stay of those who stop (a duration: "45s", "2m", or seconds)."""
    dwell_sigma: float = Field(default=0.5, ge=0, le=3)
    """Spread of stays: σ of the lognormal (0.5: most stays within ×0.4–×2.7 of the median)."""

    @model_validator(mode="after")
    def _one_shape(self) -> Self:
        if (self.circle is None) == (self.polygon is None):
            raise ValueError("give exactly one of circle or polygon")
        return self

    def contains(self, p: Point) -> bool:
        if self.circle is not None:
            (cx, cy), r = self.circle.center, self.circle.radius
            return (p[0] - cx) ** 2 + (p[1] - cy) ** 2 <= r * r
        assert self.polygon is not None
        return _in_polygon(p, self.polygon)

    def bounds(self) -> tuple[float, float, float, float]:
        """(min x, min y, max x, max y)."""
        if self.circle is not None:
            (cx, cy), r = self.circle.center, self.circle.radius
            return cx - r, cy - r, cx + r, cy + r
        assert self.polygon is not None
        xs = [x for x, _ in self.polygon]
        ys = [y for _, y in self.polygon]
        return min(xs), min(ys), max(xs), max(ys)

    def centre(self) -> Point:
        if self.circle is not None:
            return self.circle.center
        assert self.polygon is not None
        n = len(self.polygon)
        return sum(x for x, _ in self.polygon) / n, sum(y for _, y in self.polygon) / n

    def random_point(self, rng: random.Random, margin: float = 0.5) -> Point:
        """A point inside the zone, at least ``margin`` metres from its edge when it can."""
        x0, y0, x1, y1 = self.bounds()
        for _ in range(200):
            p = (rng.uniform(x0, x1), rng.uniform(y0, y1))
            if self.contains(p) and all(
                self.contains((p[0] + dx, p[1] + dy))
                for dx, dy in ((margin, 0), (-margin, 0), (0, margin), (0, -margin))
            ):
                return p
        return self.centre()


class Scanner(_Model):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    position: Point
    height: float = Field(default=2.8, ge=0, le=20)
    """Metres above the floor (ceiling-mounted gateways sit at 2.5–3.5 m)."""
    sensitivity: float = Field(default=-94.0, ge=-120, le=-40)
    """Receiver sensitivity in dBm: packets arriving weaker are not decoded."""


class ReaderKind(StrEnum):
    NFC = "nfc"
    """An NFC reader: the phone (the app's check-in or coupon code) or a tag is tapped."""
    QR = "qr"
    """A code scanner or camera: the phone's screen or a printed label is scanned."""


class ReaderRole(StrEnum):
    TILL = "till"
    """At a checkout: shoppers check in and have their coupons redeemed while paying."""
    CART_DOCK = "cart-dock"
    """Where carts and baskets are taken: the cart's code and the shopper's check-in, read
    together, bind the cart's beacon to the shopper."""


class Reader(_Model):
    """An NFC reader or code scanner shoppers act at (one ``[[readers]]`` table)."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """The reader's id, as the rule file's zones list it under ``readers``."""
    kind: ReaderKind
    role: ReaderRole = ReaderRole.TILL
    position: Point
    zone: str | None = None
    """The zone it stands in; default: the zone at ``position`` (it must be in one)."""


class _LocatedError(ValueError):
    """A problem found across a store's tables, with the key path it belongs to (so a
    store file reports it at its line, not at the top of the file)."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


class Store(_Model):
    name: str = Field(min_length=1)
    width: float = Field(gt=0, le=1000)
    depth: float = Field(gt=0, le=1000)
    door: Point = (0.0, 0.0)
    zones: dict[str, Zone] = Field(min_length=1)
    scanners: list[Scanner] = Field(min_length=1)
    radio: RadioParams = Field(default_factory=RadioParams)
    beacons: list[FixedBeacon] = Field(default_factory=list)
    readers: list[Reader] = Field(default_factory=list)

    @model_validator(mode="after")
    def _inside(self) -> Self:
        def check(p: Point, what: str) -> None:
            if not (0 <= p[0] <= self.width and 0 <= p[1] <= self.depth):
                raise ValueError(
                    f"{what} at ({p[0]:g}, {p[1]:g}) is outside the "
                    f"{self.width:g} × {self.depth:g} m floor"
                )

        check(self.door, "the door")
        for name, zone in self.zones.items():
            x0, y0, x1, y1 = zone.bounds()
            check((x0, y0), f"zone {name!r}")
            check((x1, y1), f"zone {name!r}")
        seen: set[str] = set()
        for scanner in self.scanners:
            check(scanner.position, f"scanner {scanner.id!r}")
            if scanner.id in seen:
                raise ValueError(f"scanner {scanner.id!r} is listed twice")
            seen.add(scanner.id)
        beacons: set[str] = set()
        for beacon in self.beacons:
            check(beacon.position, f"beacon {beacon.id!r}")
            if beacon.id in beacons:
                raise ValueError(f"beacon {beacon.id!r} is listed twice")
            beacons.add(beacon.id)
        self._check_readers()
        return self

    def _check_readers(self) -> None:
        readers: set[str] = set()
        for n, reader in enumerate(self.readers):
            x, y = reader.position
            if reader.id in readers:
                raise _LocatedError(("readers", n, "id"), f"reader {reader.id!r} is listed twice")
            readers.add(reader.id)
            if not (0 <= x <= self.width and 0 <= y <= self.depth):
                raise _LocatedError(
                    ("readers", n, "position"),
                    f"reader {reader.id!r} at ({x:g}, {y:g}) is outside the "
                    f"{self.width:g} × {self.depth:g} m floor",
                )
            here = self.zone_at(reader.position)
            if reader.zone is not None and reader.zone not in self.zones:
                known = ", ".join(self.zones)
                raise _LocatedError(
                    ("readers", n, "zone"),
                    f"reader {reader.id!r}: no zone {reader.zone!r} in this store ({known})",
                )
            if reader.zone is not None and here != reader.zone:
                where = "in no zone" if here is None else f"in zone {here!r}"
                raise _LocatedError(
                    ("readers", n, "position"),
                    f"reader {reader.id!r} at ({x:g}, {y:g}) is {where}, not in {reader.zone!r}",
                )
            if here is None:
                raise _LocatedError(
                    ("readers", n, "position"),
                    f"reader {reader.id!r} at ({x:g}, {y:g}) is in no zone: a reader stands "
                    "in the zone whose readers the rule file lists it under",
                )

    def reader_zone(self, reader: Reader) -> str:
        """The zone ``reader`` stands in (validated: every reader stands in one)."""
        zone = reader.zone or self.zone_at(reader.position)
        assert zone is not None
        return zone

    def zone_at(self, p: Point | None) -> str | None:
        """The zone a shopper standing at ``p`` is in (None: an aisle, or outside)."""
        if p is None:
            return None
        for name, zone in self.zones.items():
            if zone.contains(p):
                return name
        return None

    def random_aisle_point(self, rng: random.Random) -> Point:
        """A point on the floor in no zone (where shoppers browse between zones)."""
        for _ in range(500):
            p = (rng.uniform(0.5, self.width - 0.5), rng.uniform(0.5, self.depth - 0.5))
            if self.zone_at(p) is None:
                return p
        return self.door

    def scanner(self, scanner_id: str) -> Scanner:
        for scanner in self.scanners:
            if scanner.id == scanner_id:
                return scanner
        raise KeyError(scanner_id)


def _in_polygon(p: Point, polygon: Sequence[Point]) -> bool:
    """Ray casting; points on an edge count as inside."""
    x, y = p
    inside = False
    n = len(polygon)
    for i in range(n):
        (x1, y1), (x2, y2) = polygon[i], polygon[(i + 1) % n]
        if _on_segment(p, (x1, y1), (x2, y2)):
            return True
        if (y1 > y) != (y2 > y):
            cross = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
            if x < cross:
                inside = not inside
    return inside


def _on_segment(p: Point, a: Point, b: Point) -> bool:
    cross = (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])
    if abs(cross) > 1e-9 * max(1.0, math.dist(a, b)):
        return False
    return min(a[0], b[0]) - 1e-9 <= p[0] <= max(a[0], b[0]) + 1e-9 and (
        min(a[1], b[1]) - 1e-9 <= p[1] <= max(a[1], b[1]) + 1e-9
    )


def load_store(path: Path) -> Store:
    """Parse and check a store file; raise :class:`StoreError` at the first problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StoreError(path, 1, 1, f"cannot read store file: {reason}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message, at = syntax_error(exc)
        at = at or Position(1, 1)
        raise StoreError(path, at.line, at.column, f"TOML syntax error: {message}") from exc
    try:
        return Store.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        cause = (err.get("ctx") or {}).get("error")
        loc = _data_loc(data, cause.loc if isinstance(cause, _LocatedError) else err["loc"])
        pos = locate(text).lookup(loc, prefer_key=err["type"] in ("extra_forbidden", "missing"))
        where = ".".join(str(p) for p in loc)
        message = err["msg"].removeprefix("Value error, ")
        raise StoreError(path, pos.line, pos.column, f"{where or 'store'}: {message}") from exc


def builtin_store(name: str = "example") -> Store:
    return load_store(BUILTIN_STORES / f"{name}.toml")


def _data_loc(data: object, loc: tuple[int | str, ...]) -> tuple[str | int, ...]:
    """The part of a pydantic error location that names keys present in the data."""
    out: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str):
            out.append(part)
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            out.append(part)
            node = node[part]
        elif node is None and isinstance(part, str):
            out.append(part)
            break
    return tuple(out)
