"""``method = "fused"``: a Bayesian filter over the floor plan, fed by every scanner.

Per shopper, a probability per state. The states are each zone of the plan, whole (a
shopper in a zone stands somewhere in it and stays a while), and the **cells** of a
grid over the aisles (``cell_m``, about 2 m): where the shopper walks between zones.
"Elsewhere" (in no zone) is the sum of the cells. Each reading, from whichever
scanner, in time order:

1. **predict** — time passed since the last update moves probability along the floor:
   from a zone (at ``zone_leave_rate`` per second) into the aisle cells along its
   edge and the zones beside it (the plan's adjacency); from a cell to each cell
   beside it (``walk_rate``) and into a zone it borders (``cell_enter_rate``). The
   transition matrix for a time step is ``exp(Q·dt)``, computed once per step length
   (steps are quantised to ``STEP_S``) and shared by every shopper of the store.
2. **update** — multiply by the reading's likelihood in each state: the log-distance
   path-loss model's expected RSSI (``rssi − tx_power``) at the state's points (a
   zone's handful of sample points, averaged; a cell's centre) from that scanner's
   position and height; Gaussian (σ ``sigma_db``), mixed with a body-blocking
   component (``body_db`` lower, a share ``blocked`` of readings: bodies only ever
   lower RSSI) and a floor for outliers; divided by the chance the reading is heard at
   all there (a receiver hears nothing below its sensitivity, so the far readings that
   do arrive are the lucky, strong ones); and tempered (``temper``): successive
   readings of one link are correlated (shadowing lasts seconds), so one is worth less
   than an independent look.

Why cells and not one "elsewhere" state: a shopper who has just walked out of a zone
is a metre or two from it, not anywhere in the aisles. With one diffuse "elsewhere",
the readings of someone just outside the zone look more like the zone than like the
average aisle, so the filter kept them in it for about ten seconds after they left
(measured: exit latency p50 8 s, exit precision 0.1–0.3 at a 10 s tolerance on the
grid store); the cells follow the shopper out.

The shopper **enters** the most likely zone once its probability reaches ``enter``,
**leaves** it when it falls below ``leave`` or another zone reaches ``enter`` and
leads by ``lead``; either only once the posterior has asked for it ``enter_hold_s``
or ``exit_hold_s`` on end, and never within ``min_stay_s`` of entering. A shopper
nobody hears for ``gone_after_s`` (about four advertisements: several scanners hear a
phone in the store every second or two) has left the store, and one not heard at all
for ``exit_timeout_s`` has left whatever else. Only readings move the filter, so a
scanner that goes down adds no "not heard" evidence; and while the scanner that heard
a shopper best has heard nobody at all for ``down_after_s`` (it is down, see
:class:`~proximity.presence.estimate.Liveness`), the shopper does not leave their
zone for want of its readings (moving to another zone still counts, and so does the
exit timeout).

Cost: the likelihood tables (scanner × ``rssi − tx`` × state) and the transition
matrices are per store; a shopper's state is one vector of a few hundred single-precision
floats (``max_cells`` bounds it: a large floor gets larger cells).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from proximity.presence.estimate import PHONE_HEIGHT_M, Calibration, Liveness, Space
from proximity.presence.floorplan import Point

#: Table range of ``rssi − tx_power`` in dB (beyond it, the nearest end).
_LOW, _HIGH = -110, 20
_WIDTH = _HIGH - _LOW + 1
STEP_S = 0.25
"""Time steps are rounded to this for the transition matrices (one per length)."""
_SAME_ADVERTISEMENT_S = 0.2
"""Readings of one shopper closer together are one advertisement heard by several scanners."""
_LONGEST_GAP_S = 10.0
"""A longer silence counts as this in a phone's usual gap (one absence is not its pace)."""
LONGEST_STEP_S = 2.0
"""Longer gaps are taken in steps of this (a matrix per length up to it)."""

Vector = NDArray[np.float32]
"""Probabilities in single precision: half the memory per shopper and twice the speed of
a step (the posterior is renormalised at every reading, so rounding never builds up)."""


