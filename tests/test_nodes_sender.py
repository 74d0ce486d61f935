"""The node side of our format: what a node hears, batched to the broker, read by the gateway.

The sender and the gateway's node backend share no code but the format: a round trip
through a real mosquitto shows they agree; a broker outage shows what a node keeps,
drops and says it dropped.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from proximity.adapters.base import Advertisement, BleBackend
from proximity.adapters.ble.adapter import BeaconDecoder
from proximity.adapters.ble.eddystone import EDDYSTONE_SERVICE_UUID
from proximity.adapters.ble.ibeacon import IBeacon, build_ibeacon, parse_ibeacon
from proximity.adapters.nodes.backend import NodeBackend, NodeBroker
from proximity.adapters.nodes.formats import Batch, parse_ours
from proximity.adapters.nodes.ingest import NodeSpec, advertisement
from proximity.adapters.nodes.sender import NodeSender, encode_reading
from proximity.clock import SystemClock
from proximity.errors import AdapterError
from tests.factories import APP_UUID
from tests.mosquitto import Mosquitto, eventually

T = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
FRAME = build_ibeacon(IBeacon(APP_UUID, 1, 0x8001, -59))
EDDYSTONE_UID = bytes.fromhex("00e7") + bytes(range(16)) + b"\x00\x00"


def adv(minor: int = 0x8001, rssi: int = -60, at: datetime = T) -> Advertisement:
    frame = build_ibeacon(IBeacon(APP_UUID, 1, minor, -59))
    return Advertisement(
        BLEDevice("5E:11:22:33:44:55", None, None),
        AdvertisementData(None, {0x004C: frame}, {}, [], None, rssi, ()),
        "hci0",
        at,
    )


class Heard(BleBackend):
    """A radio the test speaks for: ``hear()`` hands an advertisement over."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Advertisement | None] = asyncio.Queue()

    def hear(self, advertisement: Advertisement) -> None:
        self.queue.put_nowait(advertisement)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.queue.put_nowait(None)

    async def advertisements(self) -> AsyncIterator[Advertisement]:
        while (item := await self.queue.get()) is not None:
            yield item


def test_an_encoded_reading_decodes_as_the_advertisement_it_was() -> None:
    heard = Advertisement(
        BLEDevice("C8:01:02:03:04:05", "Jane's phone", None),
        AdvertisementData(
            "Jane's phone",
            {0x004C: FRAME},
            {EDDYSTONE_SERVICE_UUID: EDDYSTONE_UID},
            [EDDYSTONE_SERVICE_UUID, "6e400001-b5a3-f393-e0a9-e50e24dcca9e"],
            -4,
            -71,
            (),
        ),
        "hci0",
        T,
    )
    reading = encode_reading(heard, T + timedelta(seconds=0.25))
    assert reading["dt"] == 0.25
    assert reading["svc"] == {"feaa": EDDYSTONE_UID.hex()}  # 16-bit UUIDs sent short
    assert "name" not in json.dumps(reading)  # a phone's name stays on the node
    body = {"seq": 0, "sent": T.timestamp(), "readings": [reading]}
    batch = parse_ours("pi-1", "readings", json.dumps(body).encode())
    assert isinstance(batch, Batch)
    (back,) = batch.readings
    assert back.service == {EDDYSTONE_SERVICE_UUID: EDDYSTONE_UID}
    assert back.uuids == (EDDYSTONE_SERVICE_UUID, "6e400001-b5a3-f393-e0a9-e50e24dcca9e")
    again = advertisement(back, "hci0", T)
    assert BeaconDecoder().to_sighting(again) == BeaconDecoder().to_sighting(heard)


