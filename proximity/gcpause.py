"""The garbage collector's pauses: how many, how long, by generation.

Python's cyclic collector runs on the thread that allocated, here the event loop's, and
every reading and offer in flight waits for it. :class:`GcPauses` times each collection
through ``gc.callbacks``; the metrics endpoint reports the counts as the histogram
``proximity_gc_pause_seconds{generation}``.

    pauses = GcPauses().install()
    ...
    pauses.count[2], pauses.longest[2]      # full collections so far, the longest (s)
    pauses.uninstall()
"""

from __future__ import annotations

import gc
import time
from typing import Any, Self

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
"""Upper bounds (seconds) of the pause histogram's buckets; one more counts the rest."""

GENERATIONS = 3


class GcPauses:
    """Every collection's pause, by generation (0 young, 2 full): count, total, longest,
    and a histogram over :data:`BUCKETS`."""

    def __init__(self) -> None:
        self.count = [0] * GENERATIONS
        self.seconds = [0.0] * GENERATIONS
        self.longest = [0.0] * GENERATIONS
        self.buckets = [[0] * (len(BUCKETS) + 1) for _ in range(GENERATIONS)]
        """Per generation, pauses at most ``BUCKETS[i]`` (not cumulative); the last, longer."""
        self._started: float | None = None

    def install(self) -> Self:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)
        return self

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        started, self._started = self._started, None
        if started is None:
            return
        took = time.perf_counter() - started
        generation = min(max(int(info.get("generation", 0)), 0), GENERATIONS - 1)
        self.count[generation] += 1
        self.seconds[generation] += took
        if took > self.longest[generation]:
            self.longest[generation] = took
        row = self.buckets[generation]
        for i, bound in enumerate(BUCKETS):
            if took <= bound:
                row[i] += 1
                return
        row[-1] += 1

    def cumulative(self, generation: int) -> list[tuple[str, int]]:
        """The histogram of one generation as Prometheus wants it: ``(le, count)`` with
        each bucket counting every shorter pause too, ending with ``+Inf``."""
        out: list[tuple[str, int]] = []
        total = 0
        for bound, n in zip((*map(str, BUCKETS), "+Inf"), self.buckets[generation], strict=True):
            total += n
            out.append((bound, total))
        return out