@dataclass(frozen=True, slots=True)
class FusedParams:
    # the radio (tuned on the simulator's seeds 1 and 2; reported on others)
    sigma_db: float = 5.2
    """Spread of a reading around the path-loss model's value (shadowing, fading)."""
    blocked: float = 0.5
    """The share of readings with a body (the shopper's own, another's) in the way..."""
    body_db: float = 8.0
    """... which takes this much off: only ever lower, so a weak reading of the zone's
    own scanner is no strong sign the shopper left, while a strong one of another is."""
    outlier: float = 0.015
    """The share of readings that follow no model (spread over ``outlier_range_db``)."""
    outlier_range_db: float = 60.0
    sensitivity_dbm: float = -94.0
    """A receiver hears nothing weaker (typical of LE 1M radios: −93 to −96 dBm)."""
    temper: float = 0.4
    """Each reading's likelihood is raised to this power (readings are not independent)..."""
    temper_scanners: float = 20.0
    """... where a phone is in range of this many scanners or fewer; where more hear it,
    to the power ``temper · √(temper_scanners / in range)``: the readings of one
    advertisement share the phone (its power, where in the zone it stands), so an
    advertisement that 60 scanners hear does not tell three times what one that 20
    hear does (on ceiling grids of 28 and 60 scanners, seeds 101 and 102, sparse and
    crowded: enter precision 3 to 19 points higher, 1.6 to 4.8 times fewer flaps)."""
    # walking
    cell_m: float = 2.0
    max_cells: int = 400
    """Aisle cells at most: a larger floor gets larger cells (the cost of a step grows
    with the square of the states)."""
    border_m: float = 1.5
    """Cells this close to a zone's edge are where a shopper leaving it steps to."""
    zone_leave_rate: float = 1 / 20
    """Per second: how often a shopper in a zone walks out of it."""
    walk_rate: float = 2.0
    """Per second, per neighbouring cell: how fast a shopper in the aisles moves on."""
    cell_enter_rate: float = 0.3
    """Per second: how often a shopper on a cell at a zone's edge steps into it."""
    # deciding
    enter: float = 0.65
    leave: float = 0.35
    lead: float = 0.2
    """Another zone takes over once this much more likely (and above ``enter``)."""
    enter_hold_s: float = 0.0
    """The posterior must ask for an enter this long before it counts."""
    exit_hold_s: float = 0.0
    """... and for an exit (or a move to another zone) this long."""
    min_stay_s: float = 5.0
    exit_timeout_s: float = 15.0
    gone_after_s: float = 4.0
    gone_gaps: float = 4.0
    """A shopper nobody hears for ``gone_after_s``, or for ``gone_gaps`` times the usual gap
    between their phone's advertisements if longer, has left (out of the store, or a
    phone put away), sooner than ``exit_timeout_s``: with several scanners in range a
    phone in the store is heard every second or two. Not while the scanner that heard
    them best is down (then silence says nothing)."""
    strong_decay: float = 2.0
    """dB per second the best reading of a shopper fades by, so that another scanner
    hearing them better takes its place as the one that hears them best."""
    down_after_s: float = 3.0
    """That scanner hearing nobody at all for this long is down: the shopper does not
    leave their zone for want of its readings (they can still move to another zone, and
    leave once nobody hears them)."""
    learn_offset: bool = True
    """Learn each phone's offset: how much stronger or weaker than the store's other
    phones every scanner hears it (phones radiate up to a few dB off their claimed
    power), from its readings of scanners near where the filter places it."""
    offset_scanners: float = 8.0
    """... where a phone is in range of this many scanners or more: with fewer (a
    scanner per zone), a phone that radiates more looks the same as one nearer."""
    offset_prior: float = 30.0
    """Readings' worth of belief that a phone radiates as the others do."""
    offset_near_db: float = -25.0
    """Only readings whose expected ``rssi − tx`` is at least this (within about 12 m:
    farther, the receivers' sensitivity cuts off the weak readings and biases the rest)."""
    offset_limit_db: float = 6.0
    """No phone's offset is taken beyond this, either way."""
    offset_store_rate: float = 0.001
    """How fast the store's average residual follows the readings (about the last
    thousand near readings of every phone, so no one phone moves it much)."""
    floor: float = 1e-7
    """No state's probability drops below this (the filter can always recover)."""
    tx_power: int = -59
    """The power at 1 m the sensitivity is measured against (the iBeacon convention)."""


