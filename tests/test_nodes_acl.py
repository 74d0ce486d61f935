"""deploy/mosquitto's ACL for scanner nodes, on a real mosquitto: a node publishes only under
its own topics, and only the gateway reads them (raw device addresses stay there)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from proximity.adapters.nodes.backend import NodeBackend, NodeBroker
from proximity.adapters.nodes.ingest import NodeSpec
from proximity.clock import SystemClock
from proximity.delivery.url import BrokerUrl
from proximity.errors import BrokerUnavailable
from tests.mosquitto import Mosquitto, secured_broker

ROOT = Path(__file__).resolve().parent.parent
USERS = {
    "gw-store-001": "gw-secret",
    "node-pi-entrance": "entrance-pw",
    "node-pi-aisle-3": "aisle-pw",
    "espresense-coffee": "coffee-pw",
    "s-alice": "alice-pw",
}
READINGS = "proximity/v1/store-001/nodes/{node}/readings"


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Mosquitto]:
    with secured_broker(tmp_path, USERS) as broker:
        yield broker


class Client:
    """A paho client as ``user``; records what it receives."""

    def __init__(self, broker: Mosquitto, user: str, subscribe: str | None = None) -> None:
        self.received: list[str] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(user, USERS[user])
        done = threading.Event()
        self.client.on_message = lambda c, u, msg: self.received.append(msg.topic)
        self.client.on_connect = lambda *args: done.set() if subscribe is None else None
        self.client.on_subscribe = lambda *args: done.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        if subscribe is not None:
            self.client.subscribe(subscribe, qos=1)
        assert done.wait(5)

    def publish(self, topic: str) -> None:
        self.client.publish(
            topic, b'{"seq": 1, "sent": 1, "readings": []}', qos=1
        ).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client._reset_sockets()


def test_a_node_publishes_only_under_its_own_name_and_only_the_gateway_reads_it(
    secured: Mosquitto,
) -> None:
    gateway = Client(secured, "gw-store-001", "proximity/v1/store-001/nodes/#")
    shopper = Client(secured, "s-alice", "proximity/v1/store-001/nodes/#")
    espresense_reader = Client(secured, "espresense-coffee", "proximity/v1/store-001/nodes/#")
    entrance = Client(secured, "node-pi-entrance")
    aisle = Client(secured, "node-pi-aisle-3")
    try:
        aisle.publish(READINGS.format(node="pi-entrance"))  # posing as another node: refused
        aisle.publish(READINGS.format(node="pi-aisle-3"))
        entrance.publish(READINGS.format(node="pi-entrance"))
        # a marker published last by the gateway itself: once it is in, the others were judged
        marker = "proximity/v1/store-001/nodes/marker/status"
        Client.publish(gateway, marker)
        until = time.monotonic() + 5
        while marker not in gateway.received and time.monotonic() < until:
            time.sleep(0.01)
        assert gateway.received == [
            READINGS.format(node="pi-aisle-3"),
            READINGS.format(node="pi-entrance"),
            marker,
        ]
        assert shopper.received == []  # a shopper app never sees nodes/ (raw addresses)
        assert espresense_reader.received == []
    finally:
        for client in (gateway, shopper, espresense_reader, entrance, aisle):
            client.close()


async def test_a_gateway_with_wrong_credentials_fails_at_start(secured: Mosquitto) -> None:
    """Refused credentials are a configuration error, said at once (not retried forever)."""
    url = BrokerUrl.parse(f"mqtt://gw-store-001:wrong@127.0.0.1:{secured.port}")
    backend = NodeBackend(
        "store-001",
        [NodeBroker(url, (NodeSpec("ours", "pi-entrance", "gw-entrance"),))],
        SystemClock(),
    )
    with pytest.raises(BrokerUnavailable, match="refused"):
        await backend.start()
    assert not backend.scanning
