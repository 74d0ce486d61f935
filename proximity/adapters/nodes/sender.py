"""The node side of our format: a BLE backend's advertisements, batched, to the store broker.

:class:`NodeSender` reads any :class:`~proximity.adapters.base.BleBackend` (the bleak
radio with its watchdog on a Pi; the simulator in tests) and publishes what it hears
on ``proximity/v1/{store}/nodes/{node}/readings`` in the format of docs/nodes.md:

- a batch every ``window_s`` (100 ms) or ``batch_max`` (256) readings, whichever comes
  first, and an empty one after ``heartbeat_s`` (5 s) of silence;
- each batch numbered (``seq``) within this run's ``boot``, QoS 1; ``sent`` and each
  reading's ``dt`` are computed when the batch is actually sent, so a batch held back
  by a broker outage says how old its readings are (the gateway drops what is stale);
- a retained ``online`` status on every connection, the MQTT will ``offline`` (the
  broker publishes it if the node vanishes), a graceful ``offline`` at stop;
- while the broker is away, readings wait in a bounded buffer (``buffer_max``); the
  oldest are dropped beyond it, counted, and every later batch and status says how many
  (a running total since the node started).

It decides nothing and keeps nothing: no rules, no identity keys, no local name (a
phone's name is personal data and the gateway does not need it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from proximity.adapters.base import Advertisement, BleBackend
from proximity.adapters.nodes.formats import BLUETOOTH_BASE
from proximity.clock import Clock
from proximity.delivery._bridge import PahoBridge, Protocol, TlsFiles
from proximity.delivery.topics import segment
from proximity.delivery.url import BrokerUrl
from proximity.errors import DeliveryError

log = structlog.get_logger(__name__)

WINDOW_S = 0.1
BATCH_MAX = 256
BUFFER_MAX = 10_000
HEARTBEAT_S = 5.0


@dataclass(slots=True)
class SenderStats:
    heard: int = 0
    sent: int = 0
    """Readings in batches the broker acknowledged."""
    batches: int = 0
    dropped: int = 0
    """Readings dropped from the full buffer (the broker away too long)."""
    failures: int = 0
    """Publish attempts that failed (the batch is kept and tried again)."""


def readings_topic(store: str, node: str) -> str:
    return f"proximity/v1/{segment(store, 'store id')}/nodes/{segment(node, 'node name')}/readings"


def status_topic(store: str, node: str) -> str:
    return f"proximity/v1/{segment(store, 'store id')}/nodes/{segment(node, 'node name')}/status"


def encode_reading(adv: Advertisement, sent: datetime) -> dict[str, Any]:
    """One advertisement as a reading of our format, ``dt`` seconds before ``sent``."""
    data = adv.data
    reading: dict[str, Any] = {
        "addr": adv.device.address,
        "rssi": data.rssi,
        "dt": round(max(0.0, (sent - adv.at).total_seconds()), 3),
    }
    if data.manufacturer_data:
        reading["mfr"] = {str(cid): raw.hex() for cid, raw in data.manufacturer_data.items()}
    if data.service_data:
        reading["svc"] = {_short(uuid): raw.hex() for uuid, raw in data.service_data.items()}
    if data.service_uuids:
        reading["uuids"] = [_short(uuid) for uuid in data.service_uuids]
    if data.tx_power is not None:
        reading["tx"] = data.tx_power
    return reading


def _short(uuid: str) -> str:
    """A Bluetooth base UUID as its 16-bit form (``feaa``); any other as it is."""
    lower = uuid.lower()
    if lower.endswith(BLUETOOTH_BASE) and lower.startswith("0000") and len(lower) == 36:
        return lower[4:8]
    return lower


class NodeSender:
    """Publishes what ``backend`` hears as node ``node`` of ``store``, until stopped."""

    def __init__(
        self,
        backend: BleBackend,
        url: BrokerUrl,
        *,
        store: str,
        node: str,
        clock: Clock,
        client_id: str | None = None,
        protocol: Protocol = "5",
        tls: TlsFiles | None = None,
        window_s: float = WINDOW_S,
        batch_max: int = BATCH_MAX,
        buffer_max: int = BUFFER_MAX,
        heartbeat_s: float = HEARTBEAT_S,
        boot: str | None = None,
        version: str = "",
        publish_timeout: float = 5.0,
    ) -> None:
        self.backend = backend
        self.store = store
        self.node = node
        self._clock = clock
        self._topic = readings_topic(store, node)
        self._status_topic = status_topic(store, node)
        self._window = window_s
        self._batch_max = batch_max
        self._buffer_max = buffer_max
        self._heartbeat = heartbeat_s
        self.boot = boot or secrets.token_hex(4)
        self._version = version
        self._heard: deque[Advertisement] = deque()
        self._outgoing: deque[tuple[int, list[Advertisement]]] = deque()
        """Batches built and not yet acknowledged: (seq, readings)."""
        self._seq = 0
        self._full = asyncio.Event()
        self.stats = SenderStats()
        self._bridge = PahoBridge(
            url,
            client_id=client_id or f"proximity-node-{node}",
            protocol=protocol,
            tls=tls,
            publish_timeout=publish_timeout,
            on_connect=self._connected,
        )
        self._bridge.set_will(self._status_topic, self._status("offline"), qos=1, retain=True)

    @property
    def connected(self) -> bool:
        return self._bridge.connected

    @property
    def waiting(self) -> int:
        """Readings heard and not yet acknowledged by the broker."""
        return len(self._heard) + sum(len(readings) for _, readings in self._outgoing)

    async def run(self, stop: asyncio.Event | None = None) -> SenderStats:
        """Read and publish until ``stop`` is set or the backend's stream ends; then send
        what is waiting (for at most a publish timeout) and say ``offline``."""
        stop = stop or asyncio.Event()
        why = await self._bridge.connect_in_background()
        if why is not None:
            log.warning("node_broker_unavailable", broker=str(self._bridge.url), reason=why)
        try:
            async with self.backend:
                reader = asyncio.create_task(self._read(), name="node-read")
                stopper = asyncio.create_task(stop.wait(), name="node-stop")
                try:
                    await self._send_until(lambda: reader.done() or stopper.done())
                finally:
                    for task in (reader, stopper):
                        task.cancel()
                    results = await asyncio.gather(reader, stopper, return_exceptions=True)
                failure = results[0]
                if isinstance(failure, Exception):
                    raise failure
            self._batch(force=False)
            await self._flush()
        finally:
            # also when the radio failed: a clean DISCONNECT sends no will, and the
            # retained status would say "online" for a node that hears nothing
            if self._bridge.connected:
                with contextlib.suppress(DeliveryError):
                    await self._bridge.publish(
                        self._status_topic, self._status("offline"), qos=1, retain=True
                    )
            await self._bridge.close()
        log.info(
            "node_sender_stopped",
            node=self.node,
            heard=self.stats.heard,
            sent=self.stats.sent,
            dropped=self.stats.dropped,
            waiting=self.waiting,
        )
        return self.stats

    # -- reading -----------------------------------------------------------------------------------

    async def _read(self) -> None:
        async for adv in self.backend.advertisements():
            self.stats.heard += 1
            self._heard.append(adv)
            if self.waiting > self._buffer_max:
                self._drop_oldest()
            if len(self._heard) >= self._batch_max:
                self._full.set()

    def _drop_oldest(self) -> None:
        if self._outgoing:
            _, readings = self._outgoing[0]
            readings.pop(0)
            if not readings:
                self._outgoing.popleft()
        else:
            self._heard.popleft()
        self.stats.dropped += 1
        if self.stats.dropped == 1:
            log.warning("node_buffer_full", node=self.node, buffer_max=self._buffer_max)

    # -- sending -----------------------------------------------------------------------------------

    async def _send_until(self, done: Callable[[], bool]) -> None:
        idle = 0.0
        while not done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self._window)
            self._full.clear()
            idle = 0.0 if self._heard else idle + self._window
            if self._heard or idle >= self._heartbeat:
                self._batch(force=idle >= self._heartbeat)
                idle = 0.0
            await self._flush()

    def _batch(self, force: bool) -> None:
        """Move what was heard into numbered batches (one empty batch if ``force``)."""
        while self._heard or force:
            readings = [
                self._heard.popleft() for _ in range(min(self._batch_max, len(self._heard)))
            ]
            self._outgoing.append((self._seq, readings))
            self._seq += 1
            force = False

    async def _flush(self) -> None:
        while self._outgoing and self._bridge.connected:
            seq, readings = self._outgoing[0]
            sent = self._clock.now()
            body: dict[str, Any] = {
                "v": 1,
                "boot": self.boot,
                "seq": seq,
                "sent": round(sent.timestamp(), 3),
                "readings": [encode_reading(adv, sent) for adv in readings],
            }
            if self.stats.dropped:
                body["dropped"] = self.stats.dropped  # a running total: a lost batch loses nothing
            try:
                await self._bridge.publish(
                    self._topic, json.dumps(body, separators=(",", ":")), qos=1
                )
            except DeliveryError as exc:
                self.stats.failures += 1
                log.warning(
                    "node_publish_failed", node=self.node, error=str(exc), waiting=self.waiting
                )
                return  # kept: tried again on the next round (the same seq: never read twice)
            if self._outgoing and self._outgoing[0][0] == seq:
                self._outgoing.popleft()
            self.stats.batches += 1
            self.stats.sent += len(readings)

    # -- status ------------------------------------------------------------------------------------

    def _status(self, state: str) -> bytes:
        status: dict[str, Any] = {"state": state, "boot": self.boot, "dropped": self.stats.dropped}
        if self._version:
            status["version"] = self._version
        return json.dumps(status).encode()

    def _connected(self, first: bool) -> None:
        with contextlib.suppress(DeliveryError):
            self._bridge.publish_nowait(
                self._status_topic, self._status("online"), qos=1, retain=True
            )