class FusedModel:
    """What every shopper's filter in one store shares: the states, the likelihood
    tables and the transition matrices."""

    def __init__(
        self, space: Space, calibration: Calibration, params: FusedParams | None = None
    ) -> None:
        self.space = space
        self.params = p = params or FusedParams()
        self._calibration = calibration
        plan = space.plan
        self.zone_ids = plan.zone_ids
        self.zones = len(self.zone_ids)
        grid, self._pitch = _aisle_cells(space, p.cell_m, p.max_cells)
        self.cells = list(grid.values())
        """The aisle cells' centres (states ``zones`` onwards)."""
        self._grid = list(grid)
        self.points: list[tuple[Point, ...]] = [z.samples() for z in plan.zones]
        self.points += [(c,) for c in self.cells]
        self.size = len(self.points)
        self.rates = self._rates()
        self._steps: dict[int, NDArray[np.float32]] = {}
        self.tables: dict[str, NDArray[np.float32]] = {}
        """scanner → row per ``rssi − tx`` (from ``_LOW``) → likelihood per state."""
        self.means: dict[str, NDArray[np.float32]] = {}
        """scanner → the modelled ``rssi − tx`` (no body, no fading) in each state."""
        self.residual = 0.0
        """How far above the modelled value the store's phones are heard, on average
        (every phone's readings; each phone's offset is its own part beyond this)."""
        self.in_range = self._in_range()
        """How many scanners a phone is in range of, on average over the floor."""
        self.temper = p.temper * min(1.0, math.sqrt(p.temper_scanners / max(1.0, self.in_range)))
        """The power each reading's likelihood is raised to (``FusedParams.temper``)."""
        self.learn_offset = p.learn_offset and self.in_range >= p.offset_scanners
        """Whether each phone's offset is learnt (``FusedParams.learn_offset``)."""
        for scanner in plan.scanners:
            self._table(scanner.id)
        start = np.empty(self.size, dtype=np.float32)
        start[: self.zones] = (0.5 if self.cells else 1.0) / self.zones
        start[self.zones :] = 0.5 / max(1, len(self.cells))
        self.start: Vector = start
        """A shopper first heard: as likely in a zone as in the aisles."""

    def _rates(self) -> NDArray[np.float64]:
        """The generator Q (rate per second from state i to state j)."""
        p, plan = self.params, self.space.plan
        z, n = self.zones, self.size
        q = np.zeros((n, n))
        index = {zone: k for k, zone in enumerate(self.zone_ids)}
        half = 0.5 * max(self._pitch)
        for k, zone in enumerate(plan.zones):
            border = [
                z + c
                for c, (x, y) in enumerate(self.cells)
                if zone.shape.distance_to(x, y) <= p.border_m + half
            ]
            beside = [index[o] for o in sorted(plan.adjacency.get(zone.id, ()))]
            out = border + beside or [j for j in range(z) if j != k]
            for j in out:
                q[k, j] += p.zone_leave_rate / len(out)
            for j in border:
                q[j, k] += p.cell_enter_rate
        at = {cell: z + c for c, cell in enumerate(self._grid)}
        for (i, j), c in at.items():
            for step in ((i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)):
                d = at.get(step)
                if d is not None:
                    q[c, d] += p.walk_rate
        np.fill_diagonal(q, 0.0)
        np.fill_diagonal(q, -q.sum(axis=1))
        return q

    def _in_range(self) -> float:
        """The mean, over every state's points, of the scanners whose modelled RSSI there
        (before calibration) reaches the receivers' sensitivity."""
        p = self.params
        reach = p.sensitivity_dbm - p.tx_power  # the weakest rssi − tx heard
        exponent = self._calibration.default_exponent
        counts = []
        for points in self.points:
            for x, y in points:
                heard = 0
                for scanner in self.space.plan.scanners:
                    sx, sy = scanner.position
                    dz = scanner.height - PHONE_HEIGHT_M
                    d = max(0.5, math.sqrt((x - sx) ** 2 + (y - sy) ** 2 + dz * dz))
                    heard += -10.0 * exponent * math.log10(d) >= reach
                counts.append(heard)
        return sum(counts) / len(counts) if counts else 0.0

    def step(self, dt: float) -> NDArray[np.float32]:
        """The transition matrix for ``dt`` seconds (≤ ``LONGEST_STEP_S``), rounded to
        ``STEP_S``."""
        k = max(1, min(round(dt / STEP_S), round(LONGEST_STEP_S / STEP_S)))
        matrix = self._steps.get(k)
        if matrix is None:
            matrix = self._steps[k] = _expm(self.rates * (k * STEP_S)).astype(np.float32)
        return matrix

    def recalibrated(self, scanner: str) -> None:
        """Compute ``scanner``'s table anew (its calibration changed)."""
        if scanner in self.tables:
            self._table(scanner)

    def _table(self, scanner_id: str) -> None:
        p = self.params
        scanner = next(s for s in self.space.plan.scanners if s.id == scanner_id)
        offset, exponent = self._calibration.params(scanner_id)
        sx, sy = scanner.position
        dz = scanner.height - PHONE_HEIGHT_M
        sigma = p.sigma_db
        deltas = np.arange(_LOW, _HIGH + 1, dtype=float)[:, None]
        threshold = p.sensitivity_dbm - p.tx_power
        columns = []
        means: list[float] = []
        for points in self.points:
            d = np.array([math.sqrt((x - sx) ** 2 + (y - sy) ** 2 + dz * dz) for x, y in points])
            mean = offset - 10.0 * exponent * np.log10(np.maximum(d, 0.5))
            m = mean[None, :]
            clear = np.exp(-((deltas - m) ** 2) / (2 * sigma**2))
            blocked = np.exp(-((deltas - m + p.body_db) ** 2) / (2 * sigma**2))
            density = ((1 - p.blocked) * clear + p.blocked * blocked) / (
                sigma * math.sqrt(2 * math.pi)
            )
            heard = (1 - p.blocked) * _normal_cdf((mean - threshold) / sigma) + p.blocked * (
                _normal_cdf((mean - p.body_db - threshold) / sigma)
            )
            columns.append((density / np.maximum(heard, 1e-3)[None, :]).mean(axis=1))
            means.append(float(mean.mean()))
        g = np.stack(columns, axis=1)
        self.means[scanner_id] = np.array(means, dtype=np.float32)
        self.tables[scanner_id] = (
            ((1 - p.outlier) * g + p.outlier / p.outlier_range_db) ** self.temper
        ).astype(np.float32)

    def estimator(self, liveness: Liveness | None = None) -> FusedEstimator:
        return FusedEstimator(self, liveness)


