"""Remote scanner nodes through a real mosquitto into the running daemon.

Nodes of the three formats (ours, ESPresense, OpenMQTTGateway) publish with
plain paho clients; the daemon (``proximity run``'s own serving path, with
``ble.backend = "nodes"``) places the shopper in the zone of each node in turn,
publishes the journey events and the offer on the broker, and counts what it
could not use (a malformed batch, a redelivered one) without stopping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from proximity.adapters.ble.ibeacon import IBeacon, build_ibeacon
from proximity.adapters.nodes.backend import NodeBackend
from proximity.clock import SystemClock
from proximity.config import Settings
from proximity.service import _serve
from proximity.wiring import build_runtime
from tests.factories import APP_UUID
from tests.mosquitto import Mosquitto, Subscriber, eventually

STORE = "store-001"
FRAME = build_ibeacon(IBeacon(APP_UUID, 1, 0x8001, -59))  # a consenting shopper's phone
IBEACON_ID = f"iBeacon:{APP_UUID}-1-32769"
SHOPPER_ADDRESS = "5E:11:22:33:44:55"


def settings_for(broker: Mosquitto, omg_silence: str = "5m") -> Settings:
    return Settings.model_validate(
        {
            "store": {"id": STORE, "gateway": "gw-1"},
            "broker": {"url": str(broker.url)},
            "ble": {"backend": "nodes"},
            "nodes": [
                {"source": "ours", "node": "pi-entrance", "scanner": "gw-entrance"},
                {"source": "espresense", "node": "coffee", "scanner": "gw-coffee"},
                {
                    "source": "omg",
                    "node": "omg-bakery",
                    "scanner": "gw-bakery",
                    "silence": omg_silence,
                },
            ],
            "presence": {"tick": "100ms"},
            "rules": {"watch": False},
            "events": {"qos": 1},
            "metrics": {"enabled": False},
        }
    )


class Node:
    """A paho client publishing as the scanner nodes do (QoS 1, acknowledged)."""

    def __init__(self, broker: Mosquitto) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.seq = 0

    def publish(self, topic: str, payload: bytes | str) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def ours(self, rssi: int, *, seq: int | None = None) -> bytes:
        """One batch of ours from pi-entrance: the phone's frame, heard 50 ms before sending."""
        if seq is None:
            self.seq += 1
            seq = self.seq
        body = {
            "seq": seq,
            "boot": "b1",
            "sent": SystemClock().now().timestamp(),
            "readings": [
                {"addr": SHOPPER_ADDRESS, "rssi": rssi, "dt": 0.05, "mfr": {"76": FRAME.hex()}}
            ],
        }
        payload = json.dumps(body).encode()
        self.publish(f"proximity/v1/{STORE}/nodes/pi-entrance/readings", payload)
        return payload

    def espresense(self, rssi: int) -> None:
        body = {"id": IBEACON_ID, "rssi@1m": -59, "rssi": rssi, "distance": 0.8, "int": 1000}
        self.publish(f"espresense/devices/{IBEACON_ID}/coffee", json.dumps(body))

    def omg(self, rssi: int) -> None:
        body = {
            "id": SHOPPER_ADDRESS,
            "mac_type": 1,
            "rssi": rssi,
            "manufacturerdata": "4c00" + FRAME.hex(),
            "txpower": -59,
        }
        self.publish(
            f"home/omg-bakery/BTtoMQTT/{SHOPPER_ADDRESS.replace(':', '')}", json.dumps(body)
        )

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client._reset_sockets()


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[NodeBackend]:
    """The daemon as `proximity run` serves it, until the block ends; yields its nodes."""
    runtime = build_runtime(settings, SystemClock())
    backend = runtime.adapter.backend
    assert isinstance(backend, NodeBackend)
    stop = asyncio.Event()
    task = asyncio.create_task(_serve(settings, runtime, stop, None))
    try:
        await eventually(lambda: backend.scanning or task.done(), 10)
        assert not task.done(), task
        yield backend
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


def events(sub: Subscriber) -> list[tuple[str, str | None]]:
    out = []
    for payload in sub.payloads("/events"):
        event = json.loads(payload)
        out.append((event["kind"], event.get("zone")))
    return out


