"""The nodes' BLE backend on its own: a broker away at start, a full queue, and the merged
stream of local radios and nodes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from proximity.adapters.base import Advertisement, BleBackend
from proximity.adapters.ble.merged import MergedBackend
from proximity.adapters.nodes.backend import NodeBackend, NodeBroker, subscriptions
from proximity.adapters.nodes.ingest import NodeSpec
from proximity.clock import SystemClock
from proximity.delivery.url import BrokerUrl
from proximity.errors import AdapterError
from tests.factories import T0
from tests.mosquitto import Mosquitto, eventually
from tests.test_nodes_mosquitto import Node

PI = NodeSpec("ours", "pi-entrance", "gw-entrance")


def test_subscriptions_per_source() -> None:
    assert subscriptions("store-001", ["omg", "ours", "ours"]) == [
        "home/+/BTtoMQTT/+",
        "home/+/LWT",
        "home/+/SYStoMQTT",
        "proximity/v1/store-001/nodes/+/readings",
        "proximity/v1/store-001/nodes/+/status",
    ]


async def test_a_broker_away_at_start_is_waited_for(mosquitto: Mosquitto) -> None:
    mosquitto.stop()
    backend = NodeBackend("store-001", [NodeBroker(mosquitto.url, (PI,))], SystemClock())
    await backend.start()
    try:
        assert not backend.scanning  # not ready, not failed
        mosquitto.start()  # the same port: paho, trying every second, gets in
        await eventually(lambda: backend.scanning, 5)
        node = Node(mosquitto)
        try:
            heard = asyncio.create_task(anext(aiter(backend.advertisements())))
            for _ in range(50):  # until the renewed subscription is in place
                await asyncio.to_thread(node.ours, -60)
                await asyncio.wait([heard], timeout=0.1)
                if heard.done():
                    break
            adv = await asyncio.wait_for(heard, 1)
        finally:
            node.close()
        assert (adv.scanner, adv.data.rssi) == ("gw-entrance", -60)
    finally:
        await backend.stop()
    assert [adv async for adv in backend.advertisements()] == []  # stopped: the stream ends


async def test_a_full_queue_drops_and_counts_instead_of_blocking(mosquitto: Mosquitto) -> None:
    backend = NodeBackend(
        "store-001", [NodeBroker(mosquitto.url, (PI,))], SystemClock(), queue_limit=2
    )
    node = Node(mosquitto)
    async with backend:
        await eventually(lambda: backend.scanning)
        for _ in range(4):
            await asyncio.to_thread(node.ours, -60)
        await eventually(lambda: backend.ingest.nodes[("ours", "pi-entrance")].batches == 4)
        assert backend.queue_full == 2
    node.close()


class Fixed(BleBackend):
    """Hands over ``count`` advertisements of one scanner, then ends (or fails)."""

    def __init__(self, scanner: str, count: int, fail: bool = False) -> None:
        self.scanner = scanner
        self.count = count
        self.fail = fail
        self.started = self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def advertisements(self) -> AsyncIterator[Advertisement]:
        for i in range(self.count):
            await asyncio.sleep(0)
            yield Advertisement(
                BLEDevice("AA:BB:CC:DD:EE:FF", None, None),
                AdvertisementData(None, {}, {}, [], None, -60, ()),
                self.scanner,
                T0 + timedelta(seconds=i),
            )
        if self.fail:
            raise AdapterError(f"{self.scanner} went away")


async def test_merged_backends_hand_over_everything_and_start_and_stop_together() -> None:
    radio, nodes = Fixed("hci0", 3), Fixed("pi-1", 5)
    merged = MergedBackend([radio, nodes])
    async with merged:
        got = [adv.scanner async for adv in merged.advertisements()]
    assert sorted(got) == ["hci0"] * 3 + ["pi-1"] * 5
    assert (radio.started, radio.stopped, nodes.started, nodes.stopped) == (True,) * 4
    assert merged.scanning  # parts that do not say are taken as scanning


async def test_a_failing_part_fails_the_merged_stream() -> None:
    merged = MergedBackend([Fixed("hci0", 2, fail=True), Fixed("pi-1", 1000)])

    async def read_all() -> None:
        async with merged:
            async for _ in merged.advertisements():
                pass

    with pytest.raises(AdapterError, match="hci0 went away"):
        await read_all()


def test_node_metric_labels_come_from_the_config() -> None:
    broker = NodeBroker(BrokerUrl.tcp("127.0.0.1", 1), (PI,))
    backend = NodeBackend("store-001", [broker], SystemClock())
    backend.ingest.handle("proximity/v1/store-001/nodes/x/readings", json.dumps({}).encode(), T0)
    families = {f.name: f for f in backend.metric_families()}
    assert [s.labels for s in families["proximity_node_up"].samples] == [
        {"node": "pi-entrance", "scanner": "gw-entrance"}
    ]
    assert {s.labels["reason"] for s in families["proximity_node_dropped"].samples} == {
        "unknown_node",
        "queue_full",
    }


def test_metrics_show_the_nodes_through_the_daemon() -> None:
    """``/metrics`` of a daemon reading nodes carries the nodes' families (up, dropped...)
    next to its own, from the backend it reads."""
    from proximity.adapters.ble.adapter import BleAdapter
    from proximity.clock import VirtualClock
    from proximity.config import Settings
    from proximity.daemon import Daemon
    from proximity.metrics import Metrics
    from proximity.wiring import build_runtime
    from tests.test_daemon import RecordingSink

    broker = NodeBroker(BrokerUrl.tcp("127.0.0.1", 1), (PI,))
    backend = NodeBackend("store-001", [broker], SystemClock())
    backend.ingest.handle("proximity/v1/store-001/nodes/x/readings", b"{}", T0)
    clock = VirtualClock(T0)
    runtime = build_runtime(Settings(), clock)
    daemon = Daemon(BleAdapter(backend), runtime.pipeline, RecordingSink(), clock)
    metrics = Metrics()
    metrics.watch(daemon, None)
    text = metrics.render().decode()
    assert 'proximity_node_up{node="pi-entrance",scanner="gw-entrance"} 0.0' in text
    assert 'proximity_node_dropped_total{reason="unknown_node"} 1.0' in text
    assert "proximity_readings_total" in text  # the daemon's own, still there
