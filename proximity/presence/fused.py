"""``method = "fused"``: a Bayesian filter over the floor plan's zones, fed by every scanner.

Per shopper, a probability per state: each zone of the plan, and "elsewhere" (the
aisles, in no zone). Each reading, from whichever scanner, in time order:

1. **predict** — time passed since the last update: a shopper leaves a zone at
   ``leave_rate`` per second, into the zones beside it (the plan's adjacency) or
   the aisles; from the aisles they walk into a zone at ``enter_rate``.
2. **update** — multiply by the reading's likelihood in each state: the log-distance
   path-loss model's expected RSSI at the state's sample points (the zone's, or a
   grid over the aisles) from that scanner's position and height, Gaussian
   (σ ``sigma_db``) averaged over the points, mixed with a floor for outliers (a body
   in the way, a reflection), and tempered (``temper``): successive readings of one
   link are correlated (shadowing lasts seconds), so one is worth less than an
   independent look.

The shopper **enters** the most likely zone once its probability reaches ``enter``,
**leaves** it when it falls below ``leave`` or another zone reaches ``enter`` and
leads by ``lead``; either only once the posterior has asked for it ``enter_hold_s``
or ``exit_hold_s`` on end, and never within ``min_stay_s`` of entering; a shopper not
heard at all for ``exit_timeout_s`` has left. Only readings move the filter, so a
scanner that goes down adds no "not heard" evidence; and while the scanner that heard
a shopper best has heard nobody at all for ``down_after_s`` (it is down, see
:class:`~proximity.presence.estimate.Liveness`), the shopper does not leave their
zone for want of its readings (moving to another zone still counts).

The likelihoods are tables per scanner and state indexed by ``rssi − tx_power`` (an
integer), computed once from the geometry and recomputed when the calibration of a
scanner changes: an update is a handful of multiplications. A shopper's state is a
few floats (well under a kilobyte).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from proximity.presence.estimate import Calibration, Liveness, Space

#: Table range of ``rssi − tx_power`` in dB (beyond it, the nearest end).
_LOW, _HIGH = -110, 20
_WIDTH = _HIGH - _LOW + 1


@dataclass(frozen=True, slots=True)
class FusedParams:
    sigma_db: float = 7.0
    """Spread of a reading around the path-loss model's value (shadowing, fading), until
    the reference beacons tell (``learn_sigma``)."""
    learn_sigma: bool = False
    """Off: on the simulator's scenarios a learned spread scored no better (0.89 vs 0.90)."""
    spread_scale: float = 1.0
    sigma_range: tuple[float, float] = (4.0, 12.0)
    blocked: float = 0.3
    """The share of readings with a body (the shopper's own, another's) in the way..."""
    body_db: float = 12.0
    """... which takes this much off: only ever lower, so a weak reading of the zone's
    own scanner is no strong sign the shopper left, while a strong one of another is."""
    outlier: float = 0.05
    """The share of readings that follow no model (spread over ``outlier_range_db``)."""
    outlier_range_db: float = 60.0
    temper: float = 0.45
    """Each reading's likelihood is raised to this power (readings are not independent)."""
    leave_rate: float = 1 / 10
    """Per second: how often a shopper in a zone walks out of it."""
    enter_rate: float = 1 / 5
    """Per second: how often a shopper in the aisles walks into some zone."""
    enter: float = 0.7
    leave: float = 0.3
    lead: float = 0.3
    """Another zone takes over once this much more likely (and above ``enter``)."""
    enter_hold_s: float = 0.0
    """The posterior must ask for an enter this long before it counts."""
    exit_hold_s: float = 2.0
    """... and for an exit (or a move to another zone) this long."""
    min_stay_s: float = 3.0
    exit_timeout_s: float = 15.0
    strong_decay: float = 2.0
    """dB per second the best reading of a shopper fades by, so that another scanner
    hearing them better takes its place as the one that hears them best."""
    down_after_s: float = 3.0
    """That scanner hearing nobody at all for this long is down: the shopper does not
    leave their zone for want of its readings (they can still move to another zone, and
    leave once nobody hears them)."""
    floor: float = 1e-4
    """No state's probability drops below this (the filter can always recover)."""


