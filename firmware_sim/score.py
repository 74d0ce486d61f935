"""Scoring presence against ground truth: how often the daemon's journey events are right.

Pure functions over plain values (seconds since the run began), so they are easy
to test and to reuse on a recorded journey log:

- **Expected transitions** come from the true stays: an enter at each stay's
  start, an exit at its end, and a dwell at ``start + T`` for each dwell
  threshold ``T`` the rules use in that zone that the stay reached. Stays shorter
  than ``min_stay_s`` (walking through a zone on the way elsewhere) are *optional*:
  an event that matches one is neither right nor wrong, and missing one costs
  nothing — presence is not meant to fire on a shopper who crosses a zone in
  three seconds, and it may.
- **Matching**: an event matches an expected transition of the same shopper,
  kind, zone (and threshold, for dwell) whose time is within ``tolerance_s``;
  each transition matches at most one event (a maximum matching, found greedily
  in time order per key, which is optimal for interval-window matching on a line).
  Required and optional transitions compete for the events together. The
  default window is 20 s, not 10: the daemon ends a stay it stops hearing after
  its exit timeout (15 s by default), so a 10 s window would count nearly every
  such exit as one false event plus one missed exit instead of as a late one.
- **precision** = matched / (matched + false events), **recall** = matched /
  (matched + missed required transitions), per kind; None when undefined.
- **latency** = event time − true time of matched enters and exits (p50/p90/p99;
  negative when presence fired early, e.g. RSSI rising as the shopper approaches).
- **wrong-zone time**: the daemon's current zone for a shopper is the most
  recently entered zone not yet exited (none if none); the share of all
  shoppers' in-store time during which it differs from the true zone (which is
  none in the aisles).
- **flaps**: a flap is an exit of zone Z by a shopper followed by that shopper's
  next enter of Z within ``flap_window_s`` (30 s by default), unless the ground
  truth has the shopper really step out of Z and back in about then (two true
  stays in Z whose gap overlaps [exit − tolerance, enter + tolerance]). A zone
  flickering out and in, and an A → B → A switch between neighbours, each count one
  flap in the zone that was left and re-entered. Reported per shopper-hour of
  in-store time.
- **false exits in outages**: with scanners down for part of the run (the
  ``node_failure`` scenario), the exits of a zone that happen while a scanner is
  down (or within :data:`OUTAGE_SLACK_S`, two exit timeouts, of it coming back)
  while the shopper is truly still in that zone and stays at least the tolerance
  longer: presence that mistook a silent scanner for a shopper leaving. A late exit
  (after the true one) is not counted here; it is in the exit latency and precision.
"""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from firmware_sim.crowd import Stay

Kind = Literal["enter", "exit", "dwell"]
KINDS: tuple[Kind, ...] = ("enter", "exit", "dwell")
DEFAULT_TOLERANCE_S = 20.0
DEFAULT_MIN_STAY_S = 10.0
FLAP_WINDOW_S = 30.0
OUTAGE_SLACK_S = 30.0


@dataclass(frozen=True, slots=True)
class Observed:
    """One journey event of the daemon, reduced to what scoring needs."""

    shopper: str
    kind: Kind
    zone: str
    at: float
    threshold: float | None = None


@dataclass(frozen=True, slots=True)
class Expected:
    shopper: str
    kind: Kind
    zone: str
    at: float
    threshold: float | None = None
    required: bool = True


@dataclass(frozen=True, slots=True)
class KindScore:
    matched: int
    false: int
    missed: int
    ignored: int
    """Events that matched an optional transition (a pass-through)."""

    @property
    def precision(self) -> float | None:
        total = self.matched + self.false
        return None if total == 0 else self.matched / total

    @property
    def recall(self) -> float | None:
        total = self.matched + self.missed
        return None if total == 0 else self.matched / total

    def to_json(self) -> dict[str, Any]:
        return {
            "matched": self.matched,
            "false": self.false,
            "missed": self.missed,
            "ignored": self.ignored,
            "precision": _round(self.precision),
            "recall": _round(self.recall),
        }


@dataclass(frozen=True, slots=True)
class Latency:
    count: int
    p50: float | None
    p90: float | None
    p99: float | None
    p95: float | None = None

    @classmethod
    def of(cls, values: Sequence[float]) -> Latency:
        ordered = sorted(values)
        return cls(
            len(ordered),
            percentile(ordered, 50),
            percentile(ordered, 90),
            percentile(ordered, 99),
            percentile(ordered, 95),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "p50": _round(self.p50),
            "p90": _round(self.p90),
            "p95": _round(self.p95),
            "p99": _round(self.p99),
        }


