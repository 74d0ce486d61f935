"""Node messages in, advertisements on the gateway's clock out: the stateful part of ingest.

:class:`NodeIngest` takes one MQTT message at a time (topic, payload, when it
arrived) and returns the :class:`~proximity.adapters.base.Advertisement` objects
in it, which then go through the gateway's own decoder like a local radio's. It
decides nothing about shoppers. What it keeps per node:

- **Duplicates.** A batch of ours carries ``(boot, seq)``; a batch seen again (QoS 1
  redelivery after a reconnect) is dropped and counted (``duplicate_batch``). The
  last :data:`SEQ_WINDOW` sequence numbers of the current boot are remembered; a new
  ``boot`` starts afresh.
- **Clock skew.** A batch says when the node sent it (``sent``, the node's clock)
  and each reading how long before that it was heard (``dt``). The offset between
  the node's clock and the gateway's is estimated as the smallest ``arrival - sent``
  over the last :data:`SKEW_WINDOW` batches (network and broker delays only ever add);
  a reading's time is then ``sent + offset - dt`` on the gateway's clock, never later
  than its arrival. A node clock stepped back shows as batches all later than the
  estimate by more than :data:`STEP_S`; after :data:`STEP_BATCHES` of them the
  estimate starts again. ESPresense and OpenMQTTGateway messages carry no usable
  time: their readings are timed on arrival.
- **Order.** Each device's readings are handed over in time order: two nodes hear a
  phone within milliseconds, and the one that sends first is not always the one that
  heard first. A reading timed before the device's previous one (by up to a batch
  window and the network's jitter) takes that previous time instead (``reordered``):
  presence never sees a device go back in time, and nothing waits for a reorder buffer.
- **Staleness.** A reading older than ``stale_after`` by the gateway's clock (a node
  flushing an old buffer) would only confuse presence: dropped, counted (``stale``).
- **Rate.** Each node has a token bucket of ``max_rate`` readings per second (a
  burst of twice that): a flooding node is throttled (``rate_limited``), the others
  are untouched. A message of readings needs a token before it is even parsed, so a
  node flooding garbage is throttled too; statuses and heartbeats are always read.
- **Liveness.** A node is ``online`` once it says so or sends anything (a heartbeat:
  ESPresense's telemetry, OpenMQTTGateway's system report, our empty batches),
  ``offline`` on its will (or an ``offline`` status), ``silent`` after ``silence``
  without a well-formed message.
  :meth:`NodeIngest.alive` says which scanners are heard from.

Malformed messages are counted by :data:`~.formats.NodeProblem` (a fixed set) and
logged at warning level once per problem, then at debug level at most once a
minute per problem; messages from nodes not in the config are counted
(``unknown_node``). Nothing logged or counted names a device address, and a topic
level is logged only when it cannot be one.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

import structlog
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from proximity.adapters.base import Advertisement
from proximity.adapters.nodes.formats import (
    Batch,
    NodeMessageError,
    NodeReading,
    Source,
    Status,
    loggable_name,
    parse_espresense,
    parse_omg,
    parse_ours,
)

log = structlog.get_logger(__name__)

SEQ_WINDOW = 4096
SKEW_WINDOW = 64
STEP_S = 2.0
STEP_BATCHES = 3
STALE_AFTER = timedelta(seconds=10)
TRACKED_DEVICES = 50_000
LOG_DETAIL_EVERY_S = 60.0
TOPIC_ROOTS = ("proximity", "espresense", "home")

NodeState = Literal["unknown", "online", "offline", "silent"]
Dropped = Literal[
    "duplicate_batch", "rate_limited", "stale", "unknown_node", "not_ours", "internal_error"
]
"""Well-formed messages or readings not passed on, by reason (a fixed set)."""


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """What the ingest needs to know of one configured node."""

    source: Source
    node: str
    scanner: str
    max_rate: float = 5000.0
    silence_s: float = 60.0

    @property
    def filtered(self) -> bool:
        return self.source == "espresense"


@dataclass(frozen=True, slots=True)
class NodeOrigin:
    """Where an advertisement came from; the ``details`` of its :class:`BLEDevice`.

    ``filtered``: the node filtered the reading (ESPresense: a smoothed RSSI at most
    every few seconds), it is not one raw advertisement.
    """

    source: Source
    node: str
    filtered: bool


@dataclass(slots=True)
class NodeHealth:
    """One node's counters and state (read by metrics and ``/readyz``)."""

    spec: NodeSpec
    state: NodeState = "unknown"
    last_heard: float | None = None
    """The gateway's monotonic time of the node's last message."""
    readings: int = 0
    batches: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    boot_dropped: int = 0
    """Readings the node says it dropped itself this boot (a full buffer while the broker
    was away): the running total its batches and status carry."""
    earlier_dropped: int = 0
    """The same, of its earlier boots."""
    skew_s: float | None = None
    """The node clock's offset to the gateway's (plus the least delay), seconds: positive
    when the node's clock is behind. None until a batch of ours arrived."""
    boot: str | None = None
    seqs: set[int] = field(default_factory=set)
    seq_order: deque[int] = field(default_factory=deque)
    max_seq: int = -1
    offsets: deque[float] = field(default_factory=lambda: deque(maxlen=SKEW_WINDOW))
    late: int = 0
    tokens: float = 0.0
    refilled: float | None = None
    origin: NodeOrigin | None = None

    @property
    def alive(self) -> bool:
        return self.state == "online"

    @property
    def node_dropped(self) -> int:
        """Readings the node dropped itself, since the gateway started (a counter)."""
        return self.earlier_dropped + self.boot_dropped


