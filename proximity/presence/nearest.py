"""``method = "nearest"``: the nearest scanner wins, with hysteresis (the field's way).

Home Assistant's Bermuda and room-assistant place a device in the area of the
scanner that hears it nearest. Per shopper and scanner, RSSI is smoothed, turned
into a distance by the path-loss model, and the last few distances are kept; a
challenger scanner takes over from the incumbent only when its *worst* recent
distance beats the incumbent's *best* by ``margin`` (20 %: Bermuda's 15–30 %). The
shopper is in the zone the winning scanner hangs over (none: the aisles) while the
distance is within that zone's reach (with the same hysteresis).

Its known weaknesses are why it is a comparator: it flaps between two zones a
shopper stands between, and it needs one scanner per zone. A scanner that goes
silent keeps its shoppers (its last distances stand) until another scanner wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from proximity.presence.estimate import (
    Calibration,
    Liveness,
    Space,
    distance_from_rssi,
)


@dataclass(frozen=True, slots=True)
class NearestParams:
    margin: float = 0.2
    """A challenger must be this much nearer (worst vs best) to take over."""
    smoothing: float = 0.2
    """Weight of a new RSSI sample in the per-scanner average."""
    window_s: float = 5.0
    """How far back "recent" distances go."""
    stale_s: float = 10.0
    """A scanner that has not heard the shopper this long no longer competes (unless it
    is down: a silent scanner keeps its last distances)."""
    slack_m: float = 3.0
    """The shopper is in the winning scanner's zone when its distance is within the zone's
    reach (to its farthest point) and this; out once beyond the reach by ``margin`` more."""
    exit_timeout_s: float = 15.0
    """Nothing heard of the shopper for this long: gone."""
    warmup_s: float = 2.0
    """No decision before the shopper has been heard this long (the scanners that hear
    them all get their say, not just the first)."""


@dataclass(slots=True)
class _Track:
    rssi: float
    last: float
    recent: list[tuple[float, float]] = field(default_factory=list)
    """(time, distance), oldest first, at most a window's worth (and 5)."""


class NearestEstimator:
    __slots__ = (
        "_calibration",
        "_first",
        "_gone",
        "_incumbent",
        "_live",
        "_params",
        "_space",
        "_tracks",
        "_zone",
    )

    def __init__(
        self,
        space: Space,
        liveness: Liveness,
        calibration: Calibration,
        params: NearestParams | None = None,
    ) -> None:
        self._space = space
        self._live = liveness
        self._calibration = calibration
        self._params = params or NearestParams()
        self._tracks: dict[str, _Track] = {}
        self._incumbent: str | None = None
        self._zone: str | None = None
        self._first: float | None = None
        self._gone = False

    @property
    def zone(self) -> str | None:
        return self._zone

    @property
    def last_heard(self) -> float:
        return max((t.last for t in self._tracks.values()), default=-1e300)

    @property
    def gone(self) -> bool:
        return self._gone

    @property
    def incumbent(self) -> str | None:
        """The scanner the shopper is nearest, as decided."""
        return self._incumbent

    def observe(self, scanner: str, rssi: int, tx_power: int, at: float) -> None:
        p = self._params
        self._gone = False
        track = self._tracks.get(scanner)
        if track is None or at - track.last > p.stale_s:
            track = self._tracks[scanner] = _Track(float(rssi), at)
        else:
            track.rssi += p.smoothing * (rssi - track.rssi)
            track.last = max(track.last, at)
        offset, exponent = self._calibration.params(scanner)
        track.recent.append((at, distance_from_rssi(track.rssi, tx_power, offset, exponent)))
        while len(track.recent) > 5 or track.recent[0][0] < at - p.window_s:
            track.recent.pop(0)
        self._decide(at)

    def advance(self, at: float) -> None:
        if self._zone is not None or self._incumbent is not None:
            self._decide(at)

    def _competing(self, scanner: str, track: _Track, now: float) -> bool:
        fresh = now - track.last <= self._params.stale_s
        return fresh or not self._live.alive(scanner, now)

    def _decide(self, now: float) -> None:
        p = self._params
        if now - self.last_heard >= p.exit_timeout_s:
            self._incumbent, self._zone, self._first = None, None, None
            self._tracks.clear()
            self._gone = True
            return
        if self._first is None:
            self._first = now
        if now - self._first < p.warmup_s:
            return
        tracks = {s: t for s, t in self._tracks.items() if self._competing(s, t, now)}
        if not tracks:
            return
        nearest = min(tracks, key=lambda s: tracks[s].recent[-1][1])
        incumbent = self._incumbent
        if incumbent is None or incumbent not in tracks:
            self._incumbent = nearest
        elif nearest != incumbent:
            worst = max(d for _, d in tracks[nearest].recent)
            best = min(d for _, d in tracks[incumbent].recent)
            if worst < best * (1.0 - p.margin):
                self._incumbent = nearest
        winner = self._incumbent
        assert winner is not None
        zone = self._space.scanner_zone.get(winner)
        reach = self._space.reach.get(winner, 0.0)
        distance = tracks[winner].recent[-1][1]
        if zone is None:
            self._zone = None
        elif zone == self._zone:  # stays until clearly beyond the zone's reach
            if distance > reach * (1.0 + p.margin) + p.slack_m:
                self._zone = None
        elif distance <= reach + p.slack_m:
            self._zone = zone

    def posterior(self) -> dict[str, float]:
        """Not a probability: 1 for the zone decided, 0 for the others."""
        return {s: 1.0 if s == (self._zone or "elsewhere") else 0.0 for s in self._space.states}