async def walk(node: Node, sub: Subscriber, zone: str, step: Any, rssi: int) -> None:
    """Readings of one node every 100 ms until the shopper is placed in its zone."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while ("zone.enter", zone) not in events(sub):
        assert loop.time() < deadline, f"never placed in {zone}: {events(sub)}"
        await asyncio.to_thread(step, rssi)
        await asyncio.sleep(0.1)


async def test_a_shopper_walks_past_three_kinds_of_node(mosquitto: Mosquitto) -> None:
    settings = settings_for(mosquitto)
    sub = Subscriber(mosquitto.port, f"proximity/v1/{STORE}/#")
    node = Node(mosquitto)
    try:
        async with running(settings) as backend:
            await walk(node, sub, "entrance", node.ours, -60)
            await walk(node, sub, "coffee", node.espresense, -50)
            await walk(node, sub, "bakery", node.omg, -40)

            # what the gateway cannot use is counted, and it goes on reading
            await asyncio.to_thread(
                node.publish, f"proximity/v1/{STORE}/nodes/pi-entrance/readings", b"{not json"
            )
            await asyncio.to_thread(
                node.publish,
                "home/omg-bakery/BTtoMQTT/AABBCCDDEEFF",
                b'{"id": "AA:BB:CC:DD:EE:FF"}',
            )
            await asyncio.to_thread(node.ours, -90, seq=1)  # batch 1 again: a redelivery
            await asyncio.to_thread(node.ours, -90)
            ingest = backend.ingest
            await eventually(lambda: ingest.nodes[("ours", "pi-entrance")].batches >= node.seq)
            assert ingest.rejected == {"ours:bad_json": 1, "omg:missing_field": 1}
            assert ingest.dropped["duplicate_batch"] == 1
            assert backend.scanning
            families = {f.name: f for f in backend.metric_families()}
            up = {s.labels["node"]: s.value for s in families["proximity_node_up"].samples}
            assert up == {"pi-entrance": 1, "coffee": 1, "omg-bakery": 1}
            rejected = families["proximity_node_messages_rejected"].samples
            assert {(s.labels["source"], s.labels["problem"]) for s in rejected} == {
                ("ours", "bad_json"),
                ("omg", "missing_field"),
            }
            labels = json.dumps([s.labels for f in families.values() for s in f.samples])
            assert SHOPPER_ADDRESS not in labels
            assert SHOPPER_ADDRESS.replace(":", "") not in labels
    finally:
        node.close()
        sub.close()
    entered = [zone for kind, zone in events(sub) if kind == "zone.enter"]
    assert entered == ["entrance", "coffee", "bakery"]
    offers = [json.loads(p)["rule"] for p in sub.payloads("/offers")]
    assert "welcome-directions" in offers  # the entrance offer, reached through a node


async def test_a_node_that_vanishes_is_marked_dead_and_comes_back(mosquitto: Mosquitto) -> None:
    """A node's will (the broker saw it vanish) marks it dead at once; its readings back
    make it alive again, with no restart; a node that goes quiet is marked dead too."""
    settings = settings_for(mosquitto, omg_silence="1s")
    status = f"proximity/v1/{STORE}/nodes/pi-entrance/status"
    node = Node(mosquitto)
    async with running(settings) as backend:
        ingest = backend.ingest
        vanishing = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        vanishing.will_set(status, b"offline", qos=1, retain=True)
        connected = threading.Event()
        vanishing.on_connect = lambda *args: connected.set()
        vanishing.connect("127.0.0.1", mosquitto.port)
        vanishing.loop_start()
        assert await asyncio.to_thread(connected.wait, 5)
        vanishing.publish(status, b'{"state": "online", "boot": "b1"}', qos=1, retain=True)
        await eventually(lambda: ingest.alive("gw-entrance") is True)
        vanishing.loop_stop()
        sock = vanishing.socket()
        assert sock is not None
        sock.close()  # gone without a DISCONNECT: the broker publishes the will
        vanishing._reset_sockets()
        await eventually(lambda: ingest.alive("gw-entrance") is False)
        await asyncio.to_thread(node.ours, -60)
        await eventually(lambda: ingest.alive("gw-entrance") is True)
        # the OMG gateway speaks once, then goes quiet for longer than its 1 s silence
        await asyncio.to_thread(node.omg, -70)
        await eventually(lambda: ingest.alive("gw-bakery") is True)
        await eventually(lambda: ingest.alive("gw-bakery") is False, 4)
    node.close()
