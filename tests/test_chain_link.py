"""hq's MQTT client reads the uplink through its own buffer and a shortcut for plain QoS 1
messages: what arrives must be exactly what was sent, whatever the QoS, properties, size
and how the bytes fall into reads."""

from __future__ import annotations

import asyncio
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from proximity.chain.link import UplinkClient
from tests.mosquitto import Mosquitto

pytestmark = pytest.mark.timeout(30)


async def test_every_message_arrives_as_sent_whatever_its_qos_properties_and_size(
    mosquitto: Mosquitto,
) -> None:
    got: list[tuple[str, bytes]] = []
    link = UplinkClient(
        mosquitto.url,
        client_id="link-test",
        share_group="",
        session_expiry_s=60,
        on_messages=got.extend,
    )
    await link.start()
    sender = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sender.max_inflight_messages_set(0)
    sender.connect("127.0.0.1", mosquitto.port)
    sender.loop_start()
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = ("k", "v")
    props.ContentType = "application/json"
    sent = []
    qos_of: dict[bytes, int] = {}
    try:
        for n in range(400):
            size = (n * 7919) % 3000 if n != 200 else 200_000  # one spans many 64 KiB reads
            payload = bytes([n % 251]) * size
            topic = f"proximity/v1/store-{n % 5}/up/facts"
            qos = n % 3 if n % 3 != 2 else 1
            sender.publish(topic, payload, qos=qos, properties=props if n % 4 == 0 else None)
            sent.append((topic, payload))
            qos_of[payload] = qos
        deadline = time.monotonic() + 15
        while len(got) < len(sent) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    finally:
        sender.disconnect()
        sender.loop_stop()
        await link.close()
    # mosquitto keeps the order of one topic and QoS only
    assert sorted(got) == sorted(sent)
    for key in {(t, qos_of[p]) for t, p in sent}:
        ones = [p for t, p in sent if (t, qos_of[p]) == key]
        assert [p for t, p in got if (t, qos_of[p]) == key] == ones
