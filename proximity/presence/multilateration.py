"""``method = "multilateration"``: a position on the floor first, then the zone that
contains it (ESPresense-companion's way: the comparator that locates shoppers).

Per shopper and scanner, one slot keeps the smoothed ``rssi − tx_power`` (a rise is
trusted more than a drop: bodies and fades only ever lower a reading) and when the
scanner last heard them. About once a second (``fix_interval_s``), the strongest few
scanners that heard the shopper lately and are alive (at least ``min_scanners``) each
give a distance from the path-loss model with that scanner's calibration
(:func:`~proximity.presence.estimate.distance_from_rssi`), and a Levenberg–Marquardt
least-squares fit finds the point of the floor whose 3-D distances to those scanners
(hanging ``height`` above the floor, the phone about a metre up) match best in log
distance, where the radio's shadowing spreads readings evenly. A damped
constant-velocity Kalman filter follows these fixes, each weighted by its geometry
(the fit's covariance). The shopper is in the zone whose polygon or circle contains
the filtered position; they stay in it until the position has been ``exit_margin_m``
outside it for ``exit_hold_s``, and ``min_stay_s`` has passed since they entered
(hysteresis), and are elsewhere in the store when no zone contains it.

With fewer than ``min_scanners`` heard (a scanner down, the edge of the grid) no fix
is made: the last position and zone stand for ``hold_s``, then the shopper is
elsewhere; a shopper nobody hears for ``exit_timeout_s`` is gone. A scanner that has
heard nobody for ``down_after_s`` (:class:`~proximity.presence.estimate.Liveness`)
gives no distance: its last reading of a shopper is not theirs any more.

Its known weaknesses are why it is a comparator: a position a metre or two off is a
wrong zone near a boundary, and it needs three scanners or more in range of every
zone. The hysteresis is wider than ESPresense's metre because of that: tuned on the
simulator's grid store (seeds 1–3), a 1 m margin flapped about 30 times per shopper-hour
(shadowing moves a fix 2–3 m for seconds at a time), 3 m held for 3 s about 9.

A shopper's state is a slot per scanner that heard them (two floats), the last fix and
the filter's four-vector and 4 × 4 covariance: about 3 KB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from numpy.typing import NDArray

from proximity.presence.estimate import (
    ELSEWHERE,
    PHONE_HEIGHT_M,
    Calibration,
    Liveness,
    Space,
    distance_from_rssi,
)
from proximity.presence.floorplan import FloorPlan

Vector = NDArray[np.float64]
_LN10 = math.log(10.0)


@dataclass(frozen=True, slots=True)
class MultilaterationParams:
    rise: float = 0.5
    """Weight of a new ``rssi − tx`` above the slot's smoothed value..."""
    fall: float = 0.2
    """... and below it (drops are often a body in the way or a fade)."""
    stale_s: float = 3.0
    """A scanner that has not heard the shopper this long gives no distance."""
    min_scanners: int = 3
    """Fewer distances than this fix no position (two circles cross twice)."""
    max_scanners: int = 6
    """Only the strongest few: a far scanner hears a phone only when a packet is lucky, so
    its distance comes out short."""
    max_distance_m: float = 20.0
    """Distances beyond this are left out (near the receivers' sensitivity)."""
    fix_interval_s: float = 1.0
    """A new position at most this often (readings in between fill the slots)."""
    iterations: int = 15
    """Levenberg–Marquardt steps per start (two starts: the last position and the
    scanners' centroid weighted by closeness)."""
    sigma_db: float = 6.0
    """Spread of a smoothed reading around the model: how far to trust a fix."""
    fix_floor_m: float = 0.5
    """No fix is trusted closer than this (standard deviation, per axis)."""
    accel: float = 1.0
    """m/s²: how briskly a shopper's walk changes (the filter's process noise)."""
    velocity_tau_s: float = 2.0
    """A shopper's velocity is forgotten over this long (they stop at shelves)."""
    exit_margin_m: float = 3.0
    """A shopper leaves their zone only once the position is this far outside it..."""
    min_stay_s: float = 8.0
    """... and they have been in it this long."""
    enter_hold_s: float = 0.0
    """A zone must contain the position this long before the shopper enters it..."""
    exit_hold_s: float = 3.0
    """... and the position must be out of the shopper's zone (beyond the margin) this long
    before they leave it: the radio's shadowing moves a fix for seconds at a time."""
    hold_s: float = 15.0
    """With fewer than ``min_scanners`` heard, the last position and zone stand this long."""
    exit_timeout_s: float = 15.0
    """Nothing heard of the shopper for this long: gone."""
    down_after_s: float = 2.0
    """A scanner that has heard nobody at all (shoppers, reference beacons) for this long
    is down: its last readings, fresh as they may be, no longer say where anyone is."""