class FusedModel:
    """What every shopper's filter in one store shares: the likelihood tables."""

    def __init__(
        self, space: Space, calibration: Calibration, params: FusedParams | None = None
    ) -> None:
        self.space = space
        self.params = params or FusedParams()
        self._calibration = calibration
        self.tables: dict[str, tuple[tuple[float, ...], ...]] = {}
        """scanner → row per ``rssi − tx`` (from ``_LOW``) → likelihood per state."""
        self._sigma = self.sigma_db
        for scanner in space.log_distances:
            self._table(scanner, self._sigma)

    @property
    def sigma_db(self) -> float:
        """The spread readings are modelled with: the spread the reference beacons show
        (× ``spread_scale``, within ``sigma_range``), else ``sigma_db``."""
        p = self.params
        spreads = [s for s in map(self._calibration.spread, self.space.log_distances) if s]
        if not spreads or not p.learn_sigma:
            return p.sigma_db
        low, high = p.sigma_range
        return min(high, max(low, p.spread_scale * sum(spreads) / len(spreads)))

    def recalibrated(self, scanner: str) -> None:
        """Compute the tables anew (a scanner's calibration changed; the spread is the
        store's, so every table follows it)."""
        sigma = self.sigma_db
        if sigma != self._sigma:
            self._sigma = sigma
            for other in self.space.log_distances:
                self._table(other, sigma)
        else:
            self._table(scanner, sigma)

    def _table(self, scanner: str, sigma: float) -> None:
        p = self.params
        offset, exponent = self._calibration.params(scanner)
        means = [
            [offset - 10.0 * exponent * ld for ld in state]
            for state in self.space.log_distances[scanner]
        ]
        deltas = np.arange(_LOW, _HIGH + 1, dtype=float)[:, None]
        columns = []
        for state in means:
            m = np.asarray(state, dtype=float)[None, :]
            clear = np.exp(-((deltas - m) ** 2) / (2 * sigma**2)).mean(axis=1)
            blocked = np.exp(-((deltas - m + p.body_db) ** 2) / (2 * sigma**2)).mean(axis=1)
            g = (1 - p.blocked) * clear + p.blocked * blocked
            density = (1 - p.outlier) * g / (sigma * math.sqrt(2 * math.pi))
            columns.append((density + p.outlier / p.outlier_range_db) ** p.temper)
        rows = [tuple(float(v) for v in row) for row in np.stack(columns, axis=1)]
        self.tables[scanner] = tuple(rows)

    def estimator(self, liveness: Liveness | None = None) -> FusedEstimator:
        return FusedEstimator(self, liveness)


