"""The seam of floor-plan presence: a shopper's readings in, the zone they are in out.

With a floor plan (``[presence] method = "fused"``, ``"nearest"`` or
``"multilateration"``), every sighting
of a shopper, from any scanner of the plan, goes to that shopper's
:class:`ZoneEstimator` in time order; the journey tracker turns the zone it decides
into the same journey events as the per-zone thresholds (enter, dwell, exit).

What the estimators share lives here: the radio model (log-distance path loss,
its per-scanner offset and exponent learned from the store's reference beacons by
:class:`Calibration`), the plan's geometry precomputed per scanner
(:class:`Space`), and which scanners are alive (:class:`Liveness`): a scanner
nobody has heard from for a while is down, and its silence says nothing about
where a shopper is.

Times here are float seconds on the tracker's own scale (no datetime arithmetic
on the hot path).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

from proximity.presence.floorplan import FloorPlan, Point, Polygon

#: The iBeacon convention for the calibrated power at 1 m, when a frame does not say.
DEFAULT_TX_POWER = -59
PHONE_HEIGHT_M = 1.2
"""Where a shopper's phone is (hand, pocket, trolley): about a metre above the floor."""


class ZoneEstimator(Protocol):
    """One shopper's zone, from their readings in time order."""

    @property
    def zone(self) -> str | None:
        """The zone decided now (None: elsewhere in the store, or gone)."""
        ...

    @property
    def last_heard(self) -> float:
        """When the last reading came (seconds, the tracker's scale)."""
        ...

    @property
    def gone(self) -> bool:
        """Whether the shopper is in no zone because nobody has heard them lately (then a
        stay the estimator left ended at ``last_heard``, not when it decided so)."""
        ...

    def observe(self, scanner: str, rssi: int, tx_power: int, at: float) -> None:
        """One reading of this shopper by ``scanner``."""
        ...

    def advance(self, at: float) -> None:
        """Time passed without a reading (the tracker's tick)."""
        ...

    def posterior(self) -> dict[str, float]:
        """How likely each zone is now, ``"elsewhere"`` included: the estimator's reasons."""
        ...


ELSEWHERE = "elsewhere"
"""The state of a shopper in the store but in no zone (the posterior's key for it)."""


class Liveness:
    """When each scanner was last heard, from anyone: which scanners are up."""

    __slots__ = ("_down", "_last", "silence_s")

    def __init__(self, silence_s: float = 10.0) -> None:
        self.silence_s = silence_s
        self._last: dict[str, float] = {}
        self._down: set[str] = set()

    def heard(self, scanner: str, at: float) -> None:
        if at > self._last.get(scanner, -math.inf):
            self._last[scanner] = at

    def quiet_for(self, scanner: str, now: float) -> float:
        """Seconds since ``scanner`` last heard anything (inf: never)."""
        return now - self._last.get(scanner, -math.inf)

    def alive(self, scanner: str, now: float) -> bool:
        """Whether ``scanner`` has been heard within ``silence_s`` (a busy store's scanner
        hears some advertisement every second; a silent one is down), and is not known to
        be down."""
        if scanner in self._down:
            return False
        return now - self._last.get(scanner, -math.inf) <= self.silence_s

    def known_down(self, scanners: Collection[str]) -> None:
        """The scanners known to be down whatever they were heard lately (a scanner node
        that said it is offline, or went silent); the others are judged by silence."""
        self._down = set(scanners)


@dataclass(slots=True)
class _Fit:
    """Running sums of a least-squares line y = a + b·x (x = −10·log10 d, y = rssi − tx)."""

    n: float = 0.0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0
    syy: float = 0.0

    def add(self, x: float, y: float, forget: float) -> None:
        self.n = self.n * forget + 1.0
        self.sx = self.sx * forget + x
        self.sy = self.sy * forget + y
        self.sxx = self.sxx * forget + x * x
        self.sxy = self.sxy * forget + x * y
        self.syy = self.syy * forget + y * y


