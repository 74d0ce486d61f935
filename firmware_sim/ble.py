"""The simulated BLE backend: a scripted walk, heard as bleak's own objects.

It implements :class:`proximity.adapters.base.BleBackend`, so the daemon reads
it exactly as it reads the real radio: ``BLEDevice`` and ``AdvertisementData``
carrying an iBeacon frame in Apple's manufacturer data.

Pacing follows the clock it is given: on a :class:`VirtualClock` it *drives*
time (advancing it to each advertisement, so a test is exact and instant); on
any other clock it sleeps until each advertisement is due.

:func:`register` plugs the simulator into a gateway's
:class:`~proximity.adapters.ble.backends.BleBackends` as ``ble.backend = "sim"``:
this walk, or with ``[ble.sim] scenario`` a seeded crowd
(:mod:`firmware_sim.crowd_backend`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from firmware_sim.walk import Walk, builtin_walk, hear, load_walk
from proximity.adapters.base import Advertisement, BleBackend
from proximity.adapters.ble.backends import BleBackends
from proximity.adapters.ble.ibeacon import APPLE_COMPANY_ID, IBeacon, build_ibeacon
from proximity.clock import Clock, VirtualClock
from proximity.config import BleBackendKind, BleSettings


def register(backends: BleBackends) -> None:
    """Make ``ble.backend = "sim"`` build the simulator in this gateway."""
    backends.register(BleBackendKind.SIM, simulated_backend)


def simulated_backend(settings: BleSettings, clock: Clock) -> BleBackend:
    """The ``[ble.sim]`` settings' simulator: a seeded crowd if they name a scenario,
    else one scripted walk (the built-in demo walk if they name none)."""
    sim = settings.sim
    if sim.scenario is not None:
        from firmware_sim.crowd_backend import CrowdBleBackend

        return CrowdBleBackend.from_settings(sim, clock)
    walk = builtin_walk() if sim.walk is None else load_walk(sim.walk)
    return SimulatedBleBackend(walk, clock, random.Random(sim.seed), repeat=sim.repeat)


class SimulatedBleBackend(BleBackend):
    def __init__(self, walk: Walk, clock: Clock, rng: random.Random, repeat: bool = False) -> None:
        self._walk = walk
        self._clock = clock
        self._rng = rng
        self._repeat = repeat
        self._stopped = asyncio.Event()
        phone = walk.phone
        self._frame = build_ibeacon(IBeacon(phone.uuid, phone.major, phone.minor, phone.tx_power))
        self.device = BLEDevice(phone.address, None, {"simulated": True})

    async def start(self) -> None:
        self._stopped.clear()

    async def stop(self) -> None:
        self._stopped.set()

    def advertisement_data(self, rssi: int) -> AdvertisementData:
        return AdvertisementData(
            local_name=None,
            manufacturer_data={APPLE_COMPANY_ID: self._frame},
            service_data={},
            service_uuids=[],
            tx_power=None,
            rssi=rssi,
            platform_data=(),
        )

    async def advertisements(self) -> AsyncIterator[Advertisement]:
        while not self._stopped.is_set():
            start = self._clock.now()
            for heard in hear(self._walk, self._rng):
                await self._wait_until(start + timedelta(seconds=heard.offset))
                if self._stopped.is_set():
                    return
                yield Advertisement(
                    device=self.device,
                    data=self.advertisement_data(heard.rssi),
                    scanner=heard.scanner,
                    at=start + timedelta(seconds=heard.offset),
                )
            await self._wait_until(start + timedelta(seconds=self._walk.duration))
            if not self._repeat:
                return

    async def _wait_until(self, when: datetime) -> None:
        if isinstance(self._clock, VirtualClock):
            if when > self._clock.now():
                await self._clock.advance_to(when)
            return
        seconds = (when - self._clock.now()).total_seconds()
        if seconds > 0:
            await self._clock.sleep(seconds)
