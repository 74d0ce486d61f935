"""Simulated scanner nodes: what each store scanner hears, published as a node would.

One node per store scanner, named after it (so ``[[nodes]] node = scanner``), in one
of the three formats the gateway reads (docs/nodes.md):

- ``ours``: the real :class:`~proximity.adapters.nodes.sender.NodeSender` (the node side
  of ``proximity scan``), fed through a queue backend: batches every
  :data:`~proximity.adapters.nodes.sender.WINDOW_S` or 256 readings, heartbeats, its
  will and ``online``/``offline`` status, ``sent`` and ``dt`` on the node's clock;
- ``espresense``: ``espresense/devices/{id}/{room}`` as ESPresense publishes a beacon
  (``iBeacon:<uuid>-<major>-<minor>``, ``altBeacon:…``, ``eddy:<namespace>-<instance>``
  with ``rssi@1m``), at most once per :data:`ESPRESENSE_EVERY_S` store seconds per device
  with the mean RSSI heard meanwhile (ESPresense filters; it does not pass on every
  advertisement); ``espresense/rooms/{room}/status`` and ``…/telemetry``;
- ``omg``: ``home/{gateway}/BTtoMQTT/{MAC}`` per advertisement with the raw
  ``manufacturerdata`` (company id first, little-endian) or ``servicedata``, as
  OpenMQTTGateway publishes with ``pubadvdata``; ``home/{gateway}/LWT`` and
  ``…/SYStoMQTT``.

The two third-party formats publish everything at QoS 0, as their firmware does
(:data:`THIRD_PARTY_QOS`); ours at QoS 1 (a batch is removed once the broker has it).

Time: a node's clock is the run's store clock (the daemon's runs at the same speed)
plus its skew; its batch window and heartbeats are store seconds too, so at ``--speed
10`` a node batches every 10 ms of real time. A node taken :meth:`~SimNode.down` says
``offline`` (what its will would say) and sends nothing until :meth:`~SimNode.up`.
Frames ESPresense cannot name (no beacon id) are not published and counted.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import paho.mqtt.client as mqtt
from bleak.backends.device import BLEDevice
from paho.mqtt.enums import CallbackAPIVersion

from firmware_sim.crowd import Heard
from firmware_sim.crowd_backend import advertisement
from proximity.adapters.base import Advertisement, BleBackend
from proximity.adapters.ble.altbeacon import RADIUS_NETWORKS_COMPANY_ID, parse_altbeacon
from proximity.adapters.ble.eddystone import EDDYSTONE_SERVICE_UUID, EddystoneUid, parse_eddystone
from proximity.adapters.ble.ibeacon import APPLE_COMPANY_ID, parse_ibeacon
from proximity.adapters.nodes.formats import BLUETOOTH_BASE
from proximity.adapters.nodes.sender import HEARTBEAT_S, WINDOW_S, NodeSender
from proximity.clock import Clock
from proximity.delivery.url import BrokerUrl
from proximity.errors import FrameError

NodeFormat = Literal["ours", "espresense", "omg"]
NODE_FORMATS: tuple[NodeFormat, ...] = ("ours", "espresense", "omg")
ESPRESENSE_EVERY_S = 1.0
"""Store seconds between two ESPresense messages of one device (its RSSI their mean)."""
THIRD_PARTY_HEARTBEAT_S = 5.0
"""Store seconds between ESPresense telemetry / OpenMQTTGateway system reports."""
THIRD_PARTY_QOS = 0
"""The QoS the third-party firmwares publish everything at, their will included:
ESPresense's ``publish(topic, 0, retain, …)`` and ``setWill(status, 0, true, "offline")``,
OpenMQTTGateway's ``publish(topic, payload, 0, retain)``. A message lost on the way is
an advertisement lost, as a frame the radio missed; there is no PUBACK to send back."""


class NodeClock:
    """A node's clock: the run's store clock, off by ``skew_s`` seconds."""

    def __init__(self, base: Clock, skew_s: float = 0.0) -> None:
        self._base = base
        self.skew_s = skew_s

    def now(self) -> datetime:
        return self._base.now() + timedelta(seconds=self.skew_s)

    async def sleep(self, seconds: float) -> None:
        await self._base.sleep(seconds)


class _Heard(BleBackend):
    """The advertisements the simulator hands a node of ours, as its radio would."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Advertisement | None] = asyncio.Queue()

    def feed(self, adv: Advertisement) -> None:
        self._queue.put_nowait(adv)

    async def start(self) -> None:
        self._queue = asyncio.Queue()

    async def stop(self) -> None:
        self._queue.put_nowait(None)

    async def advertisements(self) -> AsyncIterator[Advertisement]:
        while (adv := await self._queue.get()) is not None:
            yield adv


