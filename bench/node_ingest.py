"""Scanner nodes into the gateway: readings per second through a real mosquitto, and latency.

Throughput, for each node format: a publisher process (pinned to another core) sends
node messages as fast as it can, QoS 1, through mosquitto to this process (pinned to
one core):

- the ceiling: a bare paho subscriber counting messages (readings = messages × the
  readings each carries), the same bytes, in the same run;
- Proximity: :class:`~proximity.adapters.nodes.backend.NodeBackend` (paho through
  ``PahoBridge``, :class:`~proximity.adapters.nodes.ingest.NodeIngest` parsing,
  de-duplicating, re-timing, rate accounting) handing over one
  :class:`~proximity.adapters.base.Advertisement` per reading, counted as the daemon's
  reader takes them.

Ours is sent in batches of 256 readings from 10 nodes; ESPresense and OpenMQTTGateway
one reading a message. Rates are taken from the first message received to the last;
the publisher's own rate is in the case text: where the ceiling is no faster than the
publisher, the publisher was the limit, not paho.

Latency: 10 nodes of ours (:class:`~proximity.adapters.nodes.sender.NodeSender` with its
default 100 ms batch window, in a child process on the other core) each hear 1,000
readings a second, steadily; each reading carries the wall time it was heard, and the
latency is from then to its Advertisement leaving the gateway's backend (what the
daemon's reader hands to the decoder and the pipeline). Every row carries this
process's CPU share over its measured run and says "saturated" above 80 %.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import paho.mqtt.client as mqtt
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from paho.mqtt.enums import CallbackAPIVersion

from bench.report import CpuMeter, Row, load_text, one_core, write
from firmware_sim.mosquitto import Mosquitto, find_mosquitto
from proximity.adapters.base import Advertisement, BleBackend
from proximity.adapters.ble.ibeacon import IBeacon, build_ibeacon
from proximity.adapters.nodes.backend import NodeBackend, NodeBroker
from proximity.adapters.nodes.formats import Source
from proximity.adapters.nodes.ingest import NodeIngest, NodeSpec
from proximity.adapters.nodes.sender import NodeSender
from proximity.clock import SystemClock
from proximity.delivery.url import BrokerUrl
from proximity.logsetup import configure_logging

STORE = "bench"
NODES = 10
BATCH = 256
OURS_BATCHES = 400
"""Batches of ours in the throughput run: 102,400 readings."""
SINGLE_MESSAGES = 20_000
"""ESPresense and OpenMQTTGateway messages (one reading each) in the throughput run."""
DEVICES = 1000
RATE_PER_NODE = 1000.0
LATENCY_S = 8.0
WARMUP_S = 1.0
TARGET_RATE = 50_000.0
TARGET_RATIO = 0.5
TARGET_P99_MS = 250.0
TIMEOUT_S = 60.0
APP_UUID = UUID("f7826da6-4fa2-4e98-8024-bc5b71e0893e")
HEARD_AT_COMPANY = 0x0059
"""The latency run's readings carry the wall time they were heard under this company id."""


def node_name(i: int) -> str:
    return f"node-{i:02d}"


def address(n: int) -> str:
    return f"C0:00:00:{(n >> 16) & 0xFF:02X}:{(n >> 8) & 0xFF:02X}:{n & 0xFF:02X}"


def frame(device: int) -> bytes:
    return build_ibeacon(IBeacon(APP_UUID, 7, device, -59))


def messages(source: Source, count: int) -> list[tuple[str, bytes]]:
    """``count`` messages of ``source`` from :data:`NODES` nodes (ours: batches of
    :data:`BATCH` readings), over :data:`DEVICES` phones."""
    frames = [frame(d).hex() for d in range(DEVICES)]
    out: list[tuple[str, bytes]] = []
    sent = round(time.time(), 3)
    for m in range(count):
        node = node_name(m % NODES)
        match source:
            case "ours":
                readings = []
                for r in range(BATCH):
                    d = (m * BATCH + r) % DEVICES
                    readings.append(
                        {"addr": address(d), "rssi": -60, "dt": 0.05, "mfr": {"76": frames[d]}}
                    )
                body = {"v": 1, "boot": "bench", "seq": m // NODES, "sent": sent}
                body["readings"] = readings
                topic = f"proximity/v1/{STORE}/nodes/{node}/readings"
            case "espresense":
                d = m % DEVICES
                ident = f"iBeacon:{APP_UUID}-7-{d}"
                body = {"id": ident, "rssi@1m": -59, "rssi": -60, "distance": 1.2, "int": 100}
                topic = f"espresense/devices/{ident}/{node}"
            case "omg":
                d = m % DEVICES
                body = {"id": address(d), "rssi": -60, "manufacturerdata": "4c00" + frames[d]}
                topic = f"home/{node}/BTtoMQTT/{address(d).replace(':', '')}"
        out.append((topic, json.dumps(body, separators=(",", ":")).encode()))
    return out


def per_message(source: Source) -> int:
    return BATCH if source == "ours" else 1


def specs(source: Source, **more: float) -> list[NodeSpec]:
    return [NodeSpec(source, node_name(i), f"scanner-{i}", **more) for i in range(NODES)]


# -- the publisher (a child process) -------------------------------------------------------------


def publish(port: int, source: Source, count: int) -> None:
    """Publish ``count`` messages of ``source`` as fast as paho goes, QoS 1; print how long
    it took (JSON) once the broker acknowledged them all."""
    payloads = messages(source, count)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{source}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    started = time.perf_counter()
    last = None
    for topic, payload in payloads:
        last = client.publish(topic, payload, qos=1)
    assert last is not None
    last.wait_for_publish(TIMEOUT_S)
    elapsed = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"seconds": elapsed, "messages": count}), flush=True)


