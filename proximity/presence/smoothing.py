"""RSSI smoothing: a trimmed running mean over a time window.

Raw RSSI from a phone in a pocket jumps by 10 dB from one advertisement to
the next. Like the AltBeacon library's running average, the filter keeps the
samples of the last ``window`` and averages them after dropping the top and
bottom ``trim`` fraction, so one reflection or one body-blocked packet does
not move a shopper between zones.
"""

from __future__ import annotations

import math
from collections import deque
from datetime import datetime, timedelta


class RssiFilter:
    def __init__(self, window: timedelta, trim: float = 0.1, max_samples: int = 64) -> None:
        if window <= timedelta(0):
            raise ValueError("window must be positive")
        if not 0.0 <= trim < 0.5:
            raise ValueError("trim must be in [0, 0.5)")
        self._window = window
        self._trim = trim
        self._samples: deque[tuple[datetime, int]] = deque(maxlen=max_samples)

    def add(self, rssi: int, at: datetime) -> float:
        """Record one sample and return the smoothed value."""
        if self._samples and at < self._samples[-1][0]:
            at = self._samples[-1][0]  # out-of-order samples count as "now"
        self._samples.append((at, rssi))
        self._expire(at)
        return self.value

    @property
    def value(self) -> float:
        """The trimmed mean of the samples in the window (-inf when empty)."""
        if not self._samples:
            return -math.inf
        values = sorted(r for _, r in self._samples)
        cut = int(len(values) * self._trim)
        kept = values[cut : len(values) - cut] if cut else values
        return sum(kept) / len(kept)

    @property
    def last_seen(self) -> datetime | None:
        return self._samples[-1][0] if self._samples else None

    def _expire(self, now: datetime) -> None:
        horizon = now - self._window
        while len(self._samples) > 1 and self._samples[0][0] < horizon:
            self._samples.popleft()