@dataclass(frozen=True, slots=True)
class Score:
    kinds: Mapping[str, KindScore]
    latency: Mapping[str, Latency]
    """"enter", "exit", and "all" (enters and exits together)."""
    wrong_zone_s: float
    in_store_s: float
    flaps: int = 0
    outage_false_exits: int | None = None
    """False exits during scanner outages (None: no scanner went down)."""

    @property
    def wrong_zone(self) -> float | None:
        return None if self.in_store_s == 0 else self.wrong_zone_s / self.in_store_s

    @property
    def shopper_hours(self) -> float:
        return self.in_store_s / 3600

    @property
    def flaps_per_shopper_hour(self) -> float | None:
        return None if self.in_store_s == 0 else self.flaps / self.shopper_hours

    def to_json(self) -> dict[str, Any]:
        return {
            **{kind: self.kinds[kind].to_json() for kind in KINDS},
            "latency_s": {name: lat.to_json() for name, lat in self.latency.items()},
            "wrong_zone": _round(self.wrong_zone),
            "in_store_s": round(self.in_store_s, 1),
            "flaps": self.flaps,
            "flaps_per_shopper_hour": _round(self.flaps_per_shopper_hour),
            "outage_false_exits": self.outage_false_exits,
        }


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile of sorted values, linearly interpolated; None when empty."""
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


Thresholds = Mapping[str, Sequence[float]] | Callable[[str], Sequence[float]]


def _thresholds(thresholds: Thresholds, zone: str) -> Sequence[float]:
    if callable(thresholds):
        return thresholds(zone)
    return thresholds.get(zone, ())


def expected_transitions(
    truth: Mapping[str, Sequence[Stay]],
    thresholds: Thresholds,
    min_stay_s: float = DEFAULT_MIN_STAY_S,
) -> list[Expected]:
    out: list[Expected] = []
    for shopper, stays in truth.items():
        for stay in stays:
            required = stay.end - stay.start >= min_stay_s
            out.append(Expected(shopper, "enter", stay.zone, stay.start, None, required))
            out.append(Expected(shopper, "exit", stay.zone, stay.end, None, required))
            for threshold in _thresholds(thresholds, stay.zone):
                if stay.start + threshold <= stay.end:
                    out.append(
                        Expected(
                            shopper, "dwell", stay.zone, stay.start + threshold, threshold, required
                        )
                    )
    return out


def match_times(
    events: Sequence[float], truths: Sequence[float], tolerance: float
) -> list[tuple[int, int]]:
    """A maximum matching of sorted event times to sorted true times within ``tolerance``:
    (event index, truth index) pairs."""
    pairs: list[tuple[int, int]] = []
    i = j = 0
    while i < len(events) and j < len(truths):
        delta = events[i] - truths[j]
        if abs(delta) <= tolerance:
            pairs.append((i, j))
            i += 1
            j += 1
        elif delta < 0:
            i += 1
        else:
            j += 1
    return pairs


_Key = tuple[str, Kind, str, float | None]


def score(
    truth: Mapping[str, Sequence[Stay]],
    visits: Mapping[str, Sequence[tuple[float, float]]],
    observed: Iterable[Observed],
    thresholds: Thresholds,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    min_stay_s: float = DEFAULT_MIN_STAY_S,
    outages: Sequence[tuple[float, float]] = (),
    flap_window_s: float = FLAP_WINDOW_S,
) -> Score:
    """Score ``observed`` events against ``truth`` (true stays per shopper) and ``visits``
    (in-store intervals per shopper); ``outages``: when scanners were down."""
    observed = list(observed)
    required: dict[_Key, list[float]] = defaultdict(list)
    optional: dict[_Key, list[float]] = defaultdict(list)
    for e in expected_transitions(truth, thresholds, min_stay_s):
        (required if e.required else optional)[(e.shopper, e.kind, e.zone, e.threshold)].append(
            e.at
        )
    events: dict[_Key, list[float]] = defaultdict(list)
    for o in observed:
        threshold = o.threshold if o.kind == "dwell" else None
        events[(o.shopper, o.kind, o.zone, threshold)].append(o.at)

    counts = {kind: [0, 0, 0, 0] for kind in KINDS}  # matched, false, missed, ignored
    latencies: dict[str, list[float]] = {"enter": [], "exit": []}
    for key in set(required) | set(optional) | set(events):
        kind = key[1]
        got = sorted(events.get(key, ()))
        # required and optional transitions compete for the events together
        want = sorted(
            [(t, True) for t in required.get(key, ())] + [(t, False) for t in optional.get(key, ())]
        )
        pairs = match_times(got, [t for t, _ in want], tolerance_s)
        hits = [(i, j) for i, j in pairs if want[j][1]]
        if kind in latencies:
            latencies[kind].extend(got[i] - want[j][0] for i, j in hits)
        c = counts[kind]
        c[0] += len(hits)
        c[1] += len(got) - len(pairs)
        c[2] += len(required.get(key, ())) - len(hits)
        c[3] += len(pairs) - len(hits)

    wrong, total = wrong_zone_time(truth, visits, observed)
    return Score(
        kinds={kind: KindScore(*c) for kind, c in counts.items()},
        latency={
            "enter": Latency.of(latencies["enter"]),
            "exit": Latency.of(latencies["exit"]),
            "all": Latency.of(latencies["enter"] + latencies["exit"]),
        },
        wrong_zone_s=wrong,
        in_store_s=total,
        flaps=count_flaps(truth, observed, flap_window_s, tolerance_s),
        outage_false_exits=(
            premature_exits(truth, observed, outages, tolerance_s) if outages else None
        ),
    )


def premature_exits(
    truth: Mapping[str, Sequence[Stay]],
    observed: Iterable[Observed],
    outages: Sequence[tuple[float, float]],
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> int:
    """Exits during an outage (or :data:`OUTAGE_SLACK_S` after) of a zone the shopper is
    truly in at that moment and stays in for more than ``tolerance_s`` longer."""
    count = 0
    for o in observed:
        if o.kind != "exit" or not any(a <= o.at <= b + OUTAGE_SLACK_S for a, b in outages):
            continue
        if any(
            st.zone == o.zone and st.start <= o.at and st.end > o.at + tolerance_s
            for st in truth.get(o.shopper, ())
        ):
            count += 1
    return count


def count_flaps(
    truth: Mapping[str, Sequence[Stay]],
    observed: Iterable[Observed],
    window_s: float = FLAP_WINDOW_S,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> int:
    """Exits followed by a re-enter of the same zone within ``window_s`` that the truth
    does not explain (see the module's docstring)."""
    events: dict[tuple[str, str], list[Observed]] = defaultdict(list)
    for o in observed:
        if o.kind in ("enter", "exit"):
            events[(o.shopper, o.zone)].append(o)
    gaps: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for shopper, stays in truth.items():
        by_zone: dict[str, list[Stay]] = defaultdict(list)
        for stay in stays:
            by_zone[stay.zone].append(stay)
        for zone, zone_stays in by_zone.items():
            ordered = sorted(zone_stays, key=lambda st: st.start)
            gaps[(shopper, zone)] = [(a.end, b.start) for a, b in itertools.pairwise(ordered)]
    order = {"exit": 0, "enter": 1}
    flaps = 0
    for key, found in events.items():
        found.sort(key=lambda e: (e.at, order[e.kind]))
        for left, right in itertools.pairwise(found):
            if left.kind != "exit" or right.kind != "enter" or right.at - left.at > window_s:
                continue
            lo, hi = left.at - tolerance_s, right.at + tolerance_s
            if not any(end <= hi and start >= lo for end, start in gaps.get(key, ())):
                flaps += 1
    return flaps


def _truth_timeline(stays: Sequence[Stay]) -> list[tuple[float, str | None]]:
    out: list[tuple[float, str | None]] = []
    for stay in sorted(stays, key=lambda s: s.start):
        out.append((stay.start, stay.zone))
        out.append((stay.end, None))
    # a stay that starts where the previous ends must win over that one's "None"
    out.sort(key=lambda item: (item[0], item[1] is not None))
    return out


def daemon_timeline(events: Sequence[Observed]) -> list[tuple[float, str | None]]:
    """The daemon's current zone of one shopper over time: the last entered, not exited."""
    present: list[str] = []
    out: list[tuple[float, str | None]] = []
    order = {"exit": 0, "enter": 1}
    for e in sorted((e for e in events if e.kind in order), key=lambda e: (e.at, order[e.kind])):
        if e.kind == "enter":
            if e.zone in present:
                present.remove(e.zone)
            present.append(e.zone)
        elif e.zone in present:
            present.remove(e.zone)
        out.append((e.at, present[-1] if present else None))
    return out


def _zone_at(
    timeline: Sequence[tuple[float, str | None]], times: Sequence[float], t: float
) -> str | None:
    i = bisect.bisect_right(times, t) - 1
    return None if i < 0 else timeline[i][1]


def wrong_zone_time(
    truth: Mapping[str, Sequence[Stay]],
    visits: Mapping[str, Sequence[tuple[float, float]]],
    observed: Iterable[Observed],
) -> tuple[float, float]:
    """(seconds the daemon's current zone differed from the truth, seconds in store)."""
    by_shopper: dict[str, list[Observed]] = defaultdict(list)
    for o in observed:
        by_shopper[o.shopper].append(o)
    wrong = total = 0.0
    for shopper, intervals in visits.items():
        true_line = _truth_timeline(truth.get(shopper, ()))
        seen_line = daemon_timeline(by_shopper.get(shopper, ()))
        true_times = [t for t, _ in true_line]
        seen_times = [t for t, _ in seen_line]
        cuts = sorted(set(true_times) | set(seen_times))
        for start, end in intervals:
            total += end - start
            points = [start, *(t for t in cuts if start < t < end), end]
            for a, b in itertools.pairwise(points):
                if _zone_at(true_line, true_times, a) != _zone_at(seen_line, seen_times, a):
                    wrong += b - a
    return wrong, total