def espresense_id(heard: Heard) -> tuple[str, int] | None:
    """The id ESPresense names ``heard``'s beacon by, and its RSSI at 1 m (None: a frame
    ESPresense reports by no beacon id)."""
    key, payload = heard.frame
    try:
        if key == APPLE_COMPANY_ID:
            ib = parse_ibeacon(payload)
            return f"iBeacon:{ib.uuid}-{ib.major}-{ib.minor}", ib.tx_power
        if key == RADIUS_NETWORKS_COMPANY_ID:
            alt = parse_altbeacon(payload)
            return f"altBeacon:{alt.id1}-{alt.id2}-{alt.id3}", alt.reference_rssi
        if key == EDDYSTONE_SERVICE_UUID:
            frame = parse_eddystone(payload)
            if isinstance(frame, EddystoneUid):
                ident = f"eddy:{frame.namespace.hex()}-{frame.instance.hex()}"
                return ident, frame.tx_power - 41  # the power at 0 m, 41 dB above 1 m
    except FrameError:
        return None
    return None


def omg_body(heard: Heard) -> dict[str, Any]:
    """``heard`` as OpenMQTTGateway publishes an advertisement (``pubadvdata``)."""
    key, payload = heard.frame
    body: dict[str, Any] = {"id": heard.source.address, "rssi": heard.rssi}
    if isinstance(key, int):
        body["manufacturerdata"] = key.to_bytes(2, "little").hex() + payload.hex()
    else:
        body["servicedata"] = payload.hex()
        short = key.startswith("0000") and key.endswith(BLUETOOTH_BASE)
        body["servicedatauuid"] = "0x" + key[4:8] if short else key
    return body


@dataclass
class NodeStats:
    heard: int = 0
    """Advertisements the node's scanner heard while the node was up."""
    lost: int = 0
    """...while it was down (nothing sent)."""
    messages: int = 0
    """Messages published (ours: batches the broker acknowledged)."""
    readings: int = 0
    """Readings in them."""
    unexpressed: int = 0
    """Frames the format cannot carry (ESPresense: no beacon id)."""


class SimNode(abc.ABC):
    """One store scanner as a scanner node publishing to the store broker."""

    format: NodeFormat

    def __init__(self, scanner: str, url: BrokerUrl, store: str, clock: NodeClock) -> None:
        self.scanner = scanner
        self.name = scanner
        self.url = url
        self.store = store
        self.clock = clock
        self.stats = NodeStats()
        self.is_up = False

    def hear(self, heard: Heard) -> None:
        """An advertisement the scanner heard now (lost while the node is down)."""
        if not self.is_up:
            self.stats.lost += 1
            return
        self.stats.heard += 1
        self._hear(heard)

    @abc.abstractmethod
    def _hear(self, heard: Heard) -> None: ...

    @abc.abstractmethod
    async def up(self) -> None:
        """Connect and say ``online``."""

    @abc.abstractmethod
    async def down(self) -> None:
        """Say ``offline`` (as the node's will would) and stop sending."""


class OurNode(SimNode):
    """A node of ours: the real NodeSender, its radio this simulator."""

    format: NodeFormat = "ours"

    def __init__(
        self, scanner: str, url: BrokerUrl, store: str, clock: NodeClock, speed: float
    ) -> None:
        super().__init__(scanner, url, store, clock)
        self._speed = speed
        self._radio: _Heard | None = None
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._sender: NodeSender | None = None
        self._sent_before = (0, 0)

    async def up(self) -> None:
        radio = self._radio = _Heard()
        self._stop = asyncio.Event()
        sender = self._sender = NodeSender(
            radio,
            self.url,
            store=self.store,
            node=self.name,
            clock=self.clock,
            client_id=f"fwsim-node-{self.name}",
            window_s=WINDOW_S / self._speed,
            heartbeat_s=HEARTBEAT_S / self._speed,
        )
        # what it hears before it is connected waits in its buffer, as on a real node
        self._task = asyncio.create_task(self._send(sender, self._stop), name=f"node-{self.name}")
        self.is_up = True

    async def _send(self, sender: NodeSender, stop: asyncio.Event) -> None:
        await sender.run(stop)

    def _hear(self, heard: Heard) -> None:
        assert self._radio is not None
        device = BLEDevice(heard.source.address, None, None)
        self._radio.feed(advertisement(heard, device, self.clock.now()))

    async def down(self) -> None:
        self.is_up = False
        if self._stop is None or self._task is None:
            return
        self._stop.set()  # sends what it holds, then a retained "offline"
        await self._task
        assert self._sender is not None
        messages, readings = self._sent_before
        self._sent_before = (
            messages + self._sender.stats.batches,
            readings + self._sender.stats.sent,
        )
        self.stats.messages, self.stats.readings = self._sent_before
        self._task = self._stop = self._radio = None


