"""The real bleak scanner, through the real bleak stack, against a mocked BlueZ.

Each test starts its own dbus-daemon and python-dbusmock's ``bluez5`` template
(see ``firmware_sim/bluez.py``) and points ``DBUS_SYSTEM_BUS_ADDRESS`` at it, so
bleak talks D-Bus exactly as it would to bluetoothd. Nothing is patched.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from uuid import UUID

import pytest
import structlog

from proximity.adapters.base import Advertisement
from proximity.adapters.ble.adapter import BeaconDecoder, BleAdapter
from proximity.adapters.ble.bleak_backend import (
    IBEACON_OR_PATTERNS,
    BleakBackend,
    ScanMode,
)
from proximity.adapters.ble.ibeacon import APPLE_COMPANY_ID, IBeacon, build_ibeacon
from proximity.clock import SystemClock, VirtualClock
from tests.factories import T0

if TYPE_CHECKING:
    from firmware_sim.bluez import MockBlueZ

pytestmark = pytest.mark.timeout(15)

BEACON = IBeacon(UUID("f7826da6-4fa2-4e98-8024-bc5b71e0893e"), major=7, minor=0x8001, tx_power=-59)
ADDRESS = "C0:FF:EE:00:00:01"
WAIT_S = 5.0
MONITOR_IFACE = "org.bluez.AdvertisementMonitor1"


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    with structlog.testing.capture_logs() as captured:
        yield captured


async def wait_until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await asyncio.sleep(0.02)


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


def frame(beacon: IBeacon = BEACON) -> dict[int, bytes]:
    return {APPLE_COMPANY_ID: build_ibeacon(beacon)}


async def heard(backend: BleakBackend, bluez: MockBlueZ, device: str, rssi: int) -> Advertisement:
    """Advertise from ``device`` until the backend yields it (a first update may race the scan)."""
    stream = backend.advertisements()
    try:
        for _ in range(10):
            bluez.advertise(device, frame(), rssi)
            try:
                return await asyncio.wait_for(anext(stream), 0.5)
            except TimeoutError:
                continue
        raise AssertionError("the backend yielded nothing")
    finally:
        await stream.aclose()


def assert_no_address(logs: list[dict[str, Any]]) -> None:
    text = repr(logs).upper()
    assert ADDRESS not in text
    assert ADDRESS.replace(":", "_") not in text


async def test_an_ibeacon_heard_through_bluez_becomes_a_sighting(bleak_bus: MockBlueZ) -> None:
    bluez = bleak_bus
    bluez.add_adapter("hci0")
    device = bluez.add_device("hci0", ADDRESS, "shelf-beacon")
    clock = VirtualClock(T0)
    backend = BleakBackend(clock, adapter="hci0")
    adapter = BleAdapter(backend)
    async with backend:
        assert backend.scanning
        # a device known before the scan is reported when its properties change
        bluez.advertise(device, frame(), rssi=-61)
        sighting = await asyncio.wait_for(anext(aiter(adapter.readings())), WAIT_S)

    assert sighting.uuid == BEACON.uuid
    assert (sighting.major, sighting.minor, sighting.tx_power) == (7, 0x8001, -59)
    assert sighting.rssi == -61
    assert sighting.scanner == "hci0"
    assert sighting.at == T0
    assert adapter.decoder.sightings == 1
    assert backend.errors == {}


async def test_the_advertisement_carries_bleaks_own_data(bleak_bus: MockBlueZ) -> None:
    bluez = bleak_bus
    bluez.add_adapter("hci0")
    device = bluez.add_device("hci0", ADDRESS, "shelf-beacon")
    backend = BleakBackend(VirtualClock(T0), adapter="hci0")
    async with backend:
        adv = await heard(backend, bluez, device, rssi=-72)

    assert adv.data.manufacturer_data == {APPLE_COMPANY_ID: build_ibeacon(BEACON)}
    assert adv.data.rssi == -72
    assert adv.device.address == ADDRESS
    assert (adv.scanner, adv.at) == ("hci0", T0)
    sighting = BeaconDecoder().to_sighting(adv)
    assert sighting is not None
    assert (sighting.uuid, sighting.major, sighting.minor) == (BEACON.uuid, 7, 0x8001)


async def test_passive_scan_registers_the_ibeacon_or_pattern(bleak_bus: MockBlueZ) -> None:
    bluez = bleak_bus
    adapter_path = bluez.add_adapter("hci0")
    device = bluez.add_device("hci0", ADDRESS, "shelf-beacon")
    backend = BleakBackend(VirtualClock(T0), adapter="hci0", mode=ScanMode.PASSIVE)
    async with backend:
        (monitor,) = (args[0] for args in bluez.method_calls(adapter_path, "RegisterMonitor"))
        # bleak answers from this event loop: ask from a thread, or the loop waits on itself
        props = await asyncio.to_thread(bluez.exported_properties, monitor, MONITOR_IFACE)
        assert props["Type"] == "or_patterns"
        patterns = props["Patterns"]
        assert [(int(p[0]), int(p[1]), bytes(p[2])) for p in patterns] == [
            (0, 0xFF, b"\x4c\x00\x02\x15")
        ]
        assert IBEACON_OR_PATTERNS[0].content_of_pattern == b"\x4c\x00\x02\x15"
        adv = await heard(backend, bluez, device, rssi=-65)
    assert adv.data.manufacturer_data[APPLE_COMPANY_ID] == build_ibeacon(BEACON)
    assert bluez.method_calls(adapter_path, "UnregisterMonitor") == [[monitor]]


def test_passive_scan_without_patterns_is_refused() -> None:
    with pytest.raises(ValueError, match="or-pattern"):
        BleakBackend(VirtualClock(T0), mode=ScanMode.PASSIVE, or_patterns=())


async def test_adapter_gone_and_back_resumes_by_itself(
    bleak_bus: MockBlueZ, logs: list[dict[str, Any]]
) -> None:
    bluez = bleak_bus
    bluez.add_adapter("hci0")
    device = bluez.add_device("hci0", ADDRESS, "shelf-beacon")
    backend = BleakBackend(SystemClock(), adapter="hci0", backoff_initial_s=0.05)
    async with backend:
        await heard(backend, bluez, device, rssi=-60)

        bluez.remove_adapter("hci0")
        await wait_until(lambda: bool(events(logs, "ble_adapter_lost")))
        await wait_until(lambda: not backend.scanning)
        assert backend.adapter_lost

        bluez.add_adapter("hci0")
        await wait_until(lambda: bool(events(logs, "ble_adapter_back")))
        assert backend.scanning
        assert not backend.adapter_lost
        adv = await heard(backend, bluez, device, rssi=-58)

    assert adv.data.rssi == -58
    assert backend.adapter_losses == 1
    assert backend.restarts == 1
    (restarted,) = events(logs, "ble_scanner_restarted")
    assert restarted["reason"] == "adapter_lost"
    assert_no_address(logs)


async def test_an_adapter_reset_between_two_looks_still_restarts_the_scan(
    bleak_bus: MockBlueZ, logs: list[dict[str, Any]]
) -> None:
    """Gone and back before the supervisor runs: BlueZ dropped the discovery session anyway."""
    bluez = bleak_bus
    bluez.add_adapter("hci0")
    device = bluez.add_device("hci0", ADDRESS, "shelf-beacon")
    backend = BleakBackend(SystemClock(), adapter="hci0")
    async with backend:
        bluez.remove_adapter("hci0")
        bluez.add_adapter("hci0")
        await wait_until(lambda: backend.restarts == 1)
        adv = await heard(backend, bluez, device, rssi=-57)
    assert adv.data.rssi == -57
    assert [e["event"] for e in logs if e["event"].startswith("ble_adapter")] == [
        "ble_adapter_lost",
        "ble_adapter_back",
    ]


async def test_an_adapter_plugged_in_after_start_is_picked_up(
    bleak_bus: MockBlueZ, logs: list[dict[str, Any]]
) -> None:
    bluez = bleak_bus
    bluez.add_adapter("hci0")
    backend = BleakBackend(SystemClock(), adapter="hci1", backoff_initial_s=0.05)
    async with backend:  # the dongle is not there yet: no error out of start()
        assert backend.adapter_lost
        assert not backend.scanning
        assert events(logs, "ble_adapter_lost")
        bluez.add_adapter("hci1")
        await wait_until(lambda: backend.scanning)
        device = bluez.add_device("hci1", ADDRESS, "shelf-beacon")
        adv = await heard(backend, bluez, device, rssi=-70)
    assert adv.scanner == "hci1"
    assert events(logs, "ble_adapter_back")


async def test_watchdog_restarts_a_silent_scan(
    bleak_bus: MockBlueZ, logs: list[dict[str, Any]]
) -> None:
    bluez = bleak_bus
    adapter_path = bluez.add_adapter("hci0")
    device = bluez.add_device("hci0", ADDRESS, "shelf-beacon")
    # the stop of the silent scan fails too: the restart goes on regardless
    bluez.fail_discovery("hci0", "StopDiscovery", ["org.bluez.Error.Failed"])
    backend = BleakBackend(SystemClock(), adapter="hci0", silence_s=1.0, backoff_initial_s=0.1)
    async with backend:
        await wait_until(lambda: backend.restarts >= 1)
        assert backend.scanning
        adv = await heard(backend, bluez, device, rssi=-66)

    assert adv.data.rssi == -66
    (restarted, *_) = events(logs, "ble_scanner_restarted")
    assert restarted["reason"] == "silence"
    assert events(logs, "ble_scanner_silent")
    assert backend.errors["org.bluez.Error.Failed"] == 1
    assert len(bluez.method_calls(adapter_path, "StopDiscovery")) >= 1
    assert_no_address(logs)


async def test_bluez_errors_on_start_are_retried_with_backoff(
    bleak_bus: MockBlueZ, logs: list[dict[str, Any]]
) -> None:
    bluez = bleak_bus
    adapter_path = bluez.add_adapter("hci0")
    device = bluez.add_device("hci0", ADDRESS, "shelf-beacon")
    bluez.fail_discovery(
        "hci0", "StartDiscovery", ["org.bluez.Error.InProgress", "org.bluez.Error.NotReady"]
    )
    backend = BleakBackend(SystemClock(), adapter="hci0", backoff_initial_s=0.05)
    async with backend:
        await wait_until(lambda: backend.scanning)
        adv = await heard(backend, bluez, device, rssi=-64)

    assert adv.data.rssi == -64
    assert backend.errors == {"org.bluez.Error.InProgress": 1, "org.bluez.Error.NotReady": 1}
    assert [e["error"] for e in events(logs, "ble_scanner_error")] == [
        "org.bluez.Error.InProgress",
        "org.bluez.Error.NotReady",
    ]
    assert len(bluez.method_calls(adapter_path, "StartDiscovery")) == 3
    assert not events(logs, "ble_adapter_lost")


async def test_stop_ends_the_stream_promptly(bleak_bus: MockBlueZ) -> None:
    bleak_bus.add_adapter("hci0")
    backend = BleakBackend(SystemClock(), adapter="hci0")
    await backend.start()
    received: list[Advertisement] = []

    async def read() -> None:
        async for adv in backend.advertisements():
            received.append(adv)

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await backend.stop()
    await asyncio.wait_for(reader, 1.0)
    assert time.monotonic() - started < 1.0
    assert not backend.scanning
    # a second reader ends at once too
    assert [adv async for adv in backend.advertisements()] == []


async def test_several_adapters_read_as_one_stream_each_named_as_its_scanner(
    bleak_bus: MockBlueZ,
) -> None:
    """``[ble] adapters``: one bleak scan per radio, each advertisement named after the
    store scanner its radio stands for, merged into one stream."""
    from proximity.adapters.ble.backends import make_ble_backend
    from proximity.adapters.ble.radios import Radios
    from proximity.config import BleSettings

    bluez = bleak_bus
    scanners = {"gw-coffee": "hci0", "gw-bakery": "hci1"}
    devices = {}
    for scanner, name in scanners.items():
        bluez.add_adapter(name)
        devices[scanner] = bluez.add_device(name, ADDRESS, "phone")
    settings = BleSettings.model_validate({"backend": "bleak", "adapters": scanners})
    backend = make_ble_backend(settings, SystemClock())
    assert isinstance(backend, Radios)
    heard: dict[str, int] = {}
    async with backend:
        assert backend.scanning
        stream = backend.advertisements()
        try:
            for _ in range(10):  # a first update may race the scan's start
                for scanner, rssi in (("gw-coffee", -55), ("gw-bakery", -80)):
                    if scanner not in heard:
                        bluez.advertise(devices[scanner], frame(), rssi)
                with contextlib.suppress(TimeoutError):
                    while len(heard) < 2:
                        adv = await asyncio.wait_for(anext(stream), 0.5)
                        heard[adv.scanner] = adv.data.rssi
                if len(heard) == 2:
                    break
        finally:
            await stream.aclose()
    assert heard == {"gw-coffee": -55, "gw-bakery": -80}
    assert not backend.scanning
    assert (backend.restarts, backend.errors, backend.dropped) == (0, {}, 0)
