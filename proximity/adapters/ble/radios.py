"""Several BlueZ adapters in one gateway, read as one stream of advertisements.

A store gateway may carry one USB radio per zone (``[ble] adapters`` maps each
scanner id to its adapter). Each radio gets its own :class:`BleakBackend`, with
its own watchdog and adapter watch, so one unplugged dongle never stops the
others; :class:`Radios` starts and stops them together and merges what they
hear. Each advertisement already names its scanner (the backend's ``scanner``),
which is how the pipeline finds the zone.

The counters the metrics endpoint reads from a bleak backend (``scanning``,
``restarts``, ``errors``...) are the radios' totals here, so the same endpoint
serves one radio or several.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Sequence

from proximity.adapters.base import Advertisement, BleBackend
from proximity.adapters.ble.bleak_backend import BleakBackend

_END = object()


class Radios(BleBackend):
    """The advertisements of every radio in ``radios``, in the order they arrive."""

    def __init__(self, radios: Sequence[BleakBackend]) -> None:
        if not radios:
            raise ValueError("Radios needs at least one radio")
        self.radios = tuple(radios)

    # -- what the metrics endpoint reads, as totals -------------------------------------------

    @property
    def scanning(self) -> bool:
        """Every radio is scanning (one lost dongle makes the gateway not ready)."""
        return all(radio.scanning for radio in self.radios)

    @property
    def adapter_lost(self) -> bool:
        return any(radio.adapter_lost for radio in self.radios)

    @property
    def restarts(self) -> int:
        return sum(radio.restarts for radio in self.radios)

    @property
    def errors(self) -> Counter[str]:
        return sum((radio.errors for radio in self.radios), Counter())

    @property
    def adapter_losses(self) -> int:
        return sum(radio.adapter_losses for radio in self.radios)

    @property
    def dropped(self) -> int:
        return sum(radio.dropped for radio in self.radios)

    # -- BleBackend ---------------------------------------------------------------------------

    async def start(self) -> None:
        started: list[BleakBackend] = []
        try:
            for radio in self.radios:
                await radio.start()
                started.append(radio)
        except BaseException:
            for radio in started:
                await radio.stop()
            raise

    async def stop(self) -> None:
        await asyncio.gather(*(radio.stop() for radio in self.radios))

    async def advertisements(self) -> AsyncIterator[Advertisement]:
        queue: asyncio.Queue[Advertisement | Exception | object] = asyncio.Queue()

        async def pump(radio: BleakBackend) -> None:
            try:
                async for advertisement in radio.advertisements():
                    await queue.put(advertisement)
            except Exception as exc:  # the daemon reports a failed stream: hand it over
                queue.put_nowait(exc)
            finally:
                queue.put_nowait(_END)

        pumps = [
            asyncio.create_task(pump(radio), name=f"ble-radio-{i}")
            for i, radio in enumerate(self.radios)
        ]
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
