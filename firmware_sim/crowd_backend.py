"""A store full of shoppers as a BLE backend: the crowd, heard as bleak's own objects.

It implements :class:`proximity.adapters.base.BleBackend` like the scripted-walk
backend in :mod:`firmware_sim.ble`: one :class:`Advertisement` per scanner that
heard each advertisement, carrying a ``BLEDevice`` (the phone's random address,
which the BLE adapter never passes on) and an ``AdvertisementData`` with the
iBeacon frame in Apple's manufacturer data and the RSSI from the radio model.

On a :class:`VirtualClock` it drives time (as fast as the pipeline goes); on any
other clock (a :class:`ScaledClock` for a store hour in minutes, the system clock
for real time) it sleeps until each advertisement is due.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from firmware_sim.crowd import Crowd, Phone
from proximity.adapters.base import Advertisement, BleBackend
from proximity.adapters.ble.ibeacon import APPLE_COMPANY_ID, IBeacon, build_ibeacon
from proximity.clock import Clock, VirtualClock


class CrowdBleBackend(BleBackend):
    def __init__(self, crowd: Crowd, clock: Clock, start: datetime | None = None) -> None:
        """``start``: the instant that is second 0 of the crowd (default: the clock's now
        when advertising starts)."""
        self.crowd = crowd
        self._clock = clock
        self._start = start
        self._stopped = asyncio.Event()
        self._devices: dict[int, BLEDevice] = {}
        self._frames: dict[int, bytes] = {}

    @property
    def start_time(self) -> datetime:
        if self._start is None:
            self._start = self._clock.now()
        return self._start

    async def start(self) -> None:
        self._stopped.clear()

    async def stop(self) -> None:
        self._stopped.set()

    def _device(self, phone: Phone) -> tuple[BLEDevice, bytes]:
        device = self._devices.get(phone.index)
        if device is None:
            device = self._devices[phone.index] = BLEDevice(
                phone.address, None, {"simulated": True}
            )
            self._frames[phone.index] = build_ibeacon(
                IBeacon(phone.uuid, phone.major, phone.minor, phone.tx_power)
            )
        return device, self._frames[phone.index]

    async def advertisements(self) -> AsyncIterator[Advertisement]:
        start = self.start_time
        for heard in self.crowd.heard():
            if self._stopped.is_set():
                return
            when = start + timedelta(seconds=heard.t)
            await self._wait_until(when)
            if self._stopped.is_set():
                return
            device, frame = self._device(self.crowd.shoppers[heard.phone].phone)
            yield Advertisement(
                device=device,
                data=AdvertisementData(
                    local_name=None,
                    manufacturer_data={APPLE_COMPANY_ID: frame},
                    service_data={},
                    service_uuids=[],
                    tx_power=None,
                    rssi=heard.rssi,
                    platform_data=(),
                ),
                scanner=heard.scanner,
                at=when,
            )

    async def _wait_until(self, when: datetime) -> None:
        if when <= self._clock.now():
            return
        if isinstance(self._clock, VirtualClock):
            await self._clock.advance_to(when)
            return
        await self._clock.sleep((when - self._clock.now()).total_seconds())