class FusedEstimator:
    __slots__ = (
        "_entered",
        "_heard",
        "_live",
        "_model",
        "_p",
        "_pending",
        "_strong",
        "_t",
        "_zone",
    )

    def __init__(self, model: FusedModel, liveness: Liveness | None = None) -> None:
        self._model = model
        self._live = liveness
        self._strong: tuple[str, float, float] | None = None
        """The scanner that heard this shopper best lately: (scanner, rssi − tx, when)."""
        n = len(model.space.states)
        # A shopper first heard is most likely in the aisles (or coming in).
        self._p = [0.5 / (n - 1)] * (n - 1) + [0.5]
        self._t: float | None = None
        self._heard = -1e300
        self._zone: int | None = None
        self._entered = 0.0
        self._pending: tuple[int | None, float] | None = None
        """A change the posterior asks for (to that zone, None: out), since when."""

    @property
    def zone(self) -> str | None:
        return None if self._zone is None else self._model.space.states[self._zone]

    @property
    def last_heard(self) -> float:
        return self._heard

    def posterior(self) -> dict[str, float]:
        return dict(zip(self._model.space.states, self._p, strict=True))

    def observe(self, scanner: str, rssi: int, tx_power: int, at: float) -> None:
        table = self._model.tables.get(scanner)
        if table is None:
            return
        self._predict(at)
        if at > self._heard:
            self._heard = at
        delta = rssi - tx_power
        strong = self._strong
        if strong is None:
            self._strong = (scanner, delta, at)
        else:
            # the best reading lately, fading by strong_decay dB/s (not while its scanner
            # is down: then only a stronger reading takes its place)
            down = self._strong_scanner_down(at)
            fading = 0.0 if down else self._model.params.strong_decay * max(0.0, at - strong[2])
            best = strong[1] - fading
            if scanner == strong[0]:
                self._strong = (scanner, max(delta, best), at)
            elif delta >= (strong[1] if down else best):
                self._strong = (scanner, delta, at)
        row = table[min(_WIDTH - 1, max(0, delta - _LOW))]
        p = self._p
        for k in range(len(p)):
            p[k] *= row[k]
        self._normalise()
        self._decide(max(at, self._t or at))

    def advance(self, at: float) -> None:
        self._predict(at)
        self._normalise()
        self._decide(at)

    def _predict(self, at: float) -> None:
        last = self._t
        if last is None or at <= last:
            if last is None:
                self._t = at
            return
        self._t = at
        dt = at - last
        params = self._model.params
        p = self._p
        n = len(p)
        leave = 1.0 - math.exp(-params.leave_rate * dt)
        enter = 1.0 - math.exp(-params.enter_rate * dt)
        moved = [0.0] * n
        neighbours = self._model.space.neighbours
        zones = n - 1
        for k in range(zones):
            out = p[k] * leave
            if out:
                moved[k] -= out
                share = out / len(neighbours[k])
                for j in neighbours[k]:
                    moved[j] += share
        out = p[zones] * enter
        moved[zones] -= out
        for j in range(zones):
            moved[j] += out / zones
        for k in range(n):
            p[k] += moved[k]

    def _normalise(self) -> None:
        p = self._p
        floor = self._model.params.floor
        total = sum(p)
        if total <= 0 or not math.isfinite(total):
            p[:] = [1.0 / len(p)] * len(p)
            return
        for k in range(len(p)):
            p[k] = max(floor, p[k] / total)
        total = sum(p)
        for k in range(len(p)):
            p[k] /= total

    def _decide(self, now: float) -> None:
        params = self._model.params
        p = self._p
        if now - self._heard >= params.exit_timeout_s:
            self._zone = self._pending = None
            return
        zones = len(p) - 1
        best = max(range(zones), key=p.__getitem__)
        current = self._zone
        # where the posterior says to go now (current: stay), held for a while to count
        target: int | None
        if current is None:
            target = best if p[best] >= params.enter else None
        elif best != current and p[best] >= params.enter and p[best] >= p[current] + params.lead:
            target = best
        elif p[current] < params.leave:
            target = best if p[best] >= params.enter else None
        else:
            target = current
        if target is None and current is not None and self._strong_scanner_down(now):
            target = current  # the scanner that heard them best fell silent: no evidence
        if target == current:
            self._pending = None
            return
        if self._pending is None or self._pending[0] != target:
            self._pending = (target, now)
        hold = params.enter_hold_s if current is None else params.exit_hold_s
        if now - self._pending[1] < hold or (
            current is not None and now - self._entered < params.min_stay_s
        ):
            return
        self._zone, self._entered, self._pending = target, now, None

    def _strong_scanner_down(self, now: float) -> bool:
        live, strong = self._live, self._strong
        if live is None or strong is None:
            return False
        return live.quiet_for(strong[0], now) >= self._model.params.down_after_s