@dataclass(slots=True)
class _Slot:
    delta: float
    """Smoothed ``rssi − tx_power``, dB."""
    last: float
    """When the scanner last heard the shopper."""


@dataclass(frozen=True, slots=True)
class Fix:
    """One least-squares position: where, its covariance (m²), and from how many scanners."""

    x: float
    y: float
    covariance: tuple[tuple[float, float], tuple[float, float]]
    scanners: int


def locate(
    positions: Vector,
    heights: Vector,
    distances: Vector,
    weights: Vector,
    starts: list[tuple[float, float]],
    iterations: int = 15,
) -> tuple[Vector, float, Vector]:
    """The floor point (x, y) whose 3-D distances to scanners at ``positions`` (m × 2),
    ``heights`` above the phone (m), best match ``distances``: Levenberg–Marquardt on
    ``Σ wᵢ (log10 ρᵢ − log10 dᵢ)²``, from each of ``starts``, the best kept.

    Returns (point, cost, JᵀWJ at the point): the last is the inverse of the fit's
    covariance."""
    target = np.log10(distances)
    dz2 = heights * heights
    best: tuple[Vector, float, Vector] | None = None
    for start in starts:
        point = np.array(start, dtype=np.float64)
        cost, residual, jacobian = _evaluate(point, positions, dz2, target, weights)
        damping = 1e-3
        for _ in range(iterations):
            jw = jacobian.T * weights
            normal = jw @ jacobian
            gradient = jw @ residual
            a = normal + damping * np.diag(np.diag(normal) + 1e-9)
            try:
                step = np.linalg.solve(a, -gradient)
            except np.linalg.LinAlgError:
                break
            candidate = point + step
            new_cost, new_residual, new_jacobian = _evaluate(
                candidate, positions, dz2, target, weights
            )
            if new_cost < cost:
                converged = cost - new_cost < 1e-10 or float(step @ step) < 1e-6
                point, cost, residual, jacobian = candidate, new_cost, new_residual, new_jacobian
                damping = max(damping / 3.0, 1e-7)
                if converged:
                    break
            else:
                damping *= 4.0
                if damping > 1e6:
                    break
        if best is None or cost < best[1]:
            best = (point, cost, (jacobian.T * weights) @ jacobian)
    assert best is not None, "locate needs a start"
    return best


def _evaluate(
    point: Vector, positions: Vector, dz2: Vector, target: Vector, weights: Vector
) -> tuple[float, Vector, Vector]:
    """Cost, residuals (log10 metres) and their Jacobian at ``point``."""
    diff = point - positions
    rho2 = np.maximum((diff * diff).sum(axis=1) + dz2, 0.25)
    residual = 0.5 * np.log10(rho2) - target
    jacobian = diff / (rho2 * _LN10)[:, None]
    return float(weights @ (residual * residual)), residual, jacobian


