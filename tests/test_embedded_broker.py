"""The embedded (amqtt, MQTT 3.1.1) broker: the same publish/subscribe path as on mosquitto."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time

import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from proximity.clock import VirtualClock
from proximity.delivery.app_client import ShopperApp
from proximity.delivery.broker import EmbeddedBroker
from proximity.delivery.publisher import MqttPublisher
from proximity.delivery.url import BrokerUrl
from proximity.errors import BrokerUnavailable
from tests.factories import T0
from tests.mosquitto import Subscriber, eventually
from tests.test_app_client import collect
from tests.test_publisher import make_offer


def gateway(broker: EmbeddedBroker, **kw: object) -> MqttPublisher:
    options: dict[str, object] = {
        "store": "store-001",
        "gateway": "gw-1",
        "client_id": "gw",
        "protocol": broker.protocol,
        "clock": VirtualClock(T0),
    }
    options.update(kw)
    return MqttPublisher(broker.url, **options)  # type: ignore[arg-type]


async def test_port_0_is_a_free_port_the_broker_tells() -> None:
    async with EmbeddedBroker(port=0) as one, EmbeddedBroker(port=0) as two:
        assert one.port > 0
        assert two.port > 0
        assert one.port != two.port
        assert one.url == BrokerUrl.tcp("127.0.0.1", one.port)
        assert one.protocol == EmbeddedBroker.protocol == "3.1.1"


async def test_an_offer_goes_through_byte_for_byte_with_mqtt_311() -> None:
    async with (
        EmbeddedBroker(port=0) as broker,
        ShopperApp(broker.url, store="store-001", token="s-alice", protocol="3.1.1") as app,
        gateway(broker) as pub,
    ):
        offer = make_offer()
        assert await pub.publish_offer("s-alice", offer)
        (received,) = await collect(app, 1)
        # a late subscriber finds the retained status (in a thread: the broker runs on this loop)
        status = await asyncio.to_thread(
            Subscriber,
            broker.port,
            "proximity/v1/store-001/gateways/+/status",
            MQTTProtocolVersion.MQTTv311,
        )
        try:
            await eventually(lambda: status.messages)
        finally:
            await asyncio.to_thread(status.close)
    assert received.offer == offer
    assert received.payload == offer.model_dump_json().encode()
    assert received.topic == "proximity/v1/store-001/shoppers/s-alice/offers"
    assert received.expiry_interval is None  # MQTT 3.1.1 has no message expiry
    assert status.messages[0].retain
    assert json.loads(status.messages[0].payload)["state"] == "online"


async def test_mqtt5_clients_are_turned_away_with_a_hint() -> None:
    async with EmbeddedBroker(port=0) as broker:
        with pytest.raises(BrokerUnavailable, match=r"3\.1\.1-only"):
            async with ShopperApp(broker.url, store="store-001", token="s-alice", protocol="5"):
                pass
        started = time.monotonic()
        # amqtt never answers an MQTT 5 CONNECT with a will: the connect timeout says why
        with pytest.raises(BrokerUnavailable, match=r"3\.1\.1-only"):
            async with gateway(broker, protocol="5", connect_timeout=0.5):
                pass
        assert time.monotonic() - started < 3


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "broker.example", "::"])
def test_only_loopback_binds_are_allowed(host: str) -> None:
    with pytest.raises(ValueError, match="only listens on loopback"):
        EmbeddedBroker(host=host)


async def test_localhost_is_ipv4_loopback() -> None:
    async with EmbeddedBroker(host="localhost", port=0) as broker:
        assert broker.url.host == "127.0.0.1"


async def test_a_port_in_use_is_a_clear_error() -> None:
    async with EmbeddedBroker(port=0) as first:
        with pytest.raises(
            BrokerUnavailable, match=f"cannot start the embedded broker on 127.0.0.1:{first.port}"
        ):
            async with EmbeddedBroker(port=first.port):
                pass


async def test_amqtt_stays_quiet_and_nothing_is_left_open(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with EmbeddedBroker(port=0) as broker:
        app = ShopperApp(broker.url, store="store-001", token="s-alice", protocol="3.1.1")
        pub = gateway(broker)
        await app.__aenter__()
        await pub.__aenter__()
        await pub.publish_offer("s-alice", make_offer())
        await collect(app, 1)
    # the broker went first, with both clients still connected; they still close cleanly
    await asyncio.gather(pub.__aexit__(None, None, None), app.__aexit__(None, None, None))
    gc.collect()  # an unclosed socket would surface here, as an error (filterwarnings=error)
    chatty = [r for r in caplog.records if r.name.startswith(("amqtt", "transitions"))]
    assert all(r.levelno >= logging.WARNING for r in chatty), chatty[:3]