class NodeIngest:
    """Messages of the configured nodes in, advertisements out; counts everything else."""

    def __init__(
        self,
        store: str,
        nodes: Iterable[NodeSpec],
        *,
        stale_after: timedelta = STALE_AFTER,
        monotonic: Callable[[], float],
    ) -> None:
        self.store = store
        self._monotonic = monotonic
        self._stale_s = stale_after.total_seconds()
        self.nodes: dict[tuple[Source, str], NodeHealth] = {}
        for spec in nodes:
            health = NodeHealth(spec, tokens=2 * spec.max_rate)
            health.origin = NodeOrigin(spec.source, spec.node, spec.filtered)
            self.nodes[(spec.source, spec.node)] = health
        self.messages = 0
        self.rejected: Counter[str] = Counter()
        """Malformed messages, by ``source:problem`` (a bounded set)."""
        self.dropped: Counter[str] = Counter()
        """Well-formed but not used, by :data:`Dropped` reason (all nodes)."""
        self._detailed: dict[str, float] = {}
        self._last_at: dict[str, datetime] = {}
        """The time of each device's latest reading handed over (by address, bounded)."""
        self.reordered = 0
        """Readings re-timed to their device's previous reading, not to go back in time."""

    # -- what operators and the presence layer read --------------------------------------------

    def alive(self, scanner: str) -> bool | None:
        """Whether the node that is ``scanner`` is heard from (None: no node is that scanner)."""
        for health in self.nodes.values():
            if health.spec.scanner == scanner:
                return health.alive
        return None

    def scanners_down(self) -> frozenset[str]:
        """The scanners whose node is known to be down: it said it is offline (its will)
        or went silent. A node not heard from since the start is not counted: it has
        heard nobody the presence layer could lose."""
        return frozenset(
            h.spec.scanner for h in self.nodes.values() if h.state in ("offline", "silent")
        )

    def filtered_scanners(self) -> frozenset[str]:
        """The scanners whose readings are node-filtered (ESPresense), not raw."""
        return frozenset(h.spec.scanner for h in self.nodes.values() if h.spec.filtered)

    # -- messages in ---------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes, arrived: datetime) -> list[Advertisement]:
        """The advertisements in one message (none when it is a status, malformed or
        dropped: counted)."""
        self.messages += 1
        parts = topic.split("/")
        source: Source
        match parts:
            case ["proximity", "v1", store, "nodes", _, _] if store == self.store:
                source = "ours"
            case ["espresense", *_]:
                source = "espresense"
            case ["home", *_]:
                source = "omg"
            case _:  # another store's, or a topic the subscriptions do not ask for
                self._drop(None, "not_ours")
                return []
        node = _node_of(parts)
        health = self.nodes.get((source, node))
        if health is None and node:
            # not parsed: whoever publishes under a name the config does not know costs
            # the gateway a lookup, not a parse
            self._drop(None, "unknown_node")
            name = loggable_name(node)
            self._log_once(
                f"unknown_node:{source}:{name}", "node_unknown", source=source, node=name
            )
            return []
        now = self._monotonic()
        if health is not None and _carries_readings(parts) and not self._admit(health, now):
            # checked before parsing: a node flooding garbage costs no more than one
            # flooding readings (its statuses and will still get through)
            self._drop(health, "rate_limited")
            self._rate_limited(health)
            return []
        try:
            match source:
                case "ours":
                    message = parse_ours(node, parts[5], payload)
                case "espresense":
                    message = parse_espresense(parts, payload)
                case "omg":
                    message = parse_omg(parts, payload)
        except NodeMessageError as exc:
            self._reject(source, exc, health)
            return []
        if health is None:  # an empty topic level where the node's name goes
            self._drop(None, "unknown_node")
            return []
        if isinstance(message, Status):
            self._status(health, message, now)
            return []
        return self._batch(health, message, arrived, now)

    def check_silence(self) -> list[NodeSpec]:
        """Mark nodes silent that sent nothing for their ``silence``; returns them."""
        now = self._monotonic()
        silenced = []
        for health in self.nodes.values():
            if (
                health.state == "online"
                and health.last_heard is not None
                and now - health.last_heard > health.spec.silence_s
            ):
                self._set_state(health, "silent")
                silenced.append(health.spec)
        return silenced

    # -- one node -------------------------------------------------------------------------------

    def _status(self, health: NodeHealth, status: Status, now: float) -> None:
        health.last_heard = now
        if status.boot is not None and status.boot != health.boot:
            self._new_boot(health, status.boot)
        if status.dropped is not None:
            health.boot_dropped = max(health.boot_dropped, status.dropped)
        self._set_state(health, "online" if status.online else "offline")

    def _batch(
        self, health: NodeHealth, batch: Batch, arrived: datetime, now: float
    ) -> list[Advertisement]:
        health.last_heard = now
        if health.state != "online":
            self._set_state(health, "online")
        if batch.seq is not None and self._duplicate(health, batch.boot, batch.seq):
            self._drop(health, "duplicate_batch")
            return []
        health.batches += 1
        health.boot_dropped = max(health.boot_dropped, batch.dropped)
        if not batch.readings:
            return []
        # the message's admission paid for its first reading
        taken = 1 + self._take(health, len(batch.readings) - 1, now)
        if taken < len(batch.readings):
            self._drop(health, "rate_limited", len(batch.readings) - taken)
            self._rate_limited(health)
        base = arrived
        if batch.sent is not None:
            offset = self._offset(health, arrived.timestamp() - batch.sent)
            base = arrived - timedelta(seconds=arrived.timestamp() - batch.sent - offset)
        oldest = arrived - timedelta(seconds=self._stale_s)
        scanner = health.spec.scanner
        origin = health.origin
        out = []
        last = self._last_at
        for reading in batch.readings[:taken]:
            at = base - timedelta(seconds=reading.age) if reading.age else base
            if at < oldest:
                self._drop(health, "stale")
                continue
            if at > arrived:
                at = arrived
            address = reading.address
            before = last.get(address)
            if before is not None and at < before:
                at = before  # heard by another node a moment later but handed over earlier
                self.reordered += 1
            last[address] = at
            out.append(advertisement(reading, scanner, at, origin))
        if len(last) > TRACKED_DEVICES:
            last.clear()  # rare (a scan of everything); at worst one reading out of order each
        health.readings += len(out)
        return out

    def _duplicate(self, health: NodeHealth, boot: str | None, seq: int) -> bool:
        if boot is not None and boot != health.boot:
            self._new_boot(health, boot)
        elif boot is None and seq < health.max_seq - SEQ_WINDOW:
            self._new_boot(health, None)  # far behind the window: the node restarted
        if seq in health.seqs:
            return True
        health.seqs.add(seq)
        health.seq_order.append(seq)
        if len(health.seq_order) > SEQ_WINDOW:
            health.seqs.discard(health.seq_order.popleft())
        health.max_seq = max(health.max_seq, seq)
        return False

    def _new_boot(self, health: NodeHealth, boot: str | None) -> None:
        health.boot = boot
        health.earlier_dropped += health.boot_dropped
        health.boot_dropped = 0
        health.seqs.clear()
        health.seq_order.clear()
        health.max_seq = -1
        health.offsets.clear()  # a restarted node may have set its clock meanwhile
        health.late = 0

    def _offset(self, health: NodeHealth, sample: float) -> float:
        """The node's clock offset, with this batch's ``arrival - sent`` sample."""
        offsets = health.offsets
        if offsets and sample > min(offsets) + STEP_S:
            health.late += 1
            if health.late >= STEP_BATCHES:  # the node's clock went back: start again
                offsets.clear()
                health.late = 0
        else:
            health.late = 0
        offsets.append(sample)
        estimate = min(offsets)
        health.skew_s = estimate
        return estimate

    def _admit(self, health: NodeHealth, now: float) -> bool:
        """One token for a message that carries readings (its first reading's), if any."""
        return self._take(health, 1, now) == 1

    def _take(self, health: NodeHealth, wanted: int, now: float) -> int:
        """Up to ``wanted`` tokens of the node's bucket (``max_rate`` a second, twice that
        at most); how many it got."""
        rate = health.spec.max_rate
        if health.refilled is not None:
            elapsed = max(0.0, now - health.refilled)
            health.tokens = min(2 * rate, health.tokens + elapsed * rate)
        health.refilled = now
        taken = min(wanted, int(health.tokens))
        health.tokens -= taken
        return taken

    def _rate_limited(self, health: NodeHealth) -> None:
        spec = health.spec
        self._log_once(
            f"rate_limited:{spec.source}:{spec.node}",
            "node_rate_limited",
            node=spec.node,
            max_rate=spec.max_rate,
        )

    def _set_state(self, health: NodeHealth, state: NodeState) -> None:
        if health.state == state:
            return
        before, health.state = health.state, state
        spec = health.spec
        event = "node_online" if state == "online" else f"node_{state}"
        level = log.info if state == "online" else log.warning
        level(event, source=spec.source, node=spec.node, scanner=spec.scanner, was=before)

    # -- counting -------------------------------------------------------------------------------

    def _drop(self, health: NodeHealth | None, reason: Dropped, count: int = 1) -> None:
        self.dropped[reason] += count
        if health is not None:
            health.dropped[reason] += count

    def _reject(self, source: Source, exc: NodeMessageError, health: NodeHealth | None) -> None:
        key = f"{source}:{exc.problem}"
        self.rejected[key] += 1
        if health is not None:
            health.dropped[f"malformed:{exc.problem}"] += 1
        if self.rejected[key] == 1:
            log.warning("node_message_rejected", source=source, problem=exc.problem)
        self._log_once(
            f"detail:{key}",
            "node_message_rejected_detail",
            level="debug",
            source=source,
            problem=exc.problem,
            reason=exc.reason,
        )

    def _log_once(self, key: str, event: str, level: str = "warning", **fields: object) -> None:
        """``event`` at most once per :data:`LOG_DETAIL_EVERY_S` per ``key`` (bounded: keys
        with a sender-chosen part are kept to the most recent few hundred)."""
        now = self._monotonic()
        last = self._detailed.get(key)
        if last is not None and 0 <= now - last < LOG_DETAIL_EVERY_S:
            return
        if len(self._detailed) > 512:
            self._detailed.clear()
        self._detailed[key] = now
        (log.debug if level == "debug" else log.warning)(event, **fields)


