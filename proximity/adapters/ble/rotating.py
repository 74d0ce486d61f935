"""The app's rotating shopper identifier, in the spirit of Eddystone-EID.

The shopper app holds a per-shopper key and advertises an 8-byte identifier
that changes every ``period`` (15 minutes by default):

    rotating_id = HMAC-SHA256(shopper key, window as 8 bytes big-endian)[:8]
    window      = unix time // period

Without the key the identifiers of consecutive windows cannot be linked to each
other. The gateway, which holds the registered keys, resolves an identifier
with a table of every key's identifiers for the current window and the
windows either side (phone clocks drift). The table is rebuilt only when the
window moves, and only for the windows that entered it, so resolving one
advertisement is one dictionary look-up, and the table never holds more than
``(2 * skew_windows + 1) * len(keys)`` entries.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Generic, TypeVar

ROTATING_ID_SIZE = 8
DEFAULT_PERIOD = timedelta(minutes=15)
MIN_KEY_SIZE = 16

K = TypeVar("K", bound=Hashable)


def rotating_id(shopper_key: bytes, window: int) -> bytes:
    """The 8-byte identifier a shopper advertises during ``window``."""
    _check_key(shopper_key)
    if not 0 <= window < 1 << 64:
        raise ValueError("window must fit in 64 unsigned bits")
    digest = hmac.digest(shopper_key, window.to_bytes(8, "big"), hashlib.sha256)
    return digest[:ROTATING_ID_SIZE]


def window_at(at: datetime, period: timedelta = DEFAULT_PERIOD) -> int:
    """The window counter at ``at``: whole periods since the Unix epoch."""
    if at.tzinfo is None:
        raise ValueError("at must be timezone-aware")
    return int(at.timestamp()) // _period_seconds(period)


@dataclass(slots=True)
class _Window(Generic[K]):
    """Every registered key's identifier in one window."""

    owners: dict[bytes, K] = field(default_factory=dict)
    ambiguous: set[bytes] = field(default_factory=set)
    """Identifiers two keys share (never seen in practice): resolved to nobody."""

    def add(self, rid: bytes, key_id: K) -> None:
        if rid in self.ambiguous:
            return
        owner = self.owners.get(rid)
        if owner is not None and owner != key_id:
            del self.owners[rid]
            self.ambiguous.add(rid)
        else:
            self.owners[rid] = key_id

    def __len__(self) -> int:
        return len(self.owners) + len(self.ambiguous)


class RotatingResolver(Generic[K]):
    """Resolves observed rotating identifiers to the id of the registered key behind them."""

    def __init__(
        self,
        keys: Mapping[K, bytes],
        *,
        period: timedelta = DEFAULT_PERIOD,
        skew_windows: int = 1,
    ) -> None:
        if skew_windows < 0:
            raise ValueError("skew_windows must not be negative")
        _period_seconds(period)
        self.period = period
        self.skew_windows = skew_windows
        self._keys: dict[K, bytes] = {}
        for key_id, key in keys.items():
            _check_key(key)
            self._keys[key_id] = key
        self._centre: int | None = None
        self._windows: dict[int, _Window[K]] = {}
        self.computations = 0
        """HMACs computed so far (resolution computes none per advertisement)."""

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def table_size(self) -> int:
        """Identifiers held in the look-up table right now."""
        return sum(len(window) for window in self._windows.values())

    def resolve(self, observed: bytes, at: datetime) -> K | None:
        """The key id whose identifier ``observed`` is, at ``at`` give or take the skew."""
        self._move_to(window_at(at, self.period))
        for window in self._windows.values():
            owner = window.owners.get(observed)
            if owner is not None:
                return owner
        return None

    def register(self, key_id: K, key: bytes) -> None:
        """Add (or replace) one shopper key; its identifiers are tabled at once."""
        _check_key(key)
        if key_id in self._keys:
            self.unregister(key_id)
        self._keys[key_id] = key
        for number, window in self._windows.items():
            self._add(window, key_id, key, number)

    def unregister(self, key_id: K) -> None:
        """Forget one shopper key and its identifiers."""
        self._keys.pop(key_id, None)
        for window in self._windows.values():
            for rid in [rid for rid, owner in window.owners.items() if owner == key_id]:
                del window.owners[rid]

    def _move_to(self, centre: int) -> None:
        if centre == self._centre:
            return
        wanted = range(centre - self.skew_windows, centre + self.skew_windows + 1)
        for number in [n for n in self._windows if n not in wanted]:
            del self._windows[number]
        for number in wanted:
            if number not in self._windows and number >= 0:
                window: _Window[K] = _Window()
                for key_id, key in self._keys.items():
                    self._add(window, key_id, key, number)
                self._windows[number] = window
        self._centre = centre

    def _add(self, window: _Window[K], key_id: K, key: bytes, number: int) -> None:
        window.add(rotating_id(key, number), key_id)
        self.computations += 1


def _check_key(key: bytes) -> None:
    if len(key) < MIN_KEY_SIZE:
        raise ValueError(f"shopper keys must be at least {MIN_KEY_SIZE} bytes")


def _period_seconds(period: timedelta) -> int:
    seconds = period.total_seconds()
    if seconds < 1 or seconds != int(seconds):
        raise ValueError("period must be a whole number of seconds, at least one")
    return int(seconds)