async def test_what_a_node_hears_reaches_the_gateway_in_order(mosquitto: Mosquitto) -> None:
    clock = SystemClock()
    gateway = NodeBackend(
        "store-001", [NodeBroker(mosquitto.url, (NodeSpec("ours", "pi-1", "gw-entrance"),))], clock
    )
    radio = Heard()
    sender = NodeSender(
        radio, mosquitto.url, store="store-001", node="pi-1", clock=clock, batch_max=8
    )
    stop = asyncio.Event()
    async with gateway:
        await eventually(lambda: gateway.scanning)
        running = asyncio.create_task(sender.run(stop))
        await eventually(lambda: gateway.ingest.alive("gw-entrance") is True)  # its status
        received: list[Advertisement] = []

        async def collect() -> None:
            async for item in gateway.advertisements():
                received.append(item)

        collecting = asyncio.create_task(collect())
        for minor in range(20):
            radio.hear(adv(minor=minor, at=clock.now()))
        await eventually(lambda: len(received) == 20)
        stop.set()
        stats = await asyncio.wait_for(running, 10)
        # a graceful stop says offline (no will needed)
        await eventually(lambda: gateway.ingest.alive("gw-entrance") is False)
        collecting.cancel()
    minors = [parse_ibeacon(item.data.manufacturer_data[0x004C]).minor for item in received]
    assert minors == list(range(20))
    assert {item.scanner for item in received} == {"gw-entrance"}
    assert all(item.at <= clock.now() for item in received)
    assert (stats.heard, stats.sent, stats.dropped) == (20, 20, 0)
    assert stats.batches >= 3  # at most 8 readings a batch
    health = gateway.ingest.nodes[("ours", "pi-1")]
    assert health.boot == sender.boot


async def test_a_broker_outage_is_buffered_within_bounds_and_the_drops_are_told(
    mosquitto: Mosquitto,
) -> None:
    clock = SystemClock()
    radio = Heard()
    sender = NodeSender(
        radio,
        mosquitto.url,
        store="store-001",
        node="pi-1",
        clock=clock,
        buffer_max=5,
        publish_timeout=1.0,
    )
    stop = asyncio.Event()
    running = asyncio.create_task(sender.run(stop))
    await eventually(lambda: sender.connected)
    radio.hear(adv(at=clock.now()))
    await eventually(lambda: sender.stats.sent == 1)
    mosquitto.stop()
    await eventually(lambda: not sender.connected)
    for minor in range(8):  # three more than the buffer holds
        radio.hear(adv(minor=minor, at=clock.now()))
    await eventually(lambda: sender.stats.heard == 9)
    assert sender.waiting == 5
    assert sender.stats.dropped == 3
    mosquitto.start()
    gateway = NodeBackend(
        "store-001", [NodeBroker(mosquitto.url, (NodeSpec("ours", "pi-1", "gw-entrance"),))], clock
    )
    async with gateway:
        await eventually(lambda: sender.stats.sent == 6, 10)  # the five kept are sent
        await eventually(lambda: gateway.scanning)
        # the retained status says how many the node dropped
        await eventually(lambda: gateway.ingest.nodes[("ours", "pi-1")].node_dropped == 3)
        stop.set()
        stats = await asyncio.wait_for(running, 10)
    assert sender.waiting == 0
    assert (stats.heard, stats.sent, stats.dropped) == (9, 6, 3)


class Failing(Heard):
    """A radio that goes away after its first advertisement."""

    async def advertisements(self) -> AsyncIterator[Advertisement]:
        async for item in super().advertisements():
            yield item
            raise AdapterError("hci0 disappeared")


async def test_a_node_whose_radio_fails_says_offline_before_it_goes(mosquitto: Mosquitto) -> None:
    clock = SystemClock()
    spec = NodeSpec("ours", "pi-1", "gw-entrance")
    gateway = NodeBackend("store-001", [NodeBroker(mosquitto.url, (spec,))], clock)
    radio = Failing()
    sender = NodeSender(radio, mosquitto.url, store="store-001", node="pi-1", clock=clock)
    async with gateway:
        await eventually(lambda: gateway.scanning)
        running = asyncio.create_task(sender.run())
        await eventually(lambda: gateway.ingest.alive("gw-entrance") is True)
        radio.hear(adv(at=clock.now()))
        with pytest.raises(AdapterError, match="hci0 disappeared"):
            await asyncio.wait_for(running, 10)
        await eventually(lambda: gateway.ingest.alive("gw-entrance") is False)