class MultilaterationEstimator:
    __slots__ = (
        "_calibration",
        "_covariance",
        "_entered",
        "_fix",
        "_fixed_at",
        "_gone",
        "_heard",
        "_live",
        "_params",
        "_pending",
        "_slots",
        "_space",
        "_state",
        "_t",
        "_zone",
    )

    def __init__(
        self,
        space: Space,
        liveness: Liveness,
        calibration: Calibration,
        params: MultilaterationParams | None = None,
    ) -> None:
        self._space = space
        self._live = liveness
        self._calibration = calibration
        self._params = params or MultilaterationParams()
        self._slots: dict[str, _Slot] = {}
        self._heard = -1e300
        self._state: Vector | None = None
        """The filter's (x, y, vx, vy)..."""
        self._covariance: Vector | None = None
        """... and its covariance."""
        self._t = -1e300
        """When the filter was last brought forward."""
        self._fixed_at = -1e300
        self._fix: Fix | None = None
        self._zone: str | None = None
        self._gone = False
        self._entered = -1e300
        self._pending: tuple[str | None, float] | None = None
        """A zone the position asks for (None: out of the current one), since when."""

    @property
    def zone(self) -> str | None:
        return self._zone

    @property
    def last_heard(self) -> float:
        return self._heard

    @property
    def gone(self) -> bool:
        return self._gone

    @property
    def position(self) -> tuple[float, float] | None:
        """The filtered position (metres on the plan; None: not located)."""
        if self._state is None:
            return None
        return float(self._state[0]), float(self._state[1])

    @property
    def last_fix(self) -> Fix | None:
        """The last least-squares position, before the filter."""
        return self._fix

    def observe(self, scanner: str, rssi: int, tx_power: int, at: float) -> None:
        if scanner not in self._space.log_distances:
            return
        p = self._params
        if at - self._heard >= p.exit_timeout_s:
            self._forget()
        delta = float(rssi - tx_power)
        slot = self._slots.get(scanner)
        if slot is None or at - slot.last > p.stale_s:
            self._slots[scanner] = _Slot(delta, at)
        else:
            weight = p.rise if delta > slot.delta else p.fall
            slot.delta += weight * (delta - slot.delta)
            slot.last = max(slot.last, at)
        self._heard = max(self._heard, at)
        self._gone = False
        self._update(at)

    def advance(self, at: float) -> None:
        if at - self._heard >= self._params.exit_timeout_s:
            self._forget()
            self._gone = True
            return
        self._update(at)

    def _forget(self) -> None:
        """Gone: nothing of this shopper is kept."""
        self._slots.clear()
        self._state = self._covariance = self._fix = None
        self._zone = self._pending = None
        self._t = self._fixed_at = self._entered = -1e300

    def _update(self, now: float) -> None:
        p = self._params
        if now - self._fixed_at >= p.fix_interval_s:
            fix = self._locate(now)
            if fix is not None:
                self._fix, self._fixed_at = fix, now
                self._filter(fix, now)
        if now - self._fixed_at >= p.hold_s:  # too few scanners for too long
            self._state = self._covariance = None
            self._zone = self._pending = None
            return
        self._decide(now)

    def heard_by(self, now: float) -> list[tuple[str, float]]:
        """(scanner, smoothed ``rssi − tx``) of the scanners a fix at ``now`` uses."""
        p = self._params
        live = self._live
        heard = [
            (scanner, slot.delta)
            for scanner, slot in self._slots.items()
            if now - slot.last <= p.stale_s and live.quiet_for(scanner, now) < p.down_after_s
        ]
        heard.sort(key=lambda item: -item[1])
        return heard[: p.max_scanners]

    def _locate(self, now: float) -> Fix | None:
        p = self._params
        heard = self.heard_by(now)
        if len(heard) < p.min_scanners:
            return None
        scanners = _scanners(self._space.plan)
        rows: list[tuple[float, float, float, float, float]] = []
        for scanner, delta in heard:
            offset, exponent = self._calibration.params(scanner)
            distance = distance_from_rssi(delta, 0.0, offset, exponent)
            if distance > p.max_distance_m:
                continue
            x, y, height = scanners[scanner]
            rows.append((x, y, height - PHONE_HEIGHT_M, max(distance, 0.3), exponent))
        if len(rows) < p.min_scanners:
            return None
        table = np.array(rows, dtype=np.float64)
        positions, heights, distances = table[:, :2], table[:, 2], table[:, 3]
        # residuals in dB: 10·n·(log10 ρ − log10 d); each reading spreads sigma_db
        weights = (10.0 * table[:, 4] / p.sigma_db) ** 2
        closeness = 1.0 / (distances * distances)
        centroid = (positions * closeness[:, None]).sum(axis=0) / closeness.sum()
        starts = [(float(centroid[0]), float(centroid[1]))]
        if self._state is not None:
            starts.append((float(self._state[0]), float(self._state[1])))
        point, cost, normal = locate(positions, heights, distances, weights, starts, p.iterations)
        x0, y0, x1, y1 = self._space.plan.bounds()
        x = min(x1, max(x0, float(point[0])))
        y = min(y1, max(y0, float(point[1])))
        # the fit's covariance, inflated when the readings disagree more than sigma_db
        dof = len(rows) - 2
        inflate = max(1.0, (cost + 2.0) / (dof + 2.0))
        try:
            cov = np.linalg.inv(normal)[:2, :2] * inflate
        except np.linalg.LinAlgError:
            cov = np.eye(2) * 100.0
        cov = cov + np.eye(2) * p.fix_floor_m**2
        worst = max(float(cov[0, 0]), float(cov[1, 1]))
        if worst > 400.0:  # a fix 20 m uncertain says nothing more than that
            cov = cov * (400.0 / worst)
        return Fix(
            x,
            y,
            ((float(cov[0, 0]), float(cov[0, 1])), (float(cov[1, 0]), float(cov[1, 1]))),
            len(rows),
        )

    def _filter(self, fix: Fix, now: float) -> None:
        """A damped constant-velocity Kalman filter: predict to ``now``, update with ``fix``."""
        p = self._params
        measured = np.array([fix.x, fix.y])
        noise = np.array(fix.covariance)
        if self._state is None or self._covariance is None:
            self._state = np.array([fix.x, fix.y, 0.0, 0.0])
            covariance = np.zeros((4, 4))
            covariance[:2, :2] = noise
            covariance[2:, 2:] = np.eye(2)
            self._covariance, self._t = covariance, now
            return
        state, covariance = self._state, self._covariance
        dt = now - self._t
        if dt > 0:
            decay = math.exp(-dt / p.velocity_tau_s)
            reach = p.velocity_tau_s * (1.0 - decay)
            f = np.eye(4)
            f[0, 2] = f[1, 3] = reach
            f[2, 2] = f[3, 3] = decay
            q = p.accel * p.accel
            block = np.array([[dt**3 / 3.0, dt * dt / 2.0], [dt * dt / 2.0, dt]]) * q
            process = np.zeros((4, 4))
            process[np.ix_([0, 2], [0, 2])] = block
            process[np.ix_([1, 3], [1, 3])] = block
            state = f @ state
            covariance = f @ covariance @ f.T + process
            self._t = now
        innovation = measured - state[:2]
        s = covariance[:2, :2] + noise
        gain = covariance[:, :2] @ np.linalg.inv(s)
        state = state + gain @ innovation
        covariance = covariance - gain @ covariance[:2, :]
        self._state, self._covariance = state, 0.5 * (covariance + covariance.T)

    def _decide(self, now: float) -> None:
        if self._state is None:
            return
        p = self._params
        plan = self._space.plan
        x, y = float(self._state[0]), float(self._state[1])
        inside = plan.zone_at(x, y)
        current = self._zone
        if inside == current:
            self._pending = None
            return
        if current is not None and (
            plan.zone(current).shape.distance_to(x, y) < p.exit_margin_m
            or now - self._entered < p.min_stay_s
        ):
            self._pending = None  # within the margin, or not there long enough: stays
            return
        if self._pending is None or self._pending[0] != inside:
            self._pending = (inside, now)
        hold = p.enter_hold_s if current is None else p.exit_hold_s
        if now - self._pending[1] < hold:
            return
        self._zone, self._entered, self._pending = inside, now, None

    def posterior(self) -> dict[str, float]:
        """The share of the filtered position's Gaussian in each zone, elsewhere included,
        from 64 points spread evenly over its probability (:data:`_SPREAD`); all elsewhere
        when not located. (Five sigma points, the position and one at 1.7 deviations each
        way along the covariance's axes, gave a phone 1.5 m inside a zone, with the
        filter's 1.5 m spread, two thirds elsewhere where its Gaussian has 0.7 inside.)"""
        out = dict.fromkeys(self._space.states, 0.0)
        if self._state is None or self._covariance is None:
            out[ELSEWHERE] = 1.0
            return out
        plan = self._space.plan
        try:
            root = np.linalg.cholesky(self._covariance[:2, :2])
        except np.linalg.LinAlgError:
            root = np.zeros((2, 2))
        weight = 1.0 / len(_SPREAD)
        for x, y in _SPREAD @ root.T + self._state[:2]:
            zone = plan.zone_at(float(x), float(y))
            out[zone or ELSEWHERE] += weight
        return out


_QUANTILES = [NormalDist().inv_cdf((i + 0.5) / 8) for i in range(8)]
_SPREAD = np.array([(a, b) for a in _QUANTILES for b in _QUANTILES])
"""A standard normal in two dimensions as 64 equally likely points: the middles of an
8 × 8 grid of equal-probability strata (each axis at the 1/16, 3/16, ... quantiles)."""


def _scanners(plan: FloorPlan) -> dict[str, tuple[float, float, float]]:
    """Scanner id → (x, y, height): looked up when fixing, not kept per shopper."""
    return {s.id: (s.position[0], s.position[1], s.height) for s in plan.scanners}
