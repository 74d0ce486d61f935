"""The embedded amqtt broker and the reference shopper app, on real sockets."""

from __future__ import annotations

import asyncio

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from proximity.clock import VirtualClock
from proximity.delivery.app_client import ReceivedOffer, ShopperApp
from proximity.delivery.broker import EmbeddedBroker
from proximity.delivery.publisher import MqttPublisher
from proximity.delivery.url import BrokerUrl
from tests.factories import T0
from tests.mosquitto import Mosquitto
from tests.test_publisher import make_offer


async def collect(app: ShopperApp, n: int, limit: float = 5.0) -> list[ReceivedOffer]:
    out: list[ReceivedOffer] = []

    async def take() -> None:
        async for received in app.offers():
            out.append(received)
            if len(out) == n:
                return

    await asyncio.wait_for(take(), limit)
    return out


async def test_publish_and_receive_through_the_embedded_broker() -> None:
    async with EmbeddedBroker(port=0) as broker:
        assert broker.port > 0
        assert broker.protocol == "3.1.1"
        async with (
            ShopperApp(broker.url, store="store-001", token="s-alice", protocol="3.1.1") as app,
            MqttPublisher(
                broker.url,
                store="store-001",
                gateway="gw-1",
                client_id="gw",
                protocol="3.1.1",
                clock=VirtualClock(T0),
            ) as pub,
        ):
            offer = make_offer()
            await pub.publish_offer("s-alice", offer)
            (received,) = await collect(app, 1)
    assert received.offer == offer
    assert received.payload == offer.model_dump_json().encode()
    assert received.expiry_interval is None  # MQTT 3.1.1 has no message expiry


def test_the_embedded_broker_refuses_non_loopback_binds() -> None:
    with pytest.raises(ValueError, match="loopback"):
        EmbeddedBroker(host="0.0.0.0")


async def test_an_app_receives_only_its_own_offers_and_counts_garbage(
    mosquitto: Mosquitto,
) -> None:
    async with (
        ShopperApp(mosquitto.url, store="store-001", token="s-alice") as alice,
        ShopperApp(mosquitto.url, store="store-001", token="s-bob") as bob,
        MqttPublisher(
            mosquitto.url, store="store-001", gateway="gw-1", client_id="gw", clock=VirtualClock(T0)
        ) as pub,
    ):
        raw = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        raw.connect("127.0.0.1", mosquitto.port)
        raw.loop_start()
        try:
            topic = "proximity/v1/store-001/shoppers/s-alice/offers"
            raw.publish(topic, b"{not json", qos=1).wait_for_publish(5)
            raw.publish(topic, b'{"id": "x"}', qos=1).wait_for_publish(5)
        finally:
            raw.disconnect()
            raw.loop_stop()
        await pub.publish_offer("s-alice", make_offer(id="o-alice"))
        await pub.publish_offer("s-bob", make_offer(id="o-bob"))
        (for_alice,) = await collect(alice, 1)
        (for_bob,) = await collect(bob, 1)
        await alice.send_feedback("o-alice", "opened")
        await asyncio.sleep(0.2)
        assert alice.pending == 0
        assert bob.pending == 0
    assert for_alice.offer.id == "o-alice"
    assert for_bob.offer.id == "o-bob"
    assert for_alice.expiry_interval is not None
    assert sum(alice.rejected.values()) == 2
    assert sum(bob.rejected.values()) == 0


async def test_an_app_without_a_broker_fails_clearly() -> None:
    from proximity.errors import BrokerUnavailable
    from tests.mosquitto import free_port

    with pytest.raises(BrokerUnavailable, match="cannot connect"):
        async with ShopperApp(BrokerUrl.tcp("127.0.0.1", free_port()), store="s", token="s-x"):
            pass


async def test_the_app_command_prints_offers_and_sends_feedback(mosquitto: Mosquitto) -> None:
    import json
    import subprocess
    import sys

    feedback = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(mosquitto.port),
            "-V",
            "mqttv5",
            "-t",
            "proximity/v1/store-001/shoppers/s-alice/feedback",
            "-C",
            "2",
            "-W",
            "20",
            "-F",
            "%p",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    app = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proximity",
            "app",
            "--shopper",
            "s-alice",
            "--broker",
            f"mqtt://127.0.0.1:{mosquitto.port}",
            "--count",
            "1",
            "--json",
            "--then",
            "opened",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        await asyncio.sleep(1.0)  # both subscribed
        async with MqttPublisher(
            mosquitto.url, store="store-001", gateway="gw-1", client_id="gw", clock=VirtualClock(T0)
        ) as pub:
            await pub.publish_offer("s-alice", make_offer(id="o-for-alice"))
        out, err = await asyncio.to_thread(app.communicate, timeout=20)
        got, _ = await asyncio.to_thread(feedback.communicate, timeout=20)
    finally:
        for proc in (app, feedback):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert app.returncode == 0, err
    assert json.loads(out)["id"] == "o-for-alice"
    actions = [json.loads(line) for line in got.splitlines()]
    assert [(a["offer"], a["action"]) for a in actions] == [
        ("o-for-alice", "delivered"),
        ("o-for-alice", "opened"),
    ]
