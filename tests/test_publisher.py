"""MqttPublisher against a real mosquitto, checked by independent subscribers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from proximity.clock import ScaledClock, VirtualClock
from proximity.delivery.publisher import MqttPublisher
from proximity.delivery.url import BrokerUrl
from proximity.errors import BrokerUnavailable, PublishTimeout
from proximity.offers import Cta, CtaFormat, Moment, Offer
from tests.factories import T0, make_event
from tests.mosquitto import Mosquitto, MosquittoSub, Subscriber, eventually, free_port

ROOT = Path(__file__).resolve().parent.parent
OFFERS = "proximity/v1/store-001/shoppers/+/offers"
STATUS = "proximity/v1/store-001/gateways/gw-1/status"


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
    return Offer.model_validate(fields)


def publisher(broker: Mosquitto, **kw: object) -> MqttPublisher:
    options: dict[str, object] = {
        "store": "store-001",
        "gateway": "gw-1",
        "client_id": "test-gw",
        "clock": VirtualClock(T0),
    }
    options.update(kw)
    return MqttPublisher(broker.url, **options)  # type: ignore[arg-type]


def status(message: mqtt.MQTTMessage) -> dict[str, object]:
    parsed: dict[str, object] = json.loads(message.payload)
    return parsed


# -- what the broker carries -----------------------------------------------------------------


async def test_status_offer_and_status_reach_mosquitto_sub_byte_for_byte(
    mosquitto: Mosquitto,
) -> None:
    sub = MosquittoSub(
        mosquitto.port,
        "proximity/#",
        count=3,
        fmt="%t|%q|%r|%E|%P|%x",
        extra=("-V", "mqttv5", "--retain-as-published"),  # show the flag the publisher set
    )
    try:
        offer = make_offer(rules_version="r-2026-11-24")
        async with publisher(mosquitto, rules_version="r-2026-11-24") as pub:
            assert await pub.publish_offer("s-token-1", offer)
        lines = await sub.lines()
    finally:
        sub.close()
    rows = [line.split("|") for line in lines]
    assert [(topic, qos, retained) for topic, qos, retained, *_ in rows] == [
        (STATUS, "1", "1"),  # online, retained
        ("proximity/v1/store-001/shoppers/s-token-1/offers", "1", "0"),
        (STATUS, "1", "1"),  # offline, retained
    ]
    _, _, _, expiry, user_properties, payload_hex = rows[1]
    assert bytes.fromhex(payload_hex) == offer.model_dump_json().encode()
    assert expiry == "900"  # 15 minutes left at T0
    assert user_properties.split() == [
        "offer_id:o-1",
        "rule:coffee-coupon",
        "rules_version:r-2026-11-24",
    ]
    assert json.loads(bytes.fromhex(rows[0][-1]))["state"] == "online"
    assert json.loads(bytes.fromhex(rows[2][-1]))["state"] == "offline"


async def test_mqtt5_expiry_is_the_remaining_lifetime_rounded_up(mosquitto: Mosquitto) -> None:
    sub = Subscriber(mosquitto.port, OFFERS)
    try:
        clock = VirtualClock(T0 + timedelta(seconds=0.5))
        async with publisher(mosquitto, clock=clock) as pub:
            await pub.publish_offer("s-a", make_offer(id="o-long"))  # 899.5 s left
            await pub.publish_offer(
                "s-a", make_offer(id="o-short", expires_at=T0 + timedelta(seconds=0.7))
            )
            await eventually(lambda: len(sub.messages) == 2)
    finally:
        sub.close()
    long, short = sub.messages
    assert (long.qos, long.retain) == (1, False)
    assert getattr(long.properties, "MessageExpiryInterval", None) == 900
    # never 0 (which a broker could take as "no expiry"): at least one second
    assert getattr(short.properties, "MessageExpiryInterval", None) == 1
    assert getattr(long.properties, "UserProperty", None) == [
        ("offer_id", "o-long"),
        ("rule", "coffee-coupon"),
    ]


async def test_on_a_sped_up_clock_the_expiry_is_in_real_seconds(mosquitto: Mosquitto) -> None:
    """A simulated store on a clock 60 times real time: an offer with 15 store minutes
    left expires on the broker after 15 real seconds, not 15 minutes."""
    sub = Subscriber(mosquitto.port, OFFERS)
    try:
        clock = ScaledClock(T0, 60.0)
        async with publisher(mosquitto, clock=clock) as pub:
            await pub.publish_offer("s-a", make_offer(expires_at=T0 + timedelta(minutes=15)))
            await eventually(lambda: sub.messages)
    finally:
        sub.close()
    (msg,) = sub.messages
    # the seconds spent connecting count 60 times: 13-15 s left, never minutes
    assert getattr(msg.properties, "MessageExpiryInterval", None) in (13, 14, 15)


async def test_mqtt311_leaves_the_properties_out(mosquitto: Mosquitto) -> None:
    sub = Subscriber(mosquitto.port, OFFERS)
    try:
        offer = make_offer(rules_version="r7")
        async with publisher(mosquitto, protocol="3.1.1") as pub:
            await pub.publish_offer("s-a", offer)
            await eventually(lambda: sub.messages)
    finally:
        sub.close()
    (msg,) = sub.messages
    assert msg.payload == offer.model_dump_json().encode()
    assert not hasattr(msg.properties, "MessageExpiryInterval")
    assert not hasattr(msg.properties, "UserProperty")


async def test_an_offer_that_already_expired_is_not_published(mosquitto: Mosquitto) -> None:
    late = make_offer(issued_at=T0 - timedelta(minutes=20), expires_at=T0 - timedelta(minutes=5))
    sub = Subscriber(mosquitto.port, OFFERS)
    try:
        async with publisher(mosquitto) as pub:
            assert not await pub.publish_offer("s-token-1", late)
            assert (pub.expired, pub.published) == (1, 0)
            await pub.publish_offer("s-token-1", make_offer(id="o-fresh"))
            await eventually(lambda: sub.messages)
    finally:
        sub.close()
    assert [Offer.model_validate_json(m.payload).id for m in sub.messages] == ["o-fresh"]


async def test_signage_goes_to_the_zone_topic(mosquitto: Mosquitto) -> None:
    sub = Subscriber(mosquitto.port, "proximity/v1/store-001/zones/+/signage")
    try:
        async with publisher(mosquitto) as pub:
            assert await pub.publish_signage(make_offer(zone="bakery"))
            await eventually(lambda: sub.messages)
    finally:
        sub.close()
    (msg,) = sub.messages
    assert msg.topic == "proximity/v1/store-001/zones/bakery/signage"
    assert Offer.model_validate_json(msg.payload).zone == "bakery"


async def test_journey_events_go_to_the_events_topic(mosquitto: Mosquitto) -> None:
    sub = Subscriber(mosquitto.port, "proximity/v1/store-001/events")
    event = make_event()
    try:
        async with publisher(mosquitto) as pub:
            await pub.publish_event(event)
            await pub.publish_event(event, qos=1)
            await eventually(lambda: len(sub.messages) == 2)
    finally:
        sub.close()
    assert [m.qos for m in sub.messages] == [0, 1]
    assert sub.messages[0].payload == event.model_dump_json().encode()


# -- gateway status ----------------------------------------------------------------------------


async def test_retained_status_online_then_graceful_offline(mosquitto: Mosquitto) -> None:
    async with publisher(mosquitto, rules_version="r7", version="9.9.9") as pub:
        late = Subscriber(mosquitto.port, STATUS)  # subscribes after the status was published
        try:
            await eventually(lambda: late.messages)
            online = status(late.messages[0])
            assert late.messages[0].retain
            await pub.set_rules_version("r8")
            await eventually(lambda: len(late.messages) == 2)
            assert status(late.messages[1])["rules_version"] == "r8"
        finally:
            late.close()
    assert online["state"] == "online"
    assert (online["gateway"], online["version"], online["rules_version"]) == (
        "gw-1",
        "9.9.9",
        "r7",
    )
    after = Subscriber(mosquitto.port, STATUS)
    try:
        await eventually(lambda: after.messages)
    finally:
        after.close()
    offline = status(after.messages[0])
    assert (offline["state"], offline["graceful"]) == ("offline", True)


async def test_the_last_will_marks_a_killed_gateway_offline(mosquitto: Mosquitto) -> None:
    topic = "proximity/v1/store-001/gateways/gw-9/status"
    script = textwrap.dedent(f"""
        import asyncio, sys
        from proximity.logsetup import configure_logging
        from proximity.delivery.publisher import MqttPublisher
        from proximity.delivery.url import BrokerUrl
        configure_logging(stream=sys.stderr)  # stdout says when the gateway is up
        async def main():
            async with MqttPublisher(BrokerUrl.tcp("127.0.0.1", {mosquitto.port}),
                                     store="store-001", gateway="gw-9", client_id="doomed"):
                print("up", flush=True)
                await asyncio.sleep(60)
        asyncio.run(main())
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT
    )
    sub: Subscriber | None = None
    try:
        assert proc.stdout is not None
        assert (await asyncio.to_thread(proc.stdout.readline)).strip() == b"up"
        sub = Subscriber(mosquitto.port, topic)
        await eventually(lambda: sub.messages)
        assert status(sub.messages[-1])["state"] == "online"
        proc.kill()  # no DISCONNECT: the broker publishes the will
        await eventually(lambda: status(sub.messages[-1])["state"] == "offline")
        will = status(sub.messages[-1])
    finally:
        if sub is not None:
            sub.close()
        proc.kill()
        proc.communicate(timeout=5)
    assert (will["gateway"], will["graceful"]) == ("gw-9", False)
    retained = Subscriber(mosquitto.port, topic)
    try:
        await eventually(lambda: retained.messages)
        assert retained.messages[0].retain
        assert status(retained.messages[0])["state"] == "offline"
    finally:
        retained.close()


