"""A store full of shoppers as a BLE backend: the crowd, heard as bleak's own objects.

It implements :class:`proximity.adapters.base.BleBackend` like the scripted-walk
backend in :mod:`firmware_sim.ble`: one :class:`Advertisement` per scanner that
heard each advertisement, carrying a ``BLEDevice`` (the sender's random address,
which the BLE adapter never passes on) and an ``AdvertisementData`` with the
frame the device sent (phones and carts: an iBeacon in Apple's manufacturer
data; fixed beacons: iBeacon, AltBeacon, or Eddystone in the 0xFEAA service
data, as bleak reports each) and the RSSI from the radio model.

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

from firmware_sim.crowd import Crowd, Heard
from proximity.adapters.base import Advertisement, BleBackend
from proximity.clock import Clock, VirtualClock
from proximity.config import SimSettings


class CrowdBleBackend(BleBackend):
    def __init__(self, crowd: Crowd, clock: Clock, start: datetime | None = None) -> None:
        """``start``: the instant that is second 0 of the crowd (default: the clock's now
        when advertising starts)."""
        self.crowd = crowd
        self._clock = clock
        self._start = start
        self._stopped = asyncio.Event()
        self._devices: dict[str, BLEDevice] = {}

    @classmethod
    def from_settings(cls, sim: SimSettings, clock: Clock) -> CrowdBleBackend:
        """The crowd ``[ble.sim]`` describes: its scenario, store, crowd size and seed."""
        from firmware_sim.harness import scenario_crowd
        from firmware_sim.scenarios import SCENARIOS
        from firmware_sim.store import EXAMPLE_STORE, load_store

        if sim.scenario is None:
            raise ValueError("a crowd needs [ble.sim] scenario")
        scenario = SCENARIOS[sim.scenario]
        if sim.shoppers is not None:
            scenario = scenario.with_crowd(shoppers=sim.shoppers)
        if sim.arrival_window is not None:
            scenario = scenario.with_crowd(arrival_window_s=sim.arrival_window.total_seconds())
        store = load_store(sim.store or EXAMPLE_STORE)
        return cls(scenario_crowd(store, scenario, sim.seed), clock)

    @property
    def start_time(self) -> datetime:
        if self._start is None:
            self._start = self._clock.now()
        return self._start

    async def start(self) -> None:
        self._stopped.clear()

    async def stop(self) -> None:
        self._stopped.set()

    def _device(self, address: str) -> BLEDevice:
        device = self._devices.get(address)
        if device is None:
            device = self._devices[address] = BLEDevice(address, None, {"simulated": True})
        return device

    async def advertisements(self) -> AsyncIterator[Advertisement]:
        start = self.start_time
        last_t = -1.0
        when = start
        for heard in self.crowd.heard():
            if self._stopped.is_set():
                return
            if heard.t != last_t:  # every scanner hears an advertisement at one instant
                last_t = heard.t
                when = start + timedelta(seconds=heard.t)
                await self._wait_until(when)
                if self._stopped.is_set():
                    return
            yield advertisement(heard, self._device(heard.source.address), when)

    async def _wait_until(self, when: datetime) -> None:
        if when <= self._clock.now():
            return
        if isinstance(self._clock, VirtualClock):
            await self._clock.advance_to(when)
            return
        await self._clock.sleep((when - self._clock.now()).total_seconds())


def advertisement(heard: Heard, device: BLEDevice, at: datetime) -> Advertisement:
    """What ``heard.scanner``'s radio hands over for ``heard``, heard at ``at``."""
    key, payload = heard.frame
    manufacturer = {key: payload} if isinstance(key, int) else {}
    service = {key: payload} if isinstance(key, str) else {}
    return Advertisement(
        device=device,
        data=AdvertisementData(
            local_name=None,
            manufacturer_data=manufacturer,
            service_data=service,
            service_uuids=list(service),
            tx_power=None,
            rssi=heard.rssi,
            platform_data=(),
        ),
        scanner=heard.scanner,
        at=at,
    )
