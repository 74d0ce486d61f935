"""Injected time.

Nothing in Proximity reads the wall clock by name: every component takes a
:class:`Clock`. Three implementations:

- :class:`SystemClock` for the daemon in a store;
- :class:`ScaledClock` for the demo, where a store visit runs ``speed`` times faster;
- :class:`VirtualClock` for tests and replays: time moves only when the driver
  calls :meth:`VirtualClock.advance`, so every run is identical.

All clocks return timezone-aware UTC datetimes.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ScaledClock:
    """Runs ``speed`` times faster than real time, from ``start``."""

    def __init__(self, start: datetime, speed: float) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        if speed <= 0:
            raise ValueError("speed must be positive")
        self._start = start.astimezone(UTC)
        self._speed = speed
        self._t0 = time.monotonic()

    @property
    def speed(self) -> float:
        return self._speed

    def now(self) -> datetime:
        return self._start + timedelta(seconds=(time.monotonic() - self._t0) * self._speed)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self._speed)


class VirtualClock:
    """A clock that stands still until :meth:`advance` moves it.

    Sleepers wake in deadline order; each waking sleeper gets the clock set to
    its own deadline and a few loop iterations to run before the next one
    wakes, so a ticker and a driver interleave the same way on every run.
    """

    _YIELDS_PER_WAKE = 4

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self._now = start.astimezone(UTC)
        self._sleepers: list[tuple[datetime, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> datetime:
        return self._now

    async def sleep(self, seconds: float) -> None:
        deadline = self._now + timedelta(seconds=max(0.0, seconds))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._seq), future))
        await future

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking every sleeper due on the way."""
        await self.advance_to(self._now + timedelta(seconds=seconds))

    async def advance_to(self, target: datetime) -> None:
        if target < self._now:
            raise ValueError("a virtual clock cannot go back in time")
        await self._settle()  # tasks that are ready run (and start sleeping) before time moves
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            if not future.done():
                future.set_result(None)
                await self._settle()
        self._now = target

    async def _settle(self) -> None:
        for _ in range(self._YIELDS_PER_WAKE):
            await asyncio.sleep(0)
