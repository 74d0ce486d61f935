"""The per-zone presence state machine of one shopper.

    ABSENT ──smoothed RSSI ≥ enter_rssi──▶ PRESENT ──▶ dwell at each threshold
       ▲                                      │
       └── smoothed RSSI < exit_rssi, or ─────┘
           nothing heard for exit_timeout

``exit_rssi`` sits below ``enter_rssi``: RSSI noise inside that band
(the hysteresis) never makes a shopper flap in and out of a zone. Time comes
only from the readings and from :meth:`ZonePresence.tick`, never from a clock
read here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

from proximity.presence.smoothing import AsymmetricFilter, RssiFilter


@dataclass(frozen=True, slots=True)
class PresenceConfig:
    enter_rssi: float = -75.0
    exit_rssi: float = -85.0
    exit_timeout: timedelta = timedelta(seconds=15)
    """Nothing heard for this long: the shopper left (the most it can be when learned)."""
    window: timedelta = timedelta(seconds=5)
    trim: float = 0.1
    filter: Literal["trimmed_mean", "asymmetric"] = "trimmed_mean"
    rise: float = 0.5
    fall: float = 0.15
    exit_after_missed: int = 0
    """0: the fixed ``exit_timeout``. N: the shopper left after N advertising intervals
    of their phone (learned from the samples) without a sample, but never sooner
    than ``min_exit_timeout`` nor later than ``exit_timeout``."""
    min_exit_timeout: timedelta = timedelta(seconds=3)

    def __post_init__(self) -> None:
        if self.exit_rssi > self.enter_rssi:
            raise ValueError("exit_rssi must not be above enter_rssi (hysteresis)")
        if self.exit_timeout <= timedelta(0):
            raise ValueError("exit_timeout must be positive")
        if self.exit_after_missed < 0:
            raise ValueError("exit_after_missed must be 0 or more")

    def make_filter(self) -> RssiFilter | AsymmetricFilter:
        if self.filter == "asymmetric":
            return AsymmetricFilter(self.rise, self.fall)
        return RssiFilter(self.window, self.trim)


INF = float("inf")


class TransitionKind(StrEnum):
    ENTER = "enter"
    DWELL = "dwell"
    EXIT = "exit"


@dataclass(frozen=True, slots=True)
class Transition:
    kind: TransitionKind
    zone: str
    at: datetime
    dwell_s: float = 0.0
    threshold_s: float | None = None


class DwellSchedule:
    """Which dwell thresholds a stay in one zone has reached: each threshold once per stay.

    The threshold state machine and the estimators of :mod:`proximity.presence` share it,
    so every presence method emits the dwells the rules use the same way."""

    __slots__ = ("_last_dwell_s", "_next_for", "next_dwell", "zone")

    def __init__(self, zone: str) -> None:
        self.zone = zone
        self._last_dwell_s = -1.0
        self._next_for: Sequence[float] | None = None
        self.next_dwell = INF
        """The next dwell threshold not yet reached, for the thresholds ``_next_for``."""

    def reset(self) -> None:
        """A new stay begins: every threshold is ahead again."""
        self._last_dwell_s = -1.0
        self._next_for = None

    def reached(
        self, entered: datetime, now: datetime, thresholds: Sequence[float]
    ) -> list[Transition]:
        """The dwell transitions of the thresholds reached since the last call."""
        stay = (now - entered).total_seconds()
        if thresholds is self._next_for and stay < self.next_dwell:
            return []  # the usual case, every tick: nothing due yet
        last = self._last_dwell_s
        due = sorted(t for t in thresholds if last < t <= stay)
        self._next_for = thresholds
        self.next_dwell = min((t for t in thresholds if t > max(last, *due, -1.0)), default=INF)
        out = []
        for threshold in due:
            out.append(
                Transition(
                    TransitionKind.DWELL, self.zone, now, dwell_s=stay, threshold_s=threshold
                )
            )
            self._last_dwell_s = threshold
        return out


class ZonePresence:
    """Presence of one shopper in one zone."""

    def __init__(
        self,
        zone: str,
        config: PresenceConfig,
        thresholds: Callable[[], Sequence[float]] = tuple,
    ) -> None:
        self.zone = zone
        self._config = config
        self._thresholds = thresholds
        self._current = thresholds()
        self._filter = config.make_filter()
        self._entered_at: datetime | None = None
        self._dwell = DwellSchedule(zone)
        self._due: datetime | None = None
        """No tick before this instant can emit anything (None: not known, look)."""
        self._interval_s: float | None = None
        """The phone's advertising interval as heard here (an exponential average)."""

    def refresh_thresholds(self) -> None:
        """The rules changed: take the dwell thresholds anew (they are read once, not at
        every sample, since a table only changes on a reload)."""
        self._current = self._thresholds()
        self._due = None

    @property
    def present(self) -> bool:
        return self._entered_at is not None

    @property
    def last_seen(self) -> datetime | None:
        return self._filter.last_seen

    @property
    def smoothed(self) -> float:
        """The smoothed RSSI heard here (-inf before any sample)."""
        return self._filter.value

    def withdraw(self) -> None:
        """Take back the enter just observed (another zone holds the shopper): absent
        again, the samples kept, so the next sample can claim the zone anew."""
        self._entered_at = None
        self._due = None

    def leave(self, at: datetime) -> Transition:
        """The shopper moved to another zone: exit now, the stay ending at the last sample."""
        return self._exit(at, self._filter.last_seen or at)

    @property
    def entered_at(self) -> datetime | None:
        return self._entered_at

    @property
    def exit_timeout(self) -> timedelta:
        """How long without a sample before the shopper has left (learned, if configured)."""
        config = self._config
        if not config.exit_after_missed or self._interval_s is None:
            return config.exit_timeout
        learned = timedelta(seconds=config.exit_after_missed * self._interval_s)
        return max(config.min_exit_timeout, min(config.exit_timeout, learned))

    def observe(self, rssi: int, at: datetime) -> list[Transition]:
        if self._config.exit_after_missed:
            self._learn_interval(at)
            self._due = None  # a shorter learned interval can bring the exit forward
        smoothed = self._filter.add(rssi, at)
        last = self._filter.last_seen
        if last is not None and last > at:
            at = last  # an out-of-order sample counts as "now"
        if self._entered_at is None:
            if smoothed >= self._config.enter_rssi:
                self._entered_at = at
                self._dwell.reset()
                self._due = None
                return [Transition(TransitionKind.ENTER, self.zone, at)]
            return []
        if smoothed < self._config.exit_rssi:
            return [self._exit(at, at)]
        return self._dwells(at)

    def _learn_interval(self, at: datetime) -> None:
        previous = self._filter.last_seen
        if previous is not None and at > previous:
            gap = (at - previous).total_seconds()
            if gap < self._config.exit_timeout.total_seconds():  # not a return after a gap
                self._interval_s = (
                    gap if self._interval_s is None else 0.8 * self._interval_s + 0.2 * gap
                )

    def tick(self, now: datetime) -> list[Transition]:
        entered = self._entered_at
        if entered is None:
            return []
        due = self._due
        if due is not None and now < due:
            return []  # the usual case, every tick: nothing can be due yet
        last = self._filter.last_seen
        exit_timeout = self.exit_timeout
        if last is not None and now - last >= exit_timeout:
            # Dwell thresholds crossed before the shopper went quiet still count.
            return [*self._dwells(last), self._exit(now, last)]
        out = self._dwells(now)
        # Samples only move the exit later and reached thresholds only move the next dwell
        # later, so until the earlier of the two nothing can happen: ticks skip the work.
        # What can bring either forward (an enter, new rules, a learned interval) clears it.
        due = (last or now) + exit_timeout
        next_dwell = self._dwell.next_dwell
        if next_dwell != INF:
            due = min(due, entered + timedelta(seconds=next_dwell))
        self._due = due
        return out

    def _dwells(self, now: datetime) -> list[Transition]:
        assert self._entered_at is not None
        return self._dwell.reached(self._entered_at, now, self._current)

    def _exit(self, at: datetime, last_seen: datetime) -> Transition:
        assert self._entered_at is not None
        stay = max(0.0, (last_seen - self._entered_at).total_seconds())
        self._entered_at = None
        self._dwell.reset()
        self._due = None
        self._filter = self._config.make_filter()
        return Transition(TransitionKind.EXIT, self.zone, at, dwell_s=stay)