def play_nodes(port: int, seconds: float, rate: float) -> None:
    """:data:`NODES` NodeSenders (default batch window), each hearing ``rate`` readings a
    second for ``seconds``; each reading carries the wall time it was heard."""
    asyncio.run(_play_nodes(port, seconds, rate))


class _Radio(BleBackend):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Advertisement | None] = asyncio.Queue()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.queue.put_nowait(None)

    async def advertisements(self) -> AsyncIterator[Advertisement]:
        while (adv := await self.queue.get()) is not None:
            yield adv


async def _play_nodes(port: int, seconds: float, rate: float) -> None:
    clock = SystemClock()
    url = BrokerUrl.tcp("127.0.0.1", port)
    radios = [_Radio() for _ in range(NODES)]
    stop = asyncio.Event()
    senders = [
        NodeSender(radios[i], url, store=STORE, node=node_name(i), clock=clock)
        for i in range(NODES)
    ]
    tasks = [asyncio.create_task(s.run(stop)) for s in senders]
    # what is heard before a sender is connected waits in its buffer (measured from the
    # warm-up's end on, so the connections are made by then)
    devices = [BLEDevice(address(d), None, None) for d in range(DEVICES)]
    started = time.monotonic()
    fed = 0
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(elapsed * rate)
        now = clock.now()
        stamp = struct.pack("<d", now.timestamp())
        for n in range(fed, due):
            for i, radio in enumerate(radios):
                data = AdvertisementData(
                    local_name=None,
                    manufacturer_data={HEARD_AT_COMPANY: stamp},
                    service_data={},
                    service_uuids=[],
                    tx_power=None,
                    rssi=-60,
                    platform_data=(),
                )
                device = devices[(n * NODES + i) % DEVICES]
                radio.queue.put_nowait(Advertisement(device, data, f"scanner-{i}", now))
        fed = due
        await asyncio.sleep(0.002)
    await asyncio.sleep(0.5)  # the last window goes out
    stop.set()
    await asyncio.gather(*tasks)
    print(json.dumps({"readings": fed * NODES}), flush=True)


def _child(args: list[str], core: int | None) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "bench.node_ingest", *args]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    if core is not None and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(child.pid, {core})
    return child


