"""The reference shopper app (ShopperApp) against a real mosquitto."""

from __future__ import annotations

import asyncio
import json
import time

import paho.mqtt.client as mqtt
import pytest
import structlog
from paho.mqtt.enums import CallbackAPIVersion

from proximity.clock import VirtualClock
from proximity.delivery.app_client import ReceivedOffer, ShopperApp
from proximity.delivery.publisher import MqttPublisher
from proximity.delivery.url import BrokerUrl
from proximity.errors import BrokerUnavailable
from tests.factories import T0
from tests.mosquitto import Mosquitto, Subscriber, eventually, free_port
from tests.test_publisher import make_offer

ALICE_OFFERS = "proximity/v1/store-001/shoppers/s-alice/offers"


async def collect(app: ShopperApp, n: int, limit_s: float = 5.0) -> list[ReceivedOffer]:
    """The next ``n`` offers ``app`` yields (AssertionError after ``limit_s``)."""
    out: list[ReceivedOffer] = []

    async def take() -> None:
        async for received in app.offers():
            out.append(received)
            if len(out) == n:
                return

    try:
        await asyncio.wait_for(take(), limit_s)
    except TimeoutError:
        raise AssertionError(f"{len(out)} of {n} offers in {limit_s:g}s") from None
    return out


def raw_publish(port: int, topic: str, *payloads: bytes) -> None:
    """Publish with a bare paho client (QoS 1, each acknowledged), as anyone on the broker could."""
    raw = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    raw.connect("127.0.0.1", port)
    raw.loop_start()
    try:
        for payload in payloads:
            raw.publish(topic, payload, qos=1).wait_for_publish(5)
    finally:
        raw.disconnect()
        raw.loop_stop()
        raw._reset_sockets()


def gateway(broker: Mosquitto) -> MqttPublisher:
    return MqttPublisher(
        broker.url, store="store-001", gateway="gw-1", client_id="gw", clock=VirtualClock(T0)
    )


async def test_each_app_gets_its_own_offers_and_garbage_is_counted_not_fatal(
    mosquitto: Mosquitto,
) -> None:
    with structlog.testing.capture_logs() as logs:
        async with (
            ShopperApp(mosquitto.url, store="store-001", token="s-alice") as alice,
            ShopperApp(mosquitto.url, store="store-001", token="s-bob") as bob,
            gateway(mosquitto) as pub,
        ):
            raw_publish(
                mosquitto.port, ALICE_OFFERS, b"{not json", b"\xff\xfe", b'{"id": "x"}', b"[]"
            )
            await pub.publish_offer("s-alice", make_offer(id="o-alice"))
            await pub.publish_offer("s-bob", make_offer(id="o-bob"))
            (for_alice,) = await collect(alice, 1)
            (for_bob,) = await collect(bob, 1)
            await asyncio.sleep(0.2)  # anything else would have arrived by now
            assert (alice.pending, bob.pending) == (0, 0)
    assert (for_alice.offer.id, for_bob.offer.id) == ("o-alice", "o-bob")
    assert for_alice.topic == ALICE_OFFERS
    assert for_alice.payload == make_offer(id="o-alice").model_dump_json().encode()
    assert for_alice.expiry_interval is not None
    assert 0 < for_alice.expiry_interval <= 900
    assert alice.rejected == {"json_invalid": 2, "missing": 1, "model_type": 1}
    assert not bob.rejected
    rejected = [entry for entry in logs if entry["event"] == "offer_rejected"]
    assert sorted(entry["reason"] for entry in rejected) == [
        "json_invalid",
        "missing",
        "model_type",
    ]


async def test_entering_waits_for_the_suback(mosquitto: Mosquitto) -> None:
    async with ShopperApp(mosquitto.url, store="store-001", token="s-alice") as app:
        # published the moment the app is ready, by someone else: not missed
        raw_publish(mosquitto.port, ALICE_OFFERS, make_offer().model_dump_json().encode())
        (received,) = await collect(app, 1)
    assert received.offer.id == "o-1"


async def test_a_redelivered_offer_is_dropped_by_id(mosquitto: Mosquitto) -> None:
    async with (
        ShopperApp(mosquitto.url, store="store-001", token="s-alice") as app,
        gateway(mosquitto) as pub,
    ):
        await pub.publish_offer("s-alice", make_offer(id="o-1"))
        await pub.publish_offer("s-alice", make_offer(id="o-1"))  # at least once: twice
        await pub.publish_offer("s-alice", make_offer(id="o-2"))
        received = await collect(app, 2)
        await eventually(lambda: app.duplicates == 1)
    assert [r.offer.id for r in received] == ["o-1", "o-2"]


async def test_feedback_is_json_on_the_feedback_topic(mosquitto: Mosquitto) -> None:
    topic = "proximity/v1/store-001/shoppers/s-alice/feedback"
    sub = Subscriber(mosquitto.port, topic)
    try:
        async with ShopperApp(
            mosquitto.url, store="store-001", token="s-alice", clock=VirtualClock(T0)
        ) as app:
            await app.send_feedback("o-1", "delivered")  # returns after the PUBACK
            await app.send_feedback("o-1", "opened")
            with pytest.raises(ValueError, match="not one of delivered, opened"):
                await app.send_feedback("o-1", "liked")  # type: ignore[arg-type]
            await eventually(lambda: len(sub.messages) == 2)
    finally:
        sub.close()
    assert [m.qos for m in sub.messages] == [1, 1]
    assert [json.loads(m.payload) for m in sub.messages] == [
        {"offer": "o-1", "action": "delivered", "at": T0.isoformat()},
        {"offer": "o-1", "action": "opened", "at": T0.isoformat()},
    ]


async def test_no_broker_is_a_clear_error() -> None:
    url = BrokerUrl.tcp("127.0.0.1", free_port())
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=r"cannot connect to mqtt://127\.0\.0\.1"):
        async with ShopperApp(url, store="store-001", token="s-x", timeout=20):
            pass
    assert time.monotonic() - started < 10  # refused at once, not after the 20 s timeout


async def test_feedback_without_a_broker_fails_at_once(mosquitto: Mosquitto) -> None:
    async with ShopperApp(mosquitto.url, store="store-001", token="s-alice") as app:
        mosquitto.kill()
        await eventually(lambda: not app.connected)
        with pytest.raises(BrokerUnavailable, match="not connected"):
            await app.send_feedback("o-1", "opened")


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
        # the app says when it has subscribed (on stderr, with --json); mosquitto_sub, a C
        # program started first, is subscribed long before a Python interpreter is up
        assert app.stderr is not None
        listening = await asyncio.wait_for(asyncio.to_thread(app.stderr.readline), 20)
        assert listening.startswith("listening for offers to s-alice"), listening
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