# -- failures: typed, bounded, never a hang ---------------------------------------------------


async def test_no_broker_is_a_clear_error_not_a_hang() -> None:
    url = BrokerUrl.parse(f"mqtt://gw:s3cret@127.0.0.1:{free_port()}")
    pub = MqttPublisher(url, store="s", gateway="g", client_id="c", connect_timeout=3)
    started = time.monotonic()
    with pytest.raises(
        BrokerUnavailable, match=r"cannot connect to mqtt://gw:\*\*\*@127\.0\.0\.1"
    ) as info:
        async with pub:
            pass
    assert time.monotonic() - started < 3
    assert "s3cret" not in str(info.value)


async def test_a_hung_broker_gives_a_publish_timeout_and_exit_still_returns(
    mosquitto: Mosquitto,
) -> None:
    pub = publisher(mosquitto, publish_timeout=0.5)
    async with pub:
        mosquitto.pause()
        started = time.monotonic()
        with pytest.raises(PublishTimeout, match="no PUBACK"):
            await pub.publish_offer("s-token-1", make_offer())
        assert 0.5 <= time.monotonic() - started < 2
        assert (pub.failed, pub.published) == (1, 0)
        started = time.monotonic()
    assert time.monotonic() - started < 4  # the offline status gives up, paho stops anyway


