"""PahoBridge, the one paho-to-asyncio bridge, against a real mosquitto."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from pathlib import Path
from typing import Literal

import paho.mqtt.client as mqtt
import pytest

from proximity.delivery._bridge import PahoBridge, _make_client
from proximity.delivery.url import BrokerUrl
from proximity.errors import BrokerUnavailable, PublishTimeout
from tests.mosquitto import Mosquitto, Subscriber, eventually, find_mosquitto, free_port
from tests.test_app_client import raw_publish

TOPIC = "proximity/v1/store-001/events"


class Seen:
    """What the bridge handed to the event loop, and on which thread."""

    def __init__(self) -> None:
        self.connects: list[bool] = []
        self.messages: list[mqtt.MQTTMessage] = []
        self.threads: set[int] = set()

    def on_connect(self, first: bool) -> None:
        self.threads.add(threading.get_ident())
        self.connects.append(first)

    def on_message(self, message: mqtt.MQTTMessage) -> None:
        self.threads.add(threading.get_ident())
        self.messages.append(message)


def bridge(
    url: BrokerUrl,
    seen: Seen | None = None,
    *,
    connect_timeout: float = 10.0,
    publish_timeout: float = 10.0,
) -> PahoBridge:
    seen = seen or Seen()
    return PahoBridge(
        url,
        client_id="bridge-test",
        subscriptions=(TOPIC,),
        on_connect=seen.on_connect,
        on_message=seen.on_message,
        connect_timeout=connect_timeout,
        publish_timeout=publish_timeout,
    )


async def test_connected_subscribed_and_messages_on_the_loop(mosquitto: Mosquitto) -> None:
    seen = Seen()
    async with bridge(mosquitto.url, seen) as b:
        assert b.connected
        assert seen.connects == [True]
        # entering waited for the SUBACK: a message published now is not missed
        await asyncio.to_thread(raw_publish, mosquitto.port, TOPIC, b"one", b"two")
        await eventually(lambda: len(seen.messages) == 2)
    assert [m.payload for m in seen.messages] == [b"one", b"two"]
    assert [m.topic for m in seen.messages] == [TOPIC, TOPIC]
    assert seen.threads == {threading.get_ident()}  # never paho's thread
    assert not b.connected


async def test_a_publish_returns_after_its_own_puback(mosquitto: Mosquitto) -> None:
    sub = Subscriber(mosquitto.port, "proximity/v1/store-001/offers/#")
    try:
        async with bridge(mosquitto.url) as b:
            # many in flight at once: each waits for the PUBACK of its own message id
            await asyncio.gather(
                *(
                    b.publish(f"proximity/v1/store-001/offers/{i}", b"%d" % i, qos=1)
                    for i in range(300)
                )
            )
            assert not b._pending  # every future resolved and forgotten
            mid = b.publish_nowait("proximity/v1/store-001/offers/x", b"qos0")
            assert isinstance(mid, int)
            await b.publish("proximity/v1/store-001/offers/y", b"qos0", qos=0)
            await eventually(lambda: len(sub.messages) == 302)
    finally:
        sub.close()
    assert sorted(sub.payloads()) == sorted([b"%d" % i for i in range(300)] + [b"qos0"] * 2)


async def test_many_pubacks_are_read_with_few_reads(
    mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """paho reads a packet with three ``recv`` calls or more; the bridge's client reads
    what the socket holds at once and parses the PUBACKs from there."""
    reads = 0
    recv = mqtt.Client._sock_recv

    def counted(self: mqtt.Client, bufsize: int) -> bytes:
        nonlocal reads
        reads += 1
        return recv(self, bufsize)

    monkeypatch.setattr(mqtt.Client, "_sock_recv", counted)
    async with bridge(mosquitto.url) as b:
        publishes = [
            asyncio.create_task(b.publish(f"proximity/v1/store-001/offers/{i}", b"x", qos=1))
            for i in range(500)
        ]
        for _ in range(3):  # published, and written at the end of the turn
            await asyncio.sleep(0)
        assert not b._client.want_write()
        time.sleep(0.5)  # noqa: ASYNC251 (the loop held up: the 500 PUBACKs wait in the socket)
        reads = 0
        await asyncio.gather(*publishes)
        assert not b._pending
    # paho alone: at least 1,500 (three per PUBACK)
    assert reads <= 10, reads


async def test_a_turn_s_publishes_go_at_its_end_and_a_full_socket_is_watched_for_room(
    mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Everything published in a turn of the loop is written at its end in one ``send``,
    without watching the socket (no ``add_writer`` per publish); only what the kernel's
    buffer would not take waits for room, watched (not retried every turn), until it is
    all out, and what is published meanwhile goes after it."""
    import selectors

    sub = Subscriber(mosquitto.port, "proximity/v1/store-001/offers/#")
    try:
        async with bridge(mosquitto.url) as b:
            loop = asyncio.get_running_loop()
            selector = loop._selector  # type: ignore[attr-defined]

            def watched_for_room() -> bool:
                return bool(selector.get_key(b._sock).events & selectors.EVENT_WRITE)

            sends = 0
            send = mqtt.Client._sock_send

            def counted(client: mqtt.Client, buf: bytes | bytearray) -> int:
                nonlocal sends
                sends += 1
                return send(client, buf)

            monkeypatch.setattr(mqtt.Client, "_sock_send", counted)
            flushes = 0
            flush = b._flush

            def counted_flush() -> None:
                nonlocal flushes
                flushes += 1
                flush()

            monkeypatch.setattr(b, "_flush", counted_flush)
            for i in range(3):
                b.publish_nowait(f"proximity/v1/store-001/offers/{i}", b"%d" % i)
            assert b._client.want_write()  # queued, not yet written
            await asyncio.sleep(0)  # the end of the turn
            assert not b._client.want_write()
            assert not watched_for_room()
            assert (sends, flushes) == (1, 1)  # three packets, one send
            big = b"x" * (32 << 20)  # more than a loopback socket's buffer takes at once
            b.publish_nowait("proximity/v1/store-001/offers/big", big)
            await asyncio.sleep(0)
            assert b._client.want_write()  # some of it is left
            assert watched_for_room()
            # published while the socket is full: waits behind the big one, in order
            b.publish_nowait("proximity/v1/store-001/offers/after", b"after")
            await eventually(lambda: not b._client.want_write(), limit_s=20)
            await asyncio.sleep(0)
            assert not watched_for_room()
            # the socket's room was waited for, not polled turn after turn
            assert flushes == 2, flushes
            await eventually(lambda: len(sub.messages) == 5, limit_s=20)
    finally:
        sub.close()
    assert sorted(sub.payloads()) == sorted([b"0", b"1", b"2", big, b"after"])
    assert [m.payload for m in sub.messages][-2:] == [big, b"after"]