class Calibration:
    """Each scanner's path-loss offset (dB) and exponent, learned from reference beacons.

    A reference beacon is at a known place, so each reading of it gives one point
    (distance, RSSI − tx power) of its scanner's curve; an exponentially forgetting
    least-squares fit of ``rssi − tx = offset − 10·n·log10(d)`` follows each scanner.
    The offset is fitted alone (the default exponent) until the scanner hears beacons
    over a spread of distances wide enough to fit the exponent too."""

    def __init__(
        self,
        exponent: float = 2.3,
        min_readings: int = 20,
        min_spread: float = 3.0,
        forget: float = 0.999,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self.default_exponent = exponent
        self._min_readings = min_readings
        self._min_spread = min_spread
        self._forget = forget
        self._fits: dict[str, _Fit] = {}
        self._params: dict[str, tuple[float, float]] = {}
        self._spread: dict[str, float] = {}
        self.on_change = on_change
        self._since: dict[str, int] = {}

    def params(self, scanner: str) -> tuple[float, float]:
        """(offset dB, exponent) of ``scanner``: (0, the default) until it is calibrated."""
        return self._params.get(scanner, (0.0, self.default_exponent))

    def spread(self, scanner: str) -> float | None:
        """The standard deviation (dB) of ``scanner``'s readings around its fitted curve
        (None: not calibrated): how noisy the radio is where it hangs."""
        return self._spread.get(scanner)

    def add(self, scanner: str, distance_m: float, rssi: int, tx_power: int) -> None:
        fit = self._fits.get(scanner)
        if fit is None:
            fit = self._fits[scanner] = _Fit()
        fit.add(-10.0 * math.log10(max(distance_m, 0.5)), float(rssi - tx_power), self._forget)
        since = self._since.get(scanner, 0) + 1
        if fit.n < self._min_readings or since < 10:  # refit every 10th reading
            self._since[scanner] = since
            return
        self._since[scanner] = 0
        before = self.params(scanner)
        after = self._params[scanner] = self._solve(fit)
        n = after[1]
        mean_x, mean_y = fit.sx / fit.n, fit.sy / fit.n
        var_x = fit.sxx / fit.n - mean_x * mean_x
        var_y = fit.syy / fit.n - mean_y * mean_y
        cov = fit.sxy / fit.n - mean_x * mean_y
        spread = math.sqrt(max(0.0, var_y - 2 * n * cov + n * n * var_x))
        moved_spread = abs(spread - self._spread.get(scanner, 0.0)) >= 0.5
        self._spread[scanner] = spread
        moved = (
            abs(after[0] - before[0]) >= 0.5 or abs(after[1] - before[1]) >= 0.05 or moved_spread
        )
        if moved and self.on_change is not None:
            self.on_change(scanner)

    def _solve(self, fit: _Fit) -> tuple[float, float]:
        mean_x, mean_y = fit.sx / fit.n, fit.sy / fit.n
        var_x = fit.sxx / fit.n - mean_x * mean_x
        if var_x >= self._min_spread:  # distances spread enough to see the slope
            n = (fit.sxy / fit.n - mean_x * mean_y) / var_x
            if 1.5 <= n <= 4.0:
                return mean_y - n * mean_x, n
        n = self.default_exponent
        return mean_y - n * mean_x, n


class Space:
    """A floor plan's geometry as the estimators use it, per scanner: the 3-D distance
    (as ``log10`` metres) from the scanner to the sample points of each state (the
    zones, then elsewhere), and the zone each scanner hangs over."""

    def __init__(self, plan: FloorPlan, aisle_spacing: float = 2.0) -> None:
        self.plan = plan
        self.states: tuple[str, ...] = (*plan.zone_ids, ELSEWHERE)
        samples: list[tuple[Point, ...]] = [z.samples() for z in plan.zones]
        samples.append(plan.aisle_samples(aisle_spacing) or (plan.zones[0].centroid,))
        self.samples = tuple(samples)
        self.log_distances: dict[str, tuple[tuple[float, ...], ...]] = {}
        self.scanner_zone: dict[str, str | None] = {}
        self.reach: dict[str, float] = {}
        """Metres from a scanner over a zone to the zone's farthest point."""
        for scanner in plan.scanners:
            sx, sy = scanner.position
            dz = scanner.height - PHONE_HEIGHT_M
            self.log_distances[scanner.id] = tuple(
                tuple(
                    math.log10(max(0.5, math.sqrt((x - sx) ** 2 + (y - sy) ** 2 + dz * dz)))
                    for x, y in points
                )
                for points in samples
            )
            zone = self.scanner_zone[scanner.id] = _zone_of(plan, scanner.position)
            if zone is not None:
                shape = plan.zone(zone).shape
                if isinstance(shape, Polygon):
                    far = max(math.dist(scanner.position, p) for p in shape.points)
                else:
                    far = math.dist(scanner.position, shape.center) + shape.radius
                self.reach[scanner.id] = math.sqrt(far * far + dz * dz)
        index = {zone: i for i, zone in enumerate(self.states)}
        elsewhere = len(self.states) - 1
        # Shoppers walk from a zone into the zones beside it, or out into the aisles;
        # from the aisles into any zone.
        self.neighbours: tuple[tuple[int, ...], ...] = (
            *(
                (*sorted(index[o] for o in plan.adjacency.get(z, ())), elsewhere)
                for z in plan.zone_ids
            ),
            tuple(range(elsewhere)),
        )
        self.references: dict[tuple[UUID, int, int], tuple[int | None, dict[str, float]]] = {}
        """A reference beacon's key → its power at 1 m (if the plan says) and the 3-D
        distance to each scanner."""
        for beacon in plan.beacons:
            if beacon.key is None:
                continue
            bx, by = beacon.position
            self.references[beacon.key] = (
                beacon.tx_power,
                {
                    s.id: math.sqrt(
                        (bx - s.position[0]) ** 2
                        + (by - s.position[1]) ** 2
                        + (s.height - beacon.height) ** 2
                    )
                    for s in plan.scanners
                },
            )


def _zone_of(plan: FloorPlan, position: Point, within_m: float = 1.0) -> str | None:
    """The zone a scanner hangs over (or within a metre of); None: over an aisle."""
    inside = plan.zone_at(*position)
    if inside is not None:
        return inside
    near = [(z.shape.distance_to(*position), z.id) for z in plan.zones]
    distance, zone = min(near)
    return zone if distance <= within_m else None


def distance_from_rssi(rssi: float, tx_power: float, offset: float, exponent: float) -> float:
    """Metres, inverting ``rssi = tx + offset − 10·n·log10(d)``."""
    return float(10.0 ** ((tx_power + offset - rssi) / (10.0 * exponent)))


def horizontal(distance_m: float, height_m: float) -> float:
    """The floor distance under a 3-D distance to a scanner ``height_m`` above the phone."""
    return math.sqrt(max(0.0, distance_m * distance_m - height_m * height_m))


def normalised(values: Sequence[float]) -> list[float]:
    total = sum(values)
    if total <= 0 or not math.isfinite(total):
        return [1.0 / len(values)] * len(values)
    return [v / total for v in values]