async def test_a_publish_waiting_for_its_puback_fails_when_the_connection_drops(
    mosquitto: Mosquitto,
) -> None:
    async with publisher(mosquitto, publish_timeout=30) as pub:
        mosquitto.pause()
        waiting = asyncio.create_task(pub.publish_offer("s-token-1", make_offer()))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        mosquitto.kill()
        with pytest.raises(BrokerUnavailable, match="lost"):
            await waiting
        assert time.monotonic() - started < 2  # not the 30 s publish timeout
        with pytest.raises(BrokerUnavailable, match="not connected"):
            await pub.publish_offer("s-token-1", make_offer(id="o-2"))
        assert pub.failed == 2


async def test_a_failed_publish_is_not_sent_again_after_reconnecting(mosquitto: Mosquitto) -> None:
    """paho would re-send it by itself: a duplicate of the caller's retry, maybe a late offer."""
    async with publisher(mosquitto, publish_timeout=0.3) as pub:
        mosquitto.pause()
        with pytest.raises(PublishTimeout):
            await pub.publish_offer("s-token-1", make_offer(id="o-failed"))
        mosquitto.kill()
        await eventually(lambda: not pub.connected)
        mosquitto.start()
        sub = Subscriber(mosquitto.port, "proximity/#")
        try:
            await eventually(lambda: pub.connected, limit_s=10)  # paho reconnects after 1 s
            assert await pub.publish_offer("s-token-1", make_offer(id="o-next"))
            await eventually(lambda: sub.payloads("/offers"))
        finally:
            sub.close()
    offers = [Offer.model_validate_json(p).id for p in sub.payloads("/offers")]
    assert offers == ["o-next"]
    # the status is online again on the restarted broker (which kept nothing)
    assert status(next(m for m in sub.messages if m.topic == STATUS))["state"] == "online"


async def test_exit_returns_at_once_when_the_broker_is_gone(mosquitto: Mosquitto) -> None:
    async with publisher(mosquitto) as pub:
        mosquitto.kill()
        await eventually(lambda: not pub.connected)
        started = time.monotonic()
    assert time.monotonic() - started < 2
