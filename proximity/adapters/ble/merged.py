"""Several BLE backends read as one stream: local radios and remote scanner nodes together.

Each advertisement already names its scanner, so merging loses nothing. The
attributes the metrics endpoint and the pipeline read from a backend (``scanning``,
and the nodes' ``metric_families`` and ``scanners_down``) are passed through:
scanning while every part scans.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from prometheus_client.core import Metric

from proximity.adapters.base import Advertisement, BleBackend

_END = object()


class MergedBackend(BleBackend):
    """The advertisements of every backend in ``parts``, in the order they arrive; a part
    whose stream fails fails the whole (the daemon reports a failed stream)."""

    def __init__(self, parts: Sequence[BleBackend]) -> None:
        if not parts:
            raise ValueError("MergedBackend needs at least one backend")
        self.parts = tuple(parts)

    @property
    def scanning(self) -> bool:
        return all(bool(getattr(part, "scanning", True)) for part in self.parts)

    def scanners_down(self) -> frozenset[str]:
        """The scanners the parts that know (the nodes') say are down."""
        out: set[str] = set()
        for part in self.parts:
            down = getattr(part, "scanners_down", None)
            if callable(down):
                out.update(down())
        return frozenset(out)

    def metric_families(self) -> list[Metric]:
        """The metric families of the parts that have any (the nodes')."""
        out: list[Metric] = []
        for part in self.parts:
            families = getattr(part, "metric_families", None)
            if callable(families):
                out.extend(families())
        return out

    async def start(self) -> None:
        await start_together(self.parts)

    async def stop(self) -> None:
        await stop_together(self.parts)

    async def advertisements(self) -> AsyncIterator[Advertisement]:
        async for advertisement in merge(self.parts):
            yield advertisement


async def start_together(parts: Sequence[BleBackend]) -> None:
    """Start every backend of ``parts``; if one fails, stop those already started."""
    started: list[BleBackend] = []
    try:
        for part in parts:
            await part.start()
            started.append(part)
    except BaseException:
        for part in started:
            await part.stop()
        raise


async def stop_together(parts: Sequence[BleBackend]) -> None:
    await asyncio.gather(*(part.stop() for part in parts))


async def merge(
    parts: Sequence[BleBackend], name: str = "ble-part"
) -> AsyncIterator[Advertisement]:
    """The advertisements of every backend of ``parts``, in the order they arrive; a part
    whose stream fails fails the whole (its exception is raised here)."""
    queue: asyncio.Queue[Advertisement | Exception | object] = asyncio.Queue()

    async def pump(part: BleBackend) -> None:
        try:
            async for advertisement in part.advertisements():
                await queue.put(advertisement)
        except Exception as exc:  # handed to the reader, which raises it
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(_END)

    pumps = [asyncio.create_task(pump(part), name=f"{name}-{i}") for i, part in enumerate(parts)]
    running = len(pumps)
    try:
        while running:
            item = await queue.get()
            if item is _END:
                running -= 1
                continue
            if isinstance(item, Exception):
                raise item
            assert isinstance(item, Advertisement)
            yield item
    finally:
        for task in pumps:
            task.cancel()
        for task in pumps:
            with contextlib.suppress(asyncio.CancelledError):
                await task