async def test_a_hung_broker_is_a_publish_timeout(mosquitto: Mosquitto) -> None:
    async with bridge(mosquitto.url, publish_timeout=0.3) as b:
        mosquitto.pause()
        started = time.monotonic()
        with pytest.raises(PublishTimeout, match="no PUBACK"):
            await b.publish(TOPIC, b"late", qos=1)
        assert 0.3 <= time.monotonic() - started < 1.5
        # several in flight, sent 0.2 s apart: each times out at its own deadline
        ended: list[float] = []

        async def late(delay: float) -> None:
            await asyncio.sleep(delay)
            sent = time.monotonic()
            with pytest.raises(PublishTimeout):
                await b.publish(TOPIC, b"late", qos=1)
            ended.append(time.monotonic() - sent)

        await asyncio.gather(late(0.0), late(0.2), late(0.4))
        assert len(ended) == 3
        assert all(0.3 <= waited < 1.2 for waited in ended), ended
        assert not b._deadlines or all(f.done() for _, f in b._deadlines)
        mosquitto.resume()


async def test_a_killed_broker_fails_waiters_then_the_bridge_reconnects_and_resubscribes(
    mosquitto: Mosquitto,
) -> None:
    seen = Seen()
    async with bridge(mosquitto.url, seen, publish_timeout=30) as b:
        mosquitto.pause()
        waiting = asyncio.create_task(b.publish(TOPIC, b"lost", qos=1))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        mosquitto.kill()
        with pytest.raises(BrokerUnavailable, match="lost"):
            await waiting
        assert time.monotonic() - started < 2  # at once, not after the publish timeout
        assert not b.connected
        with pytest.raises(BrokerUnavailable, match="not connected"):
            await b.publish(TOPIC, b"meanwhile", qos=1)
        mosquitto.start()  # same port; it kept nothing, so the subscription is renewed
        await eventually(lambda: b.connected, limit_s=10)  # paho retries after 1 s
        assert seen.connects == [True, False]
        # the renewed SUBSCRIBE went out before this PUBLISH on the same connection, so
        # once it is acknowledged the subscription holds (`connected` is the CONNACK: a
        # message from another client at that moment could reach the broker first)
        await b.publish(TOPIC, b"acked", qos=1)
        await asyncio.to_thread(raw_publish, mosquitto.port, TOPIC, b"after")
        await eventually(lambda: sorted(m.payload for m in seen.messages) == [b"acked", b"after"])
    # the failed publish was taken out of paho's queue, never re-sent after reconnecting
    assert b"lost" not in [m.payload for m in seen.messages]


