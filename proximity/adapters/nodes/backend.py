"""Remote scanner nodes as a BLE backend: subscribe to the store broker, hand over advertisements.

:class:`NodeBackend` is a :class:`~proximity.adapters.base.BleBackend` like the
radio, the simulator and the replay: the daemon's decoder, flood defence and
identity rules see the nodes' advertisements exactly as a local radio's. One MQTT
connection per broker (and credentials) the configured nodes publish to, through
the same :class:`~proximity.delivery._bridge.PahoBridge` as the publisher: paho's
thread only hands messages to the event loop; :class:`~.ingest.NodeIngest` parses,
de-duplicates, re-times and rate-limits them there; the advertisements wait in a
bounded queue for the daemon's reader (:data:`QUEUE_LIMIT`; beyond it they are
dropped and counted as ``queue_full``, never blocking paho).

A broker that is away at start is not fatal (the store trades on with its other
scanners); paho reconnects every second and the subscriptions are renewed.
``scanning`` (read by ``/readyz``) is true while every connection is up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from proximity.adapters.base import Advertisement, BleBackend
from proximity.adapters.nodes.formats import Source
from proximity.adapters.nodes.ingest import NodeIngest, NodeSpec
from proximity.clock import Clock
from proximity.delivery._bridge import PahoBridge, Protocol, TlsFiles
from proximity.delivery.url import BrokerUrl
from proximity.errors import BrokerUnavailable

log = structlog.get_logger(__name__)

QUEUE_LIMIT = 100_000
SILENCE_CHECK_S = 1.0
FIRST_CONNECT_S = 2.0
"""How long start() waits for a broker that is there (connection and subscriptions)."""
_END = object()


def subscriptions(store: str, sources: Iterable[Source]) -> list[str]:
    """The topic filters that carry the messages of nodes of ``sources``."""
    out: list[str] = []
    for source in sorted(set(sources)):
        match source:
            case "ours":
                out += [
                    f"proximity/v1/{store}/nodes/+/readings",
                    f"proximity/v1/{store}/nodes/+/status",
                ]
            case "espresense":
                out += [
                    "espresense/devices/+/+",
                    "espresense/rooms/+/status",
                    "espresense/rooms/+/telemetry",
                ]
            case "omg":
                out += ["home/+/BTtoMQTT/+", "home/+/LWT", "home/+/SYStoMQTT"]
    return out


@dataclass(frozen=True, slots=True)
class NodeBroker:
    """One connection: where, as whom, and which nodes' topics to read there."""

    url: BrokerUrl
    nodes: tuple[NodeSpec, ...]
    protocol: Protocol = "3.1.1"
    """The readings use nothing of MQTT 5, whose properties paho would build and decode for
    every message received."""
    tls: TlsFiles | None = None
    client_id: str = "proximity-nodes"


