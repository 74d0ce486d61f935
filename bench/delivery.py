"""Durable delivery against the raw ceiling: offers per second and enqueue-to-receipt latency.

Both sides publish QoS 1 to the same mosquitto and count what a subscriber receives:

- the ceiling: raw paho, ``publish`` as fast as it goes, no outbox;
- Proximity: offers committed to the SQLite outbox (WAL, synchronous=FULL), drained
  in order by the ``OutboxDrainer`` through ``MqttPublisher``, each removed on PUBACK.

Then latency at a steady 500 offers per second, from the moment the offer is
handed over (raw: ``publish``; ours: ``Outbox.put``) to the subscriber's receipt.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.report import Row, write
from proximity.clock import SystemClock
from proximity.delivery.drain import OutboxDrainer
from proximity.delivery.outbox import Kind, Outbox
from proximity.delivery.publisher import MqttPublisher
from proximity.delivery.url import BrokerUrl
from proximity.logsetup import configure_logging
from proximity.offers import Cta, CtaFormat, Moment, Offer

BURST = 3000
STEADY = 1500
RATE = 500.0
TOPIC = "proximity/v1/bench/shoppers/s-bench-0001/offers"


class Receiver:
    def __init__(self, port: int) -> None:
        self.got: dict[str, float] = {}
        self.done = threading.Event()
        self.expect = 0
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._message
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(TOPIC, qos=1)
        ready.wait(5)

    def _message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self.got.setdefault(json.loads(msg.payload)["id"], time.perf_counter())
        if len(self.got) >= self.expect:
            self.done.set()

    def reset(self, expect: int) -> None:
        self.got = {}
        self.expect = expect
        self.done.clear()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def offer(n: int, prefix: str) -> Offer:
    now = datetime.now(UTC)
    return Offer(
        id=f"{prefix}-{n:06d}",
        rule="bench",
        moment=Moment.BUY,
        cta=Cta(format=CtaFormat.BANNER, title="bench"),
        store="bench",
        issued_at=now,
        expires_at=now + timedelta(minutes=10),
    )


def raw_burst(port: int, rx: Receiver, prefix: str) -> float:
    rx.reset(BURST)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    payloads = [offer(n, prefix).model_dump_json() for n in range(BURST)]
    t0 = time.perf_counter()
    for payload in payloads:
        client.publish(TOPIC, payload, qos=1)
    rx.done.wait(60)
    elapsed = time.perf_counter() - t0
    client.disconnect()
    client.loop_stop()
    return len(rx.got) / elapsed


def raw_steady(port: int, rx: Receiver, prefix: str) -> list[float]:
    rx.reset(STEADY)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    sent: dict[str, float] = {}
    t0 = time.perf_counter()
    for n in range(STEADY):
        o = offer(n, prefix)
        while time.perf_counter() < t0 + n / RATE:
            time.sleep(0.0002)
        sent[o.id] = time.perf_counter()
        client.publish(TOPIC, o.model_dump_json(), qos=1)
    rx.done.wait(60)
    client.disconnect()
    client.loop_stop()
    return [(rx.got[i] - t) * 1000 for i, t in sent.items() if i in rx.got]


async def ours(
    port: int, rx: Receiver, tmp: Path, prefix: str, steady: bool
) -> tuple[float, list[float]]:
    count = STEADY if steady else BURST
    rx.reset(count)
    clock = SystemClock()
    box = Outbox(tmp / f"{prefix}.sqlite")
    async with MqttPublisher(
        BrokerUrl.tcp("127.0.0.1", port),
        store="bench",
        gateway="gw",
        client_id=f"gw-{prefix}",
        clock=clock,
    ) as pub:
        drainer = OutboxDrainer(box, pub, clock)
        task = asyncio.create_task(drainer.run())
        offers = [offer(n, prefix) for n in range(count)]
        sent: dict[str, float] = {}
        t0 = time.perf_counter()
        for n, o in enumerate(offers):
            if steady:
                delay = t0 + n / RATE - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            sent[o.id] = time.perf_counter()
            box.put(Kind.OFFER, "s-bench-0001", o)
            drainer.wake()
            if not steady and n % 200 == 0:
                await asyncio.sleep(0)
        await drainer.flush(120)
        await asyncio.to_thread(rx.done.wait, 60)
        elapsed = time.perf_counter() - t0
        task.cancel()
    box.close()
    return len(rx.got) / elapsed, [(rx.got[i] - t) * 1000 for i, t in sent.items() if i in rx.got]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def main() -> None:
    configure_logging("warning")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    tmp = Path(tempfile.mkdtemp())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp / "m.conf").write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\n"
        "persistence false\nmax_queued_messages 100000\n"
        "max_inflight_messages 1000\n"
    )
    broker = subprocess.Popen(
        [binary, "-c", str(tmp / "m.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(0.5)
        rx = Receiver(port)
        raw_rate = raw_burst(port, rx, "raw")
        our_rate, _ = asyncio.run(ours(port, rx, tmp, "ours", steady=False))
        raw_lat = raw_steady(port, rx, "raws")
        _, our_lat = asyncio.run(ours(port, rx, tmp, "ourss", steady=True))
        rx.close()
    finally:
        broker.terminate()
        broker.wait(5)
        shutil.rmtree(tmp, ignore_errors=True)
    rows = [
        Row(
            f"{BURST} offers, QoS 1, durable outbox",
            "offers per second",
            "1/s",
            round(our_rate),
            "raw paho QoS 1, no outbox",
            round(raw_rate),
        ),
        Row(
            f"{STEADY} offers at {RATE:.0f}/s: p50 hand-over to receipt",
            "latency",
            "ms",
            round(statistics.median(our_lat), 3),
            "raw paho",
            round(statistics.median(raw_lat), 3),
            higher_is_better=False,
        ),
        Row(
            f"{STEADY} offers at {RATE:.0f}/s: p99",
            "latency",
            "ms",
            round(pct(our_lat, 0.99), 3),
            "raw paho",
            round(pct(raw_lat, 0.99), 3),
            higher_is_better=False,
        ),
        Row(
            f"{STEADY} offers at {RATE:.0f}/s: max",
            "latency",
            "ms",
            round(max(our_lat), 3),
            "raw paho",
            round(max(raw_lat), 3),
            higher_is_better=False,
        ),
    ]
    write("delivery", rows)


if __name__ == "__main__":
    main()