async def test_no_broker_is_a_typed_error_at_once() -> None:
    url = BrokerUrl.parse(f"mqtt://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=r"cannot connect to mqtt://127\.0\.0\.1"):
        async with bridge(url, connect_timeout=5):
            pass
    assert time.monotonic() - started < 2


async def test_a_refused_client_is_a_typed_error(tmp_path: Path) -> None:
    binary = find_mosquitto()
    assert binary is not None, "mosquitto is not installed: run `make test`"
    broker = Mosquitto(binary, tmp_path, anonymous=False)
    broker.start()
    try:
        with pytest.raises(BrokerUnavailable, match="refused the connection: Not authorized"):
            async with bridge(broker.url):
                pass
        # in the background too: retrying would not help, so it is not hidden
        with pytest.raises(BrokerUnavailable, match="refused the connection"):
            await bridge(broker.url).connect_in_background()
    finally:
        broker.stop()


async def test_in_the_background_it_connects_once_the_broker_is_there(
    mosquitto: Mosquitto,
) -> None:
    mosquitto.kill()
    seen = Seen()
    b = bridge(mosquitto.url, seen, connect_timeout=2)
    try:
        why_not = await b.connect_in_background()
        assert why_not is not None
        assert "refused" in why_not.lower()  # ECONNREFUSED
        assert not b.connected
        mosquitto.start()
        await eventually(lambda: b.connected, limit_s=10)
        assert seen.connects == [True]
        await b.publish(TOPIC, b"late but fine", qos=1)
    finally:
        await b.close()


async def test_closing_fails_whatever_still_waits(mosquitto: Mosquitto) -> None:
    b = bridge(mosquitto.url, publish_timeout=30)
    await b.connect()
    mosquitto.pause()
    waiting = asyncio.create_task(b.publish(TOPIC, b"never acked", qos=1))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await b.close()
    with pytest.raises(BrokerUnavailable, match="closed"):
        await waiting
    assert time.monotonic() - started < 2
    mosquitto.resume()


async def test_paho_runs_on_the_loop_without_a_network_thread(mosquitto: Mosquitto) -> None:
    before = {t.ident for t in threading.enumerate()}
    seen = Seen()
    async with bridge(mosquitto.url, seen) as b:
        await asyncio.gather(*(b.publish(TOPIC, b"%d" % i, qos=1) for i in range(50)))
        await eventually(lambda: len(seen.messages) == 50)
        # threads that live on: a network thread would; the connecting worker is pooled
        extra = [
            t.name
            for t in threading.enumerate()
            if t.ident not in before and not t.name.startswith("asyncio_")
        ]
        assert extra == []
    assert sorted(m.payload for m in seen.messages) == sorted(b"%d" % i for i in range(50))


async def test_a_broker_that_stops_answering_is_noticed_by_the_keepalive(
    mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's one-second timer pings the broker; one that does not answer within the
    keepalive is a lost connection, and the bridge reconnects once it answers again."""
    from proximity.delivery import _bridge

    monkeypatch.setattr(_bridge, "KEEPALIVE_S", 1)
    seen = Seen()
    async with bridge(mosquitto.url, seen) as b:
        mosquitto.pause()
        try:
            await eventually(lambda: not b.connected, limit_s=6)
        finally:
            mosquitto.resume()
        await eventually(lambda: b.connected, limit_s=10)
        assert seen.connects == [True, False]
        await b.publish(TOPIC, b"after", qos=1)


def _cyclic_garbage_per_message(client: mqtt.Client) -> float:
    """Objects the garbage collector (not reference counting) frees for each message
    paho hands to ``on_message``: its real path for an incoming PUBLISH."""
    seen: list[str] = []
    client.on_message = lambda c, u, m: seen.append(m.topic)
    messages = []
    for i in range(200):
        message = mqtt.MQTTMessage(
            mid=i, topic=f"proximity/v1/store-001/nodes/n{i}/readings".encode()
        )
        message.payload = b"{}"
        messages.append(message)
    gc.collect()
    gc.disable()
    try:
        for message in messages:
            client._handle_on_message(message)
        found = gc.collect()
    finally:
        gc.enable()
    assert len(seen) == len(messages)
    return found / len(messages)


def test_incoming_messages_leave_no_cyclic_garbage() -> None:
    """paho's own filter table makes a reference cycle per message (the control);
    the bridge's clients make none, so the collector does not run for them."""
    plain = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    assert _cyclic_garbage_per_message(plain) >= 5
    ours = _make_client(BrokerUrl.parse("mqtt://127.0.0.1:1883"), "gc", "5")
    assert _cyclic_garbage_per_message(ours) < 0.5


@pytest.mark.parametrize(
    ("protocol", "packet", "reason"),
    [
        ("5", b"\x00\x07", 0x00),  # success, the code left out
        ("5", b"\x00\x07\x10", 0x10),  # no matching subscribers: a success too
        ("5", b"\x00\x07\x87\x00", 0x87),  # not authorized, no properties
        ("5", b"\x00\x07\x00\x03\x1f\x00\x00", 0x00),  # with properties: paho's own way
        ("3.1.1", b"\x00\x07", 0x00),
    ],
)
def test_a_puback_reaches_on_publish_with_its_reason(
    protocol: Literal["5", "3.1.1"], packet: bytes, reason: int
) -> None:
    """The shared reason codes of PUBACKs without properties say what paho's new ones
    would: the same code for the same message id."""
    client = _make_client(BrokerUrl.parse("mqtt://127.0.0.1:1883"), "acks", protocol)
    seen: list[tuple[int, int, bool]] = []
    client.on_publish = lambda c, u, mid, rc, props: seen.append((mid, rc.value, rc.is_failure))
    for _ in range(2):  # the second time from the shared objects
        message = mqtt.MQTTMessage(mid=7)
        message.qos = 1
        message.info = mqtt.MQTTMessageInfo(7)
        client._out_messages[7] = message
        client._inflight_messages = 1
        client._in_packet = {"command": 0x40, "packet": bytearray(packet)}
        assert client._handle_pubackcomp("PUBACK") == mqtt.MQTT_ERR_SUCCESS
        assert 7 not in client._out_messages
        assert message.info.is_published()
    assert seen == [(7, reason, reason >= 0x80)] * 2
    client._in_packet = {"command": 0x40, "packet": bytearray(b"\x00\x08")}
    assert client._handle_pubackcomp("PUBACK") == mqtt.MQTT_ERR_SUCCESS  # not ours: ignored
    assert len(seen) == 2


async def test_only_acknowledged_publishes_are_reported_back(mosquitto: Mosquitto) -> None:
    """The bridge waits for nothing of a QoS 0 publish, so paho does not report it (nor
    build a reason code and properties object for it); a QoS 1 PUBACK is reported."""
    async with bridge(mosquitto.url) as b:
        client = b._client
        heard: list[int] = []
        reported = client.on_publish
        assert reported is not None

        def on_publish(c: mqtt.Client, u: object, mid: int, rc: object, props: object) -> None:
            heard.append(mid)
            reported(c, u, mid, rc, props)  # type: ignore[arg-type]

        client.on_publish = on_publish
        quiet = {b.publish_nowait(TOPIC, b"0") for _ in range(5)}
        await asyncio.sleep(0)  # written at the end of the turn
        await b.publish(TOPIC, b"1", qos=1)
        assert len(heard) == 1
        assert not quiet & set(heard)
        client.qos0_published = True  # paho's way: every QoS 0 message written is reported
        b.publish_nowait(TOPIC, b"0")
        await eventually(lambda: len(heard) == 2)