def _aisle_cells(
    space: Space, cell_m: float, max_cells: int
) -> tuple[dict[tuple[int, int], Point], tuple[float, float]]:
    """The centres of a grid over the floor that are in no zone, by (column, row), at
    most ``max_cells`` of them (the cells grow until they fit); and a cell's width and
    depth."""
    plan = space.plan
    x0, y0, x1, y1 = plan.bounds()
    size = cell_m
    while True:
        nx = max(1, round((x1 - x0) / size))
        ny = max(1, round((y1 - y0) / size))
        cells = {}
        for j in range(ny):
            for i in range(nx):
                x = x0 + (i + 0.5) * (x1 - x0) / nx
                y = y0 + (j + 0.5) * (y1 - y0) / ny
                if plan.zone_at(x, y) is None:
                    cells[(i, j)] = (x, y)
        if len(cells) <= max_cells:
            return cells, ((x1 - x0) / nx, (y1 - y0) / ny)
        size *= 1.1


def _normal_cdf(x: NDArray[np.float64]) -> NDArray[np.float64]:
    erf = np.array([math.erf(v) for v in (x / math.sqrt(2.0)).ravel()]).reshape(x.shape)
    return 0.5 * (1.0 + erf)


def _expm(a: NDArray[np.float64]) -> NDArray[np.float64]:
    """e^A for a rate matrix times a time (scaling and squaring of a Taylor series)."""
    norm = float(np.abs(a).sum(axis=1).max()) if a.size else 0.0
    squarings = max(0, math.ceil(math.log2(norm / 0.5))) if norm > 0.5 else 0
    a = a / (2**squarings)
    result = np.eye(len(a))
    term = np.eye(len(a))
    for k in range(1, 12):
        term = term @ a / k
        result = result + term
    for _ in range(squarings):
        result = result @ result
    result = np.maximum(result, 0.0)
    result /= result.sum(axis=1, keepdims=True)  # each row a distribution, exactly
    return result


