"""MqttPublisher against a real mosquitto, checked by independent subscribers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import threading
from datetime import timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from proximity.clock import VirtualClock
from proximity.delivery.publisher import MqttPublisher
from proximity.delivery.url import BrokerUrl
from proximity.errors import BrokerUnavailable
from proximity.offers import Cta, CtaFormat, Moment, Offer
from tests.factories import T0, make_event
from tests.mosquitto import Mosquitto, free_port

ROOT = Path(__file__).resolve().parent.parent


def make_offer(**overrides: object) -> Offer:
    fields: dict[str, object] = {
        "id": "o-1",
        "rule": "coffee-coupon",
        "moment": Moment.BUY,
        "cta": Cta(format=CtaFormat.BANNER, title="20% off", text="today", link="shop://c"),
        "coupon": "COFFEE-20",
        "store": "store-001",
        "zone": "coffee",
        "issued_at": T0,
        "expires_at": T0 + timedelta(minutes=15),
    }
    fields.update(overrides)
    return Offer(**fields)  # type: ignore[arg-type]


def publisher(broker: Mosquitto, **kw: object) -> MqttPublisher:
    options: dict[str, object] = {
        "store": "store-001",
        "gateway": "gw-1",
        "client_id": "test-gw",
        "clock": VirtualClock(T0),
    }
    options.update(kw)
    return MqttPublisher(broker.url, **options)  # type: ignore[arg-type]


class Sub:
    def __init__(self, port: int, topic: str = "proximity/#") -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, m: self.messages.append(m)
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        assert ready.wait(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def until(condition: object, limit: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not condition():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_an_offer_arrives_byte_for_byte_at_mosquitto_sub(mosquitto: Mosquitto) -> None:
    sub = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(mosquitto.port),
            "-V",
            "mqttv5",
            "-t",
            "proximity/v1/store-001/shoppers/+/offers",
            "-q",
            "1",
            "-C",
            "1",
            "-W",
            "10",
            "-F",
            "%t %p",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    await asyncio.sleep(0.3)  # let mosquitto_sub subscribe
    offer = make_offer()
    async with publisher(mosquitto) as pub:
        assert await pub.publish_offer("s-token-1", offer)
    out, _ = await asyncio.to_thread(sub.communicate, timeout=10)
    topic, payload = out.strip().split(" ", 1)
    assert topic == "proximity/v1/store-001/shoppers/s-token-1/offers"
    assert payload == offer.model_dump_json()
    assert Offer.model_validate_json(payload) == offer


async def test_mqtt5_expiry_and_user_properties(mosquitto: Mosquitto) -> None:
    sub = Sub(mosquitto.port, "proximity/v1/store-001/shoppers/#")
    try:
        async with publisher(mosquitto) as pub:
            await pub.publish_offer("s-token-1", make_offer(rules_version="2026-11-24.1"))
            await until(lambda: sub.messages)
        (msg,) = sub.messages
        assert msg.qos == 1
        assert not msg.retain
        props = msg.properties
        assert props is not None
        assert 890 <= props.MessageExpiryInterval <= 900
        assert dict(props.UserProperty) == {
            "offer_id": "o-1",
            "rule": "coffee-coupon",
            "rules_version": "2026-11-24.1",
        }
    finally:
        sub.close()


async def test_an_offer_that_already_expired_is_not_published(mosquitto: Mosquitto) -> None:
    late = make_offer(issued_at=T0 - timedelta(minutes=20), expires_at=T0 - timedelta(minutes=5))
    sub = Sub(mosquitto.port)
    try:
        async with publisher(mosquitto) as pub:
            assert not await pub.publish_offer("s-token-1", late)
            assert pub.expired == 1
            await asyncio.sleep(0.2)
        assert not [m for m in sub.messages if m.topic.endswith("/offers")]
    finally:
        sub.close()


async def test_retained_status_online_then_offline(mosquitto: Mosquitto) -> None:
    topic = "proximity/v1/store-001/gateways/gw-1/status"
    async with publisher(mosquitto, rules_version="r7") as pub:
        late = Sub(mosquitto.port, topic)  # subscribes after the status was published
        try:
            await until(lambda: late.messages)
            status = json.loads(late.messages[0].payload)
            assert late.messages[0].retain
            assert status["state"] == "online"
            assert status["rules_version"] == "r7"
            await pub.publish_event(make_event())
        finally:
            late.close()
    after = Sub(mosquitto.port, topic)
    try:
        await until(lambda: after.messages)
        assert json.loads(after.messages[0].payload)["state"] == "offline"
    finally:
        after.close()


async def test_the_last_will_marks_a_killed_gateway_offline(mosquitto: Mosquitto) -> None:
    script = textwrap.dedent(f"""
        import asyncio, sys
        from proximity.delivery.publisher import MqttPublisher
        from proximity.delivery.url import BrokerUrl
        from proximity.logsetup import configure_logging
        configure_logging(stream=sys.stderr)
        async def main():
            async with MqttPublisher(BrokerUrl.tcp("127.0.0.1", {mosquitto.port}),
                                     store="store-001", gateway="gw-9", client_id="doomed"):
                print("up", flush=True)
                await asyncio.sleep(60)
        asyncio.run(main())
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert proc.stdout is not None
        assert (await asyncio.to_thread(proc.stdout.readline)).strip() == "up"
        sub = Sub(mosquitto.port, "proximity/v1/store-001/gateways/gw-9/status")
        try:
            await until(lambda: sub.messages)
            assert json.loads(sub.messages[-1].payload)["state"] == "online"
            proc.kill()  # no DISCONNECT: the broker must publish the will
            await until(lambda: json.loads(sub.messages[-1].payload)["state"] == "offline")
        finally:
            sub.close()
    finally:
        proc.kill()
        proc.communicate(timeout=5)
    retained = Sub(mosquitto.port, "proximity/v1/store-001/gateways/gw-9/status")
    try:
        await until(lambda: retained.messages)
        assert json.loads(retained.messages[0].payload)["state"] == "offline"
    finally:
        retained.close()


async def test_no_broker_is_a_clear_error_not_a_hang() -> None:
    url = BrokerUrl.tcp("127.0.0.1", free_port())
    pub = MqttPublisher(url, store="s", gateway="g", client_id="c", connect_timeout=3)
    with pytest.raises(BrokerUnavailable, match=r"cannot connect to mqtt://127\.0\.0\.1"):
        await pub.__aenter__()


async def test_a_broker_lost_mid_stream_fails_publishes_fast(mosquitto: Mosquitto) -> None:
    async with publisher(mosquitto, publish_timeout=5) as pub:
        await pub.publish_offer("s-token-1", make_offer())
        mosquitto.kill()
        await until(lambda: not pub.connected)
        with pytest.raises(BrokerUnavailable):
            await pub.publish_offer("s-token-1", make_offer(id="o-2"))
        assert pub.failed == 1
        mosquitto.start()  # paho reconnects by itself, with backoff
        await until(lambda: pub.connected, limit=10)
        assert await pub.publish_offer("s-token-1", make_offer(id="o-3"))


async def test_signage_goes_to_the_zone_topic(mosquitto: Mosquitto) -> None:
    sub = Sub(mosquitto.port, "proximity/v1/store-001/zones/+/signage")
    try:
        async with publisher(mosquitto) as pub:
            assert await pub.publish_signage(make_offer(zone="bakery"))
            await until(lambda: sub.messages)
        (msg,) = sub.messages
        assert msg.topic == "proximity/v1/store-001/zones/bakery/signage"
        assert Offer.model_validate_json(msg.payload).zone == "bakery"
    finally:
        sub.close()