class _PahoNode(SimNode):
    """A third-party node: a paho client with its firmware's will, status and heartbeat."""

    def __init__(
        self, scanner: str, url: BrokerUrl, store: str, clock: NodeClock, speed: float
    ) -> None:
        super().__init__(scanner, url, store, clock)
        self._speed = speed
        self._client: mqtt.Client | None = None
        self._beat: asyncio.Task[None] | None = None

    @property
    @abc.abstractmethod
    def status_topic(self) -> str: ...

    @property
    @abc.abstractmethod
    def heartbeat_topic(self) -> str: ...

    def heartbeat(self) -> str:
        return json.dumps({"uptime": 1})

    async def up(self) -> None:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"fwsim-{self.format}-{self.name}"
        )
        client.will_set(self.status_topic, "offline", qos=THIRD_PARTY_QOS, retain=True)
        if self.url.username:
            password = self.url.password
            client.username_pw_set(
                self.url.username, password.get_secret_value() if password else None
            )
        await asyncio.to_thread(client.connect, self.url.host, self.url.port)
        client.loop_start()
        self._client = client
        self._publish(self.status_topic, "online", retain=True)
        self._beat = asyncio.create_task(self._heartbeats(), name=f"node-{self.name}-beat")
        self.is_up = True

    async def down(self) -> None:
        self.is_up = False
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat
            self._beat = None
        client, self._client = self._client, None
        if client is None:
            return
        self._flush()
        info = client.publish(self.status_topic, "offline", qos=THIRD_PARTY_QOS, retain=True)
        await asyncio.to_thread(info.wait_for_publish, 5)
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)

    def _flush(self) -> None:
        """Publish what waits in the node's own filter before it goes (none by default)."""

    async def _heartbeats(self) -> None:
        while True:
            self._publish(self.heartbeat_topic, self.heartbeat())
            await asyncio.sleep(THIRD_PARTY_HEARTBEAT_S / self._speed)

    def _publish(self, topic: str, payload: str, retain: bool = False) -> None:
        if self._client is not None:
            self._client.publish(topic, payload, qos=THIRD_PARTY_QOS, retain=retain)


class EspresenseNode(_PahoNode):
    """An ESPresense node whose room is the scanner id."""

    format: NodeFormat = "espresense"

    def __init__(
        self, scanner: str, url: BrokerUrl, store: str, clock: NodeClock, speed: float
    ) -> None:
        super().__init__(scanner, url, store, clock, speed)
        self._pending: dict[str, tuple[int, int, float]] = {}
        """Beacon id -> (RSSI sum, readings since it was last published, when (store s))."""

    @property
    def status_topic(self) -> str:
        return f"espresense/rooms/{self.name}/status"

    @property
    def heartbeat_topic(self) -> str:
        return f"espresense/rooms/{self.name}/telemetry"

    def _hear(self, heard: Heard) -> None:
        found = espresense_id(heard)
        if found is None:
            self.stats.unexpressed += 1
            return
        ident, ref = found
        total, count, last = self._pending.get(ident, (0, 0, -1e9))
        total, count = total + heard.rssi, count + 1
        if heard.t - last < ESPRESENSE_EVERY_S:
            self._pending[ident] = (total, count, last)
            return
        self._pending[ident] = (0, 0, heard.t)
        self._device(ident, round(total / count), ref)

    def _device(self, ident: str, rssi: int, ref: int) -> None:
        body = {"id": ident, "rssi@1m": ref, "rssi": rssi, "int": 100}
        self._publish(f"espresense/devices/{ident}/{self.name}", json.dumps(body))
        self.stats.messages += 1
        self.stats.readings += 1


class OmgNode(_PahoNode):
    """An OpenMQTTGateway (or Theengs Gateway) whose gateway name is the scanner id."""

    format: NodeFormat = "omg"

    @property
    def status_topic(self) -> str:
        return f"home/{self.name}/LWT"

    @property
    def heartbeat_topic(self) -> str:
        return f"home/{self.name}/SYStoMQTT"

    def _hear(self, heard: Heard) -> None:
        device = heard.source.address.replace(":", "")
        self._publish(f"home/{self.name}/BTtoMQTT/{device}", json.dumps(omg_body(heard)))
        self.stats.messages += 1
        self.stats.readings += 1


def make_node(
    node_format: NodeFormat,
    scanner: str,
    url: BrokerUrl,
    store: str,
    clock: NodeClock,
    speed: float,
) -> SimNode:
    match node_format:
        case "ours":
            return OurNode(scanner, url, store, clock, speed)
        case "espresense":
            return EspresenseNode(scanner, url, store, clock, speed)
        case "omg":
            return OmgNode(scanner, url, store, clock, speed)


def totals(nodes: list[SimNode]) -> Counter[str]:
    out: Counter[str] = Counter()
    for node in nodes:
        for key in ("heard", "lost", "messages", "readings", "unexpressed"):
            out[key] += getattr(node.stats, key)
    return out
