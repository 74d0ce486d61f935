"""``proximity scan`` on the real bleak stack: a mocked BlueZ (python-dbusmock on a private
dbus-daemon, as tests/test_bleak_backend.py) -> bleak -> the node's batches -> a real
mosquitto -> the gateway's node backend -> the gateway's own decoder."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from proximity.adapters.base import Advertisement
from proximity.adapters.ble.adapter import BeaconDecoder
from proximity.adapters.ble.ibeacon import APPLE_COMPANY_ID, IBeacon, build_ibeacon
from proximity.adapters.nodes.backend import NodeBackend, NodeBroker
from proximity.adapters.nodes.ingest import NodeSpec
from proximity.cli.scan_cmd import scan
from proximity.clock import SystemClock
from proximity.config import Settings
from proximity.readings import BeaconSighting
from tests.factories import APP_UUID
from tests.mosquitto import Mosquitto, eventually

if TYPE_CHECKING:
    from firmware_sim.bluez import MockBlueZ

pytestmark = pytest.mark.timeout(30)

ADDRESS = "C0:FF:EE:00:00:07"
FRAME = {APPLE_COMPANY_ID: build_ibeacon(IBeacon(APP_UUID, 3, 0x8004, -59))}


async def test_proximity_scan_on_bleak_reaches_the_gateway(
    bleak_bus: MockBlueZ, mosquitto: Mosquitto
) -> None:
    bluez = bleak_bus
    bluez.add_adapter("hci0")
    device = bluez.add_device("hci0", ADDRESS, "shelf-beacon")
    settings = Settings.model_validate(
        {
            "store": {"id": "store-001"},
            "broker": {"url": str(mosquitto.url)},
            "ble": {"backend": "bleak", "adapter": "hci0"},
            "scan": {"node": "pi-3"},
        }
    )
    clock = SystemClock()
    spec = NodeSpec("ours", "pi-3", "gw-bakery")
    gateway = NodeBackend("store-001", [NodeBroker(mosquitto.url, (spec,))], clock)
    received: list[Advertisement] = []

    async def collect() -> None:
        async for adv in gateway.advertisements():
            received.append(adv)

    stop = asyncio.Event()
    async with gateway:
        await eventually(lambda: gateway.scanning)
        collecting = asyncio.create_task(collect())
        node = asyncio.create_task(scan(settings, "pi-3", stop))
        await eventually(lambda: gateway.ingest.alive("gw-bakery") is True, 10)
        for _ in range(40):  # a first update may race the start of the scan
            bluez.advertise(device, FRAME, rssi=-58)
            await asyncio.sleep(0.1)
            if received:
                break
        assert received, "nothing the mocked radio heard reached the gateway"
        stop.set()
        stats = await asyncio.wait_for(node, 10)
        collecting.cancel()
    sighting = BeaconDecoder().to_sighting(received[0])
    assert isinstance(sighting, BeaconSighting)
    assert (sighting.uuid, sighting.major, sighting.minor) == (APP_UUID, 3, 0x8004)
    assert (sighting.rssi, sighting.scanner) == (-58, "gw-bakery")
    assert received[0].device.address == ADDRESS  # the raw address, for RPA resolution
    assert stats.heard >= 1
    assert stats.sent == stats.heard