def _other_core() -> int | None:
    if not hasattr(os, "sched_getaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    return cores[-1] if len(cores) > 1 else None


def _finished(child: subprocess.Popen[str]) -> dict[str, float]:
    out, _ = child.communicate(timeout=TIMEOUT_S)
    if child.returncode != 0:
        raise RuntimeError(f"bench child exited with {child.returncode}")
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


# -- the gateway side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    readings: int
    seconds: float
    cpu_share: float | None
    publisher_per_s: float

    @property
    def per_s(self) -> float:
        return self.readings / self.seconds if self.seconds > 0 else 0.0


def raw_rate(port: int, source: Source, count: int, core: int | None) -> Rate:
    """A bare paho subscriber counting the messages (QoS 1)."""
    got = 0
    first = last = 0.0
    done = threading.Event()

    meter = CpuMeter()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        nonlocal got, first, last
        last = time.perf_counter()
        if got == 0:
            first = last
            meter.sample()  # the clock and the CPU meter start at the first message
        got += 1
        if got >= count:
            done.set()

    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-raw-{source}")
    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", port)
    client.subscribe([(topic, 1) for topic in _filters(source)])
    client.loop_start()
    subscribed.wait(5)
    publisher = _child(["--publish", source, str(port), str(count)], core)
    done.wait(TIMEOUT_S)
    meter.sample()
    client.disconnect()
    client.loop_stop()
    pub = _finished(publisher)
    readings = (got - 1) * per_message(source)  # the first message starts the clock
    return Rate(readings, last - first, meter.share, _per_s(pub, source))


def _filters(source: Source) -> list[str]:
    from proximity.adapters.nodes.backend import subscriptions

    return subscriptions(STORE, [source])


def _per_s(pub: dict[str, float], source: Source) -> float:
    return pub["messages"] * per_message(source) / pub["seconds"] if pub["seconds"] else 0.0


async def ours_rate(port: int, source: Source, count: int, core: int | None) -> Rate:
    """NodeBackend handing over Advertisements, counted as a reader takes them."""
    nodes = specs(source, max_rate=1e9, silence_s=3600.0)
    ingest = NodeIngest(STORE, nodes, monotonic=time.monotonic, stale_after=timedelta(hours=1))
    url = BrokerUrl.tcp("127.0.0.1", port)
    backend = NodeBackend(
        STORE,
        [NodeBroker(url, tuple(nodes), client_id=f"bench-nodes-{source}")],
        SystemClock(),
        ingest=ingest,
        queue_limit=10**9,
    )
    expected = count * per_message(source)
    await backend.start()
    meter = CpuMeter()
    publisher = _child(["--publish", source, str(port), str(count)], core)
    got = 0
    first = last = 0.0
    try:
        async with asyncio.timeout(TIMEOUT_S):
            async for _ in backend.advertisements():
                last = time.perf_counter()
                if got == 0:
                    first = last
                    meter.sample()  # the clock and the CPU meter start at the first reading
                got += 1
                if got % 10_000 == 0:
                    meter.sample()
                if got >= expected:
                    break
    except TimeoutError:
        pass
    meter.sample()
    await backend.stop()
    pub = await asyncio.to_thread(_finished, publisher)
    first_message = per_message(source)  # read before the clock started
    return Rate(max(0, got - first_message), last - first, meter.share, _per_s(pub, source))


@dataclass(frozen=True)
class Latency:
    ms: list[float]
    readings: int
    cpu_share: float | None


async def node_latency(port: int, seconds: float, rate: float, core: int | None) -> Latency:
    """Heard on a node → Advertisement out of the gateway's backend, at a steady rate."""
    nodes = specs("ours")
    url = BrokerUrl.tcp("127.0.0.1", port)
    backend = NodeBackend(
        STORE, [NodeBroker(url, tuple(nodes), client_id="bench-latency")], SystemClock()
    )
    await backend.start()
    meter = CpuMeter()
    child = _child(["--play-nodes", str(port), str(seconds), str(rate)], core)
    started = time.time()
    measured_from = started + WARMUP_S
    latencies: list[float] = []
    got = 0
    end = time.monotonic() + seconds + 5.0

    async def read() -> None:
        nonlocal got
        async for adv in backend.advertisements():
            now = time.time()
            got += 1
            raw = adv.data.manufacturer_data.get(HEARD_AT_COMPANY)
            if raw is None:
                continue
            (heard,) = struct.unpack("<d", raw)
            if heard >= measured_from:
                if not latencies:
                    meter.sample()
                latencies.append((now - heard) * 1000.0)
                if len(latencies) % 5000 == 0:
                    meter.sample()

    reader = asyncio.create_task(read())
    with contextlib.suppress(subprocess.TimeoutExpired):
        await asyncio.to_thread(child.wait, max(0.0, end - time.monotonic()))
    meter.sample()
    await asyncio.sleep(0.3)  # the last batches in flight
    await backend.stop()
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    await asyncio.to_thread(_finished, child)
    return Latency(latencies, got, meter.share)


def json_only_rate(count: int) -> float:
    """Readings/s of ``json.loads`` alone over the same batches of ours (no MQTT, no
    checks, no objects built): what parsing the format costs at least."""
    payloads = [payload for _, payload in messages("ours", count)]
    started = time.perf_counter()
    for payload in payloads:
        json.loads(payload)
    return count * BATCH / (time.perf_counter() - started)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0


# -- the whole benchmark ------------------------------------------------------------------------


def run(batches: int, single: int, seconds: float, rate: float) -> list[Row]:
    binary = find_mosquitto()
    if binary is None:
        raise SystemExit("mosquitto is not installed (apt-get install mosquitto)")
    core = _other_core()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-nodes-") as tmp:
        broker = Mosquitto(binary, Path(tmp))
        broker.start()
        try:
            with one_core():
                runs: list[tuple[Source, int]] = [
                    ("ours", batches),
                    ("espresense", single),
                    ("omg", single),
                ]
                for source, count in runs:
                    raw = raw_rate(broker.port, source, count, core)
                    ours = asyncio.run(ours_rate(broker.port, source, count, core))
                    rows.append(_rate_row(source, count, raw, ours))
                parse_only = json_only_rate(batches)
                latency = asyncio.run(node_latency(broker.port, seconds, rate, core))
        finally:
            broker.stop()
    whole = rows[0]
    rows.insert(
        1,
        Row(
            f"ours: the same {batches} batches through the whole ingest (above), against "
            "json.loads alone on one core (no MQTT, no checks, no Advertisements)",
            "readings per second",
            "1/s",
            whole.value,
            "json.loads alone",
            round(parse_only),
        ),
    )
    rows += _latency_rows(latency, seconds, rate)
    return rows


def _rate_row(source: Source, count: int, raw: Rate, ours: Rate) -> Row:
    what = (
        f"{count} batches of {BATCH} readings from {NODES} nodes"
        if source == "ours"
        else f"{count} messages of one reading from {NODES} nodes"
    )
    limited = " (raw limited by the publisher)" if raw.per_s >= 0.9 * raw.publisher_per_s else ""
    return Row(
        f"{source}: {what}, QoS 1, into Advertisements on one core; publisher "
        f"{raw.publisher_per_s:,.0f}/s{limited} ({load_text(ours.cpu_share, 'gateway process')})",
        "readings per second",
        "1/s",
        round(ours.per_s),
        "raw paho subscriber counting messages",
        round(raw.per_s),
        cpu_share=ours.cpu_share,
    )


def _latency_rows(latency: Latency, seconds: float, rate: float) -> list[Row]:
    steady = (
        f"{NODES} nodes × {rate:,.0f} readings/s, 100 ms batch window, {seconds:g} s "
        f"({load_text(latency.cpu_share, 'gateway process')})"
    )
    values = latency.ms or [0.0]
    return [
        Row(
            f"{steady}: p50 heard on the node to Advertisement out of the backend",
            "latency",
            "ms",
            round(statistics.median(values), 1),
            higher_is_better=False,
            cpu_share=latency.cpu_share,
        ),
        Row(
            f"{steady}: p99",
            "latency",
            "ms",
            round(pct(values, 0.99), 1),
            "issue target",
            TARGET_P99_MS,
            higher_is_better=False,
            cpu_share=latency.cpu_share,
        ),
        Row(
            f"{steady}: max",
            "latency",
            "ms",
            round(max(values), 1),
            higher_is_better=False,
            cpu_share=latency.cpu_share,
        ),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m bench`` calls this with no arguments: the issue's full-size run."""
    parser = argparse.ArgumentParser(prog="python -m bench.node_ingest", description=__doc__)
    parser.add_argument("--batches", type=int, default=OURS_BATCHES, help="ours, throughput")
    parser.add_argument("--messages", type=int, default=SINGLE_MESSAGES, help="others")
    parser.add_argument("--seconds", type=float, default=LATENCY_S, help="latency run")
    parser.add_argument("--rate", type=float, default=RATE_PER_NODE, help="readings/s a node")
    parser.add_argument("--publish", nargs=3, metavar=("SOURCE", "PORT", "COUNT"))
    parser.add_argument("--play-nodes", nargs=3, metavar=("PORT", "SECONDS", "RATE"))
    args = parser.parse_args(list(argv) if argv is not None else [])
    if args.publish or args.play_nodes:
        configure_logging("error")  # a child: its stdout is the JSON the parent reads
    if args.publish:
        source, port, count = args.publish
        publish(int(port), source, int(count))
        return
    if args.play_nodes:
        port, seconds, rate = args.play_nodes
        play_nodes(int(port), float(seconds), float(rate))
        return
    configure_logging("error")  # the nodes' offline at the end of each run is expected
    rows = run(args.batches, args.messages, args.seconds, args.rate)
    write("node_ingest", rows)
    ours = rows[0]
    better = ours.better or 0.0
    ok = ours.value >= TARGET_RATE and better >= TARGET_RATIO
    print(
        f"ours: {ours.value:,.0f} readings/s, {better:.2f}x raw paho: "
        f"{'meets' if ok else 'does NOT meet'} the ≥ {TARGET_RATIO:g}x and ≥ "
        f"{TARGET_RATE:,.0f}/s target"
    )
    p99 = next(r for r in rows if r.metric == "latency" and r.case.endswith(": p99"))
    verdict = "under" if p99.value <= TARGET_P99_MS else "NOT under"
    print(f"node-to-gateway p99 {p99.value:.1f} ms: {verdict} the {TARGET_P99_MS:g} ms target")


if __name__ == "__main__":
    main(sys.argv[1:])
