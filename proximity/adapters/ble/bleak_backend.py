"""The real radio: bleak's ``BleakScanner`` on the local BlueZ adapter.

The detection callback only fills a queue; :meth:`BleakBackend.advertisements`
drains it. Hardening (watchdog, BlueZ error recovery, passive scanning) is the
subject of the BLE issue; this backend is the plain, working path.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from proximity.adapters.base import Advertisement, BleBackend
from proximity.clock import Clock

_STOP = object()


class BleakBackend(BleBackend):
    def __init__(self, clock: Clock, adapter: str | None = None, queue_size: int = 4096) -> None:
        self._clock = clock
        self._adapter = adapter
        self._scanner_name = adapter or "default"
        self._queue: asyncio.Queue[Advertisement | object] = asyncio.Queue(queue_size)
        self._scanner: BleakScanner | None = None
        self.dropped = 0

    def _on_detection(self, device: BLEDevice, data: AdvertisementData) -> None:
        adv = Advertisement(device, data, self._scanner_name, self._clock.now())
        try:
            self._queue.put_nowait(adv)
        except asyncio.QueueFull:
            self.dropped += 1

    async def start(self) -> None:
        if self._adapter is None:
            self._scanner = BleakScanner(detection_callback=self._on_detection)
        else:
            self._scanner = BleakScanner(
                detection_callback=self._on_detection, bluez={"adapter": self._adapter}
            )
        await self._scanner.start()

    async def stop(self) -> None:
        if self._scanner is not None:
            await self._scanner.stop()
            self._scanner = None
            await self._queue.put(_STOP)

    async def advertisements(self) -> AsyncIterator[Advertisement]:
        while True:
            item = await self._queue.get()
            if item is _STOP:
                return
            assert isinstance(item, Advertisement)
            yield item