class NodeBackend(BleBackend):
    """The advertisements of every configured node, on the gateway's clock."""

    def __init__(
        self,
        store: str,
        brokers: Sequence[NodeBroker],
        clock: Clock,
        *,
        ingest: NodeIngest | None = None,
        queue_limit: int = QUEUE_LIMIT,
    ) -> None:
        if not brokers:
            raise ValueError("NodeBackend needs at least one broker")
        self._clock = clock
        self.brokers = tuple(brokers)
        self.ingest = ingest or NodeIngest(
            store,
            [spec for broker in brokers for spec in broker.nodes],
            monotonic=lambda: clock.now().timestamp(),
        )
        self._limit = queue_limit
        self._queue: asyncio.Queue[Advertisement | object] = asyncio.Queue()
        self.queue_full = 0
        self._bridges: list[PahoBridge] = []
        self._watch: asyncio.Task[None] | None = None
        self._stopped = False

    # -- what the metrics endpoint reads -------------------------------------------------------

    @property
    def scanning(self) -> bool:
        """Every node broker connection is up (``/readyz``)."""
        return bool(self._bridges) and all(bridge.connected for bridge in self._bridges)

    def scanners_down(self) -> frozenset[str]:
        """The scanners whose node is offline or silent (the pipeline holds their zones'
        exits, :meth:`~proximity.pipeline.Pipeline.watch_scanners`)."""
        return self.ingest.scanners_down()

    def metric_families(self) -> list[Metric]:
        """Prometheus families of the nodes' counts; every label from a fixed set or the
        config (node names), never from a message."""
        ingest = self.ingest
        rejected = CounterMetricFamily(
            "proximity_node_messages_rejected",
            "Malformed node messages, by source and problem",
            labels=["source", "problem"],
        )
        for key, count in ingest.rejected.items():
            source, _, problem = key.partition(":")
            rejected.add_metric([source, problem], count)
        dropped = CounterMetricFamily(
            "proximity_node_dropped",
            "Node messages or readings not used, by reason (duplicate_batch, rate_limited, "
            "stale, unknown_node, not_ours, queue_full, internal_error)",
            labels=["reason"],
        )
        for reason, count in ingest.dropped.items():
            dropped.add_metric([reason], count)
        dropped.add_metric(["queue_full"], self.queue_full)
        readings = CounterMetricFamily(
            "proximity_node_readings", "Readings taken from each node", labels=["node", "scanner"]
        )
        up = GaugeMetricFamily(
            "proximity_node_up", "1 while a node is heard from (online)", labels=["node", "scanner"]
        )
        skew = GaugeMetricFamily(
            "proximity_node_clock_offset_seconds",
            "A node's clock offset to the gateway's, plus the least delay (ours only)",
            labels=["node", "scanner"],
        )
        own_drops = CounterMetricFamily(
            "proximity_node_buffer_dropped",
            "Readings a node says it dropped itself (its buffer full)",
            labels=["node", "scanner"],
        )
        for health in ingest.nodes.values():
            labels = [health.spec.node, health.spec.scanner]
            readings.add_metric(labels, health.readings)
            up.add_metric(labels, int(health.alive))
            own_drops.add_metric(labels, health.node_dropped)
            if health.skew_s is not None:
                skew.add_metric(labels, health.skew_s)
        reordered = CounterMetricFamily(
            "proximity_node_readings_reordered",
            "Readings re-timed to their device's previous reading (heard by another node a "
            "moment later but handed over earlier)",
            value=ingest.reordered,
        )
        return [rejected, dropped, readings, up, skew, own_drops, reordered]

    # -- BleBackend -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopped = False
        self._queue = asyncio.Queue()
        for broker in self.brokers:
            try:
                bridge, why = await self._connect(broker)
            except BrokerUnavailable:
                await self._close_bridges()
                raise
            self._bridges.append(bridge)
            if why is not None:
                log.warning(
                    "node_broker_unavailable",
                    broker=str(broker.url),
                    reason=why,
                    consequence="reconnecting every second; nodes there are not heard",
                )
        self._watch = asyncio.create_task(self._watch_silence(), name="nodes-silence")
        log.info(
            "nodes_reading",
            brokers=[str(b.url) for b in self.brokers],
            nodes=[f"{spec.source}:{spec.node}" for b in self.brokers for spec in b.nodes],
        )

    async def _connect(self, broker: NodeBroker) -> tuple[PahoBridge, str | None]:
        """A bridge to ``broker``, and why it is not connected yet (None: it is).

        A broker that is there is waited for until it acknowledged the subscriptions
        (``scanning`` then means every node's messages reach the gateway); one that is
        away is tried again every second in the background. BrokerUnavailable only when
        the broker refuses this client (credentials): trying again would not help.
        """
        topics = subscriptions(self.ingest.store, (spec.source for spec in broker.nodes))

        def bridge(connect_timeout: float) -> PahoBridge:
            return PahoBridge(
                broker.url,
                client_id=broker.client_id,
                protocol=broker.protocol,
                tls=broker.tls,
                connect_timeout=connect_timeout,
                subscriptions=topics,
                on_message=self._message,
            )

        first = bridge(FIRST_CONNECT_S)
        try:
            await first.connect(subscribed=True)
        except BrokerUnavailable:
            pass  # closed by connect(); the next one keeps trying in the background
        else:
            return first, None
        background = bridge(10.0)
        return background, await background.connect_in_background()

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        await self._close_bridges()
        self._queue.put_nowait(_END)

    async def advertisements(self) -> AsyncIterator[Advertisement]:
        queue = self._queue
        while True:
            item = await queue.get()
            if item is _END:
                return
            assert isinstance(item, Advertisement)
            yield item

    # -- on the event loop -------------------------------------------------------------------------

    def _message(self, msg: mqtt.MQTTMessage) -> None:
        try:
            advertisements = self.ingest.handle(msg.topic, bytes(msg.payload), self._clock.now())
        except Exception as exc:  # a bug must not stop the other nodes: say it, count it
            self.ingest.dropped["internal_error"] += 1
            log.error("node_message_failed", error_type=type(exc).__name__)
            return
        queue = self._queue
        for adv in advertisements:
            if queue.qsize() >= self._limit:
                self.queue_full += 1
                continue
            queue.put_nowait(adv)

    async def _watch_silence(self) -> None:
        while True:
            await self._clock.sleep(SILENCE_CHECK_S)
            self.ingest.check_silence()

    async def _close_bridges(self) -> None:
        bridges, self._bridges = self._bridges, []
        for bridge in bridges:
            await bridge.close()
