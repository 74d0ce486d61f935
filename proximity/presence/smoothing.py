"""RSSI smoothing, and distance from RSSI.

Raw RSSI from a phone in a pocket jumps by 10 dB from one advertisement to
the next. Two filters:

- :class:`RssiFilter`, a trimmed running mean: like the AltBeacon library's
  running average, it keeps the samples of the last ``window`` and averages
  them after dropping the top and bottom ``trim`` fraction, so one reflection
  or one body-blocked packet does not move a shopper between zones;
- :class:`AsymmetricFilter`, exponential smoothing that trusts a rise more than
  a drop (``rise`` > ``fall``): a body or a shelf between phone and scanner only
  ever lowers RSSI, so a sudden drop is more likely blocking than leaving.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from datetime import datetime, timedelta


def estimate_distance(tx_power: int, rssi: float, exponent: float = 2.0) -> float:
    """Metres from the log-distance model: ``tx_power`` is the calibrated RSSI at 1 m.

    A rough figure (indoors the exponent is 2-4 and bodies add 5-10 dB), good for
    ordering and thresholds, not for positioning.
    """
    if exponent <= 0:
        raise ValueError("the path-loss exponent must be positive")
    if math.isinf(rssi):
        return math.inf
    return float(10 ** ((tx_power - rssi) / (10 * exponent)))


class AsymmetricFilter:
    def __init__(self, rise: float = 0.5, fall: float = 0.15) -> None:
        if not (0 < fall <= 1 and 0 < rise <= 1):
            raise ValueError("rise and fall must be in (0, 1]")
        self._rise = rise
        self._fall = fall
        self._value = -math.inf
        self.last_seen: datetime | None = None
        """When the latest sample was heard (None before the first)."""

    def add(self, rssi: int, at: datetime) -> float:
        if self.last_seen is None or at > self.last_seen:
            self.last_seen = at
        if math.isinf(self._value):
            self._value = float(rssi)
        else:
            alpha = self._rise if rssi > self._value else self._fall
            self._value += alpha * (rssi - self._value)
        return self._value

    @property
    def value(self) -> float:
        return self._value


class RssiFilter:
    def __init__(self, window: timedelta, trim: float = 0.1, max_samples: int = 64) -> None:
        if window <= timedelta(0):
            raise ValueError("window must be positive")
        if not 0.0 <= trim < 0.5:
            raise ValueError("trim must be in [0, 0.5)")
        self._window = window
        self._trim = trim
        self._max = max_samples
        self._samples: deque[tuple[datetime, int]] = deque()
        self._sum = 0
        """Of the samples' RSSI: the mean without sorting while nothing is trimmed."""
        self._sorted: list[int] | None = None
        """The samples' RSSI in order while there are enough of them to trim, kept as
        samples come and go (a beacon advertising every 100 ms has 50 samples in a 5 s
        window: sorting them at every sample would cost more than the rest of the
        pipeline); None while nothing is trimmed."""
        self.last_seen: datetime | None = None
        """When the latest sample was heard (None before the first)."""

    def add(self, rssi: int, at: datetime) -> float:
        """Record one sample and return the smoothed value."""
        samples = self._samples
        last = self.last_seen
        if last is not None and at < last:
            at = last  # out-of-order samples count as "now"
        else:
            self.last_seen = at
        if len(samples) == self._max:
            self._drop(samples.popleft()[1])
        samples.append((at, rssi))
        self._sum += rssi
        if self._sorted is not None:
            insort(self._sorted, rssi)
        horizon = at - self._window  # expire what fell out of the window (one stays)
        while samples[0][0] < horizon and len(samples) > 1:
            self._drop(samples.popleft()[1])
        n = len(samples)
        if n * self._trim < 1.0:  # nothing to trim: the mean
            self._sorted = None
            return self._sum / n
        return self.value

    def _drop(self, rssi: int) -> None:
        self._sum -= rssi
        ordered = self._sorted
        if ordered is not None:
            del ordered[bisect_left(ordered, rssi)]

    @property
    def value(self) -> float:
        """The trimmed mean of the samples in the window (-inf when empty)."""
        n = len(self._samples)
        if not n:
            return -math.inf
        cut = int(n * self._trim)
        if not cut:
            return self._sum / n
        if self._sorted is None:
            self._sorted = sorted(r for _, r in self._samples)
        kept = self._sorted[cut : n - cut]
        return sum(kept) / len(kept)