def _carries_readings(parts: list[str]) -> bool:
    """Whether a topic is one of readings (not of a node's status or heartbeat)."""
    match parts:
        case ["proximity", _, _, _, _, "readings"] | ["espresense", "devices", *_]:
            return True
        case ["home", _, "BTtoMQTT", *_]:
            return True
    return False


def _node_of(parts: list[str]) -> str:
    match parts:
        case ["proximity", "v1", _, "nodes", node, _]:
            return node
        case ["espresense", "devices", _, room] | ["espresense", "rooms", room, _]:
            return room
        case ["home", gateway, *_]:
            return gateway
    return ""


def advertisement(
    reading: NodeReading, scanner: str, at: datetime, origin: NodeOrigin | None = None
) -> Advertisement:
    """``reading`` as the advertisement a local radio named ``scanner`` would hand over;
    its device's ``details`` say where it came from."""
    return Advertisement(
        device=BLEDevice(reading.address, reading.name, origin),
        data=AdvertisementData(
            local_name=reading.name,
            manufacturer_data=reading.manufacturer,
            service_data=reading.service,
            service_uuids=list(reading.uuids),
            tx_power=reading.tx_power,
            rssi=reading.rssi,
            platform_data=(),
        ),
        scanner=scanner,
        at=at,
    )