class FusedEstimator:
    __slots__ = (
        "_entered",
        "_gap",
        "_gone",
        "_heard",
        "_live",
        "_model",
        "_offset",
        "_offset_n",
        "_p",
        "_pending",
        "_shift",
        "_strong",
        "_t",
        "_zone",
    )

    def __init__(self, model: FusedModel, liveness: Liveness | None = None) -> None:
        self._model = model
        self._live = liveness
        self._strong: tuple[str, float, float] | None = None
        """The scanner that heard this shopper best lately: (scanner, rssi − tx, when)."""
        self._p: Vector = model.start.copy()
        self._t: float | None = None
        self._heard = -1e300
        self._gone = False
        self._gap = 0.0
        """The usual time between this phone's advertisements (a moving average)."""
        self._zone: int | None = None
        self._offset = 0.0
        """The sum of this phone's residuals beyond the store's (see ``offset``)."""
        self._offset_n = 0
        self._shift = 0
        """``offset`` rounded: what each reading's ``rssi − tx`` is corrected by."""
        self._entered = 0.0
        self._pending: tuple[int | None, float] | None = None
        """A change the posterior asks for (to that zone, None: out), since when."""

    @property
    def zone(self) -> str | None:
        return None if self._zone is None else self._model.zone_ids[self._zone]

    @property
    def offset(self) -> float:
        """How much stronger (dB) than the store's phones the scanners hear this one."""
        params = self._model.params
        value = self._offset / (self._offset_n + params.offset_prior)
        return max(-params.offset_limit_db, min(params.offset_limit_db, value))

    @property
    def learns_offset(self) -> bool:
        """Whether this phone's ``offset`` is learnt (enough scanners in range)."""
        return self._model.learn_offset

    @property
    def last_heard(self) -> float:
        return self._heard

    @property
    def gone(self) -> bool:
        return self._gone

    def posterior(self) -> dict[str, float]:
        model = self._model
        p = self._p.astype(np.float64)
        p /= p.sum()
        out = {zone: float(p[k]) for k, zone in enumerate(model.zone_ids)}
        out["elsewhere"] = float(p[model.zones :].sum())
        return out

    def observe(self, scanner: str, rssi: int, tx_power: int, at: float) -> None:
        table = self._model.tables.get(scanner)
        if table is None:
            return
        self._predict(at)
        if at > self._heard:
            gap = at - self._heard
            if gap > _SAME_ADVERTISEMENT_S:  # a new advertisement: follow the phone's pace
                gap = min(gap, _LONGEST_GAP_S)
                self._gap = gap if self._gap == 0.0 else 0.8 * self._gap + 0.2 * gap
            self._heard = at
        self._gone = False
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
        model, params = self._model, self._model.params
        seen = delta - self._shift
        p = self._p * table[min(_WIDTH - 1, max(0, seen - _LOW))]
        total = float(p.sum())
        if total <= 0 or not math.isfinite(total):
            p = model.start.copy()
        else:
            p /= total
        np.maximum(p, params.floor, out=p)
        self._p = p
        if model.learn_offset:
            expected = float(p.dot(model.means[scanner]))
            if expected >= params.offset_near_db:
                residual = delta - expected
                model.residual += params.offset_store_rate * (residual - model.residual)
                self._offset += residual - model.residual
                self._offset_n += 1
                self._shift = round(self.offset)
        self._decide(max(at, self._t or at))

    def advance(self, at: float) -> None:
        self._predict(at)
        self._decide(at)

    def _predict(self, at: float) -> None:
        last = self._t
        if last is None:
            self._t = at
            return
        dt = at - last
        if dt < 0.5 * STEP_S:
            return  # the same advertisement heard by several scanners, or out of order
        self._t = at
        model, p = self._model, self._p
        while dt > LONGEST_STEP_S:
            p = p @ model.step(LONGEST_STEP_S)
            dt -= LONGEST_STEP_S
        self._p = p @ model.step(dt)

    def _decide(self, now: float) -> None:
        params = self._model.params
        quiet = now - self._heard
        if quiet >= params.exit_timeout_s or (
            quiet >= max(params.gone_after_s, params.gone_gaps * self._gap)
            and not self._strong_scanner_down(now)
        ):
            self._zone = self._pending = None
            self._gone = True
            return
        zones = self._p[: self._model.zones]
        best = int(zones.argmax())
        current = self._zone
        # where the posterior says to go now (current: stay), held for a while to count
        target: int | None
        if current is None:
            target = best if zones[best] >= params.enter else None
        elif (
            best != current
            and zones[best] >= params.enter
            and zones[best] >= zones[current] + params.lead
        ):
            target = best
        elif zones[current] < params.leave:
            target = best if zones[best] >= params.enter else None
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
