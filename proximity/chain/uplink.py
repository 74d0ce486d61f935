"""The gateway's uplink to the chain (docs/chain.md): facts batches up, acks and bundles down.

    uplink = ChainUplink(url, store="store-001", gateway="gw-1", measure=measure,
                         clock=clock, settings=settings.chain, status=daemon_status)
    await uplink.start()          # returns at once, whether or not the broker is there
    ...
    await uplink.stop()

- **Its own connection** to the store broker (client id ``proximity-{gateway}-uplink``,
  MQTT 5, a persistent session), so offers never wait behind a batch and a store
  broker that is down blocks nothing: the daemon keeps trading, the batches wait in
  the measurement store's file.
- Every ``seal_every`` the facts recorded since the last batch are sealed into the
  next numbered batch (:meth:`MeasurementStore.seal`, one transaction).
- Batches go out oldest first on ``up/facts`` (QoS 1), at most ``window`` of them
  unacknowledged at a time: a long central outage holds the backlog in SQLite, not in
  the store broker's bridge queue. A batch hq has not acknowledged is sent again after
  ``resend_after`` and after every reconnect; hq counts each (store, gateway, seq) once.
- ``down/acks`` deletes the acknowledged batches, and moves those hq's database
  refused to ``uplink_refused`` (logged, counted, never sent again: they would be
  refused again for ever); acks for another gateway or a seq that is not waiting are
  ignored and counted.
- ``up/status`` (retained) at every connection, every ``status_interval`` and on
  :meth:`status_changed`; the MQTT will says ``"online": false``.
- ``down/rules`` payloads go to ``on_bundle``; :meth:`report_rollout` answers on
  ``up/rollout`` (retained).
- A malformed downlink message is rejected, counted by reason and logged once per
  reason; nothing a message says can stop the uplink.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeGuard

import paho.mqtt.client as mqtt
import structlog

from proximity.clock import Clock
from proximity.config import ChainSettings
from proximity.delivery._bridge import PahoBridge, Protocol, TlsFiles
from proximity.delivery.topics import ROOT, TOPIC_VERSION, segment
from proximity.delivery.url import BrokerUrl
from proximity.errors import BrokerUnavailable, PublishTimeout
from proximity.measurement.store import Batch, MeasurementStore

log = structlog.get_logger(__name__)

WINDOW = 8
"""Batches sent and not yet acknowledged by hq, at most (the rest wait in the file)."""
SESSION_EXPIRY_S = 24 * 3600
"""How long the store broker keeps the uplink's session (and acks for it) while the
gateway is away; after that a restart simply re-sends what is not acknowledged."""
MAX_ACK_SEQS = 10_000
"""More seqs than this in one ack message is not an ack we sent: refused."""


@dataclass(frozen=True, slots=True)
class ChainTopics:
    """The chain's topics of one store (docs/chain.md)."""

    store: str

    def __post_init__(self) -> None:
        segment(self.store, "store id")

    @property
    def base(self) -> str:
        return f"{ROOT}/{TOPIC_VERSION}/{self.store}"

    @property
    def facts(self) -> str:
        return f"{self.base}/up/facts"

    @property
    def status(self) -> str:
        return f"{self.base}/up/status"

    @property
    def rollout(self) -> str:
        return f"{self.base}/up/rollout"

    @property
    def acks(self) -> str:
        return f"{self.base}/down/acks"

    @property
    def rules(self) -> str:
        return f"{self.base}/down/rules"

    @property
    def down(self) -> str:
        return f"{self.base}/down/#"


class DownlinkError(ValueError):
    """A downlink message that cannot be used; ``reason`` is a fixed word, for counting."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class Ack:
    """A ``down/acks`` message: the batches hq committed, and those it refused."""

    gateway: str
    seqs: list[int]
    refused: list[tuple[int, str]]
    """(seq, reason): batches hq's PostgreSQL refused for their content."""


def parse_ack(payload: bytes) -> Ack:
    """``{"v": 1, "gateway": ..., "seqs": [...], "refused": [{"seq": .., "reason": ..}]}``
    (``refused`` optional); DownlinkError if not."""
    try:
        message = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise DownlinkError("not_json", f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise DownlinkError("not_an_object", "not a JSON object")
    if message.get("v") != 1:
        raise DownlinkError("wrong_version", f"v is {message.get('v')!r}, not 1")
    gateway = message.get("gateway")
    if not isinstance(gateway, str) or not gateway:
        raise DownlinkError("bad_field", "gateway is not a non-empty string")
    seqs = message.get("seqs")
    if not isinstance(seqs, list) or len(seqs) > MAX_ACK_SEQS:
        raise DownlinkError("bad_field", f"seqs is not a list of at most {MAX_ACK_SEQS}")
    if not all(_is_seq(s) for s in seqs):
        raise DownlinkError("bad_field", "seqs holds something other than positive integers")
    refused = message.get("refused", [])
    if not isinstance(refused, list) or len(refused) > MAX_ACK_SEQS:
        raise DownlinkError("bad_field", f"refused is not a list of at most {MAX_ACK_SEQS}")
    answers: list[tuple[int, str]] = []
    for item in refused:
        seq = item.get("seq") if isinstance(item, dict) else None
        reason = item.get("reason") if isinstance(item, dict) else None
        if not _is_seq(seq) or not isinstance(reason, str):
            raise DownlinkError("bad_field", "refused holds something other than {seq, reason}")
        answers.append((seq, reason[:200]))
    return Ack(gateway, seqs, answers)


def _is_seq(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def batch_payload(store: str, gateway: str, batch: Batch) -> bytes:
    """The ``up/facts`` message of ``batch``: counts per rule and minute, nothing personal."""
    message = {
        "v": 1,
        "store": store,
        "gateway": gateway,
        "seq": batch.seq,
        "sealed_at": batch.sealed_at,
        "rows": batch.rows,
    }
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


class ChainUplink:
    def __init__(
        self,
        url: BrokerUrl,
        *,
        store: str,
        gateway: str,
        measure: MeasurementStore,
        clock: Clock,
        settings: ChainSettings,
        status: Callable[[], Mapping[str, Any]] = dict,
        on_bundle: Callable[[bytes], Awaitable[None]] | None = None,
        version: str = "",
        protocol: Protocol = "5",
        tls: TlsFiles | None = None,
        client_id: str | None = None,
        window: int = WINDOW,
        publish_timeout: float = 10.0,
    ) -> None:
        """``status``: the gateway's own status fields (docs/chain.md: rules_version,
        bundle, outbox_depth, scanners, nodes, errors), asked each time one is sent."""
        self.topics = ChainTopics(store)
        self.store = store
        self.gateway = segment(gateway, "gateway id")
        self.measure = measure
        self.settings = settings
        self.on_bundle = on_bundle
        self._clock = clock
        self._status = status
        self._version = version
        self._window = max(1, window)
        self._bridge = PahoBridge(
            url,
            client_id=client_id or f"proximity-{gateway}-uplink",
            protocol=protocol,
            tls=tls,
            publish_timeout=publish_timeout,
            subscriptions=(self.topics.down,),
            on_connect=self._on_connect,
            on_message=self._on_message,
            session_expiry=SESSION_EXPIRY_S,
        )
        self._sent_at: dict[int, datetime] = {}
        """Batches sent on this connection and when (a reconnect forgets them all)."""
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._rollout: bytes | None = None
        self._bundle: int | None = None
        self._published_versions: tuple[object, object] = (None, None)
        self._stopped = False
        self._lost_logged = 0
        self.sent = 0
        """Batch messages the store broker acknowledged (re-sends included)."""
        self.resent = 0
        self.acked = 0
        """Batches hq acknowledged (and the gateway deleted)."""
        self.refused = 0
        """Batches hq's database refused (moved to ``uplink_refused``, not sent again)."""
        self.acks_ignored: Counter[str] = Counter()
        """Acknowledged seqs not acted on: other_gateway, already_acked, unknown_seq."""
        self.rejected: Counter[str] = Counter()
        """Downlink messages refused, by reason."""
        self.bundles_received = 0
        self.rollouts_refused = 0
        self.publish_failures = 0

    # -- what the metrics and the status read ---------------------------------------------

    @property
    def connected(self) -> bool:
        return self._bridge.connected

    def pending(self) -> tuple[int, float | None]:
        """Batches waiting for hq's acknowledgement, and the oldest one's age in seconds."""
        count, oldest = self.measure.pending_summary()
        if oldest is None:
            return count, None
        age = (self._clock.now() - datetime.fromisoformat(oldest)).total_seconds()
        return count, max(0.0, age)

    def status_message(self, online: bool = True) -> dict[str, Any]:
        message: dict[str, Any] = {
            "v": 1,
            "store": self.store,
            "gateway": self.gateway,
            "online": online,
            "at": self._clock.now().isoformat(),
            "version": self._version,
            "bundle": self._bundle,
        }
        try:
            message.update(self._status())
        except Exception as exc:  # the status is news, not a reason to stop the uplink
            log.warning("uplink_status_unavailable", error=repr(exc))
        message.update(v=1, store=self.store, gateway=self.gateway, online=online)
        message["uplink_pending"] = self.measure.pending_summary()[0]
        return message

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start sealing at once, and connect in the background (never waits for the broker)."""
        self._stopped = False
        will = self.status_message(online=False)
        self._bridge.set_will(self.topics.status, _json(will), qos=1, retain=True)
        self._tasks = [
            asyncio.create_task(self._connect(), name="uplink-connect"),
            asyncio.create_task(self._seal_loop(), name="uplink-seal"),
            asyncio.create_task(self._send_loop(), name="uplink-send"),
            asyncio.create_task(self._resend_loop(), name="uplink-resend"),
            asyncio.create_task(self._status_loop(), name="uplink-status"),
        ]
        log.info(
            "uplink_starting",
            broker=str(self._bridge.url),
            store=self.store,
            gateway=self.gateway,
            pending=self.measure.pending_summary()[0],
        )

    async def stop(self, flush_s: float = 2.0) -> None:
        """Seal what is recorded and, while connected, give hq up to ``flush_s`` (real
        seconds) to acknowledge what waits; say offline; disconnect. Whatever is not
        acknowledged by then stays in the file and goes up after the next start."""
        for task in self._tasks[1:]:  # the sealing, sending and status loops
            task.cancel()
        self._seal()
        if flush_s > 0 and self._bridge.connected and self.measure.pending(limit=1):
            sender = asyncio.create_task(self._flush(), name="uplink-flush")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(sender), flush_s)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        self._stopped = True
        for task in [*self._tasks, *self._background]:
            task.cancel()
        for task in [*self._tasks, *self._background]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._bridge.connected:
            with contextlib.suppress(BrokerUnavailable, PublishTimeout, TimeoutError):
                await asyncio.wait_for(self._publish_status(online=False), 2.0)
        await self._bridge.close()
        count = self.measure.pending_summary()[0]
        log.info("uplink_stopped", sent=self.sent, acked=self.acked, pending=count)

    async def _flush(self) -> None:
        """Send what waits, until hq acknowledged all of it (or the connection is gone)."""
        while self._bridge.connected and self.measure.pending(limit=1):
            await self._send_due()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.1)

    async def __aenter__(self) -> ChainUplink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def status_changed(self) -> None:
        """Send the status now (rules reloaded, a bundle applied)."""
        self._spawn(self._publish_status_quietly(), "uplink-status-now")

    async def report_rollout(self, report: Mapping[str, Any]) -> None:
        """The outcome of a rule bundle, retained on ``up/rollout``; kept and sent on the
        next connection if the broker is away now."""
        message: dict[str, Any] = {"v": 1, "store": self.store, "gateway": self.gateway}
        message.update(report)
        message.setdefault("at", self._clock.now().isoformat())
        if message.get("outcome") == "applied" and isinstance(message.get("bundle"), int):
            self._bundle = message["bundle"]
        elif message.get("outcome") == "refused":
            self.rollouts_refused += 1
        self._rollout = _json(message)
        await self._publish_rollout()
        self.status_changed()

    # -- tasks ---------------------------------------------------------------------------

    async def _connect(self) -> None:
        try:
            why_not = await self._bridge.connect_in_background()
        except BrokerUnavailable as exc:
            log.error(
                "uplink_refused",
                broker=str(self._bridge.url),
                error=str(exc),
                consequence="no facts go up; they are kept in the measurement store",
            )
            return
        if why_not is not None:
            log.warning(
                "uplink_broker_unreachable",
                broker=str(self._bridge.url),
                error=why_not,
                consequence="batches wait in the measurement store; reconnecting every second",
            )

    async def _seal_loop(self) -> None:
        every = self.settings.seal_every.total_seconds()
        while True:
            await self._clock.sleep(every)
            self._seal()

    def _seal(self) -> None:
        try:
            seqs = self.measure.seal(self._clock.now(), self.settings.max_batch_rows)
        except Exception as exc:  # a bug here must not take the daemon's facts with it
            log.error("uplink_seal_failed", error=repr(exc))
            return
        lost = self.measure.unsealable
        if lost and not self._lost_logged:
            log.error(
                "uplink_facts_unsealable",
                facts=lost,
                consequence="facts recorded while the measurement file failed are kept in "
                "memory only and never reach the chain",
            )
        self._lost_logged = lost
        if seqs:
            log.debug("uplink_sealed", seqs=seqs)
            self._wake.set()

    async def _resend_loop(self) -> None:
        half = self.settings.resend_after.total_seconds() / 2
        while True:
            await self._clock.sleep(half)
            self._wake.set()

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._bridge.connected:
                await self._send_due()

    async def _send_due(self) -> None:
        """Send the oldest ``window`` waiting batches that were not sent on this
        connection, or were sent ``resend_after`` ago."""
        now = self._clock.now()
        for batch in self.measure.pending(limit=self._window):
            sent = self._sent_at.get(batch.seq)
            if sent is not None and now - sent < self.settings.resend_after:
                continue
            try:
                await self._bridge.publish(
                    self.topics.facts, batch_payload(self.store, self.gateway, batch), qos=1
                )
            except (BrokerUnavailable, PublishTimeout) as exc:
                self.publish_failures += 1
                log.info("uplink_send_failed", seq=batch.seq, error=str(exc))
                return  # sent again on the next reconnect, or after resend_after
            self.sent += 1
            if sent is not None:
                self.resent += 1
            self._sent_at[batch.seq] = now

    async def _status_loop(self) -> None:
        """The status every ``status_interval``, and within a second of a rules change
        (a hot reload or an applied bundle changes ``rules_version``)."""
        every = self.settings.status_interval.total_seconds()
        tick = min(1.0, every)
        since = 0.0
        while True:
            await self._clock.sleep(tick)
            since += tick
            versions = self._versions()
            if since >= every or versions != self._published_versions:
                since = 0.0
                await self._publish_status_quietly()

    def _versions(self) -> tuple[object, object]:
        try:
            fields = self._status()
        except Exception:  # status_message logs it
            return None, self._bundle
        return fields.get("rules_version"), fields.get("bundle", self._bundle)

    async def _publish_status(self, online: bool = True) -> None:
        message = self.status_message(online)
        self._published_versions = (message.get("rules_version"), message.get("bundle"))
        await self._bridge.publish(self.topics.status, _json(message), qos=1, retain=True)

    async def _publish_status_quietly(self) -> None:
        if not self._bridge.connected:
            return
        try:
            await self._publish_status()
        except (BrokerUnavailable, PublishTimeout) as exc:
            self.publish_failures += 1
            log.info("uplink_status_failed", error=str(exc))

    async def _publish_rollout(self) -> None:
        if self._rollout is None or not self._bridge.connected:
            return
        try:
            await self._bridge.publish(self.topics.rollout, self._rollout, qos=1, retain=True)
        except (BrokerUnavailable, PublishTimeout) as exc:
            self.publish_failures += 1
            log.info("uplink_rollout_report_failed", error=str(exc))

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        if self._stopped:
            work.close()
            return
        task = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- the connection's events (on the event loop) --------------------------------------

    def _on_connect(self, first: bool) -> None:
        self._sent_at.clear()  # whatever was in flight may be lost: send it all again
        log.info("uplink_connected", broker=str(self._bridge.url), reconnect=not first)
        self._spawn(self._publish_status_quietly(), "uplink-status-online")
        self._spawn(self._publish_rollout(), "uplink-rollout")
        self._wake.set()

    def _on_message(self, message: mqtt.MQTTMessage) -> None:
        topic = message.topic
        payload = bytes(message.payload)
        try:
            if topic == self.topics.acks:
                self._on_ack(payload)
            elif topic == self.topics.rules:
                self._on_rules(payload, bool(message.retain))
            else:
                raise DownlinkError("unknown_topic", "not a downlink topic of docs/chain.md")
        except DownlinkError as exc:
            self._reject(exc, topic)

    def _reject(self, exc: DownlinkError, topic: str) -> None:
        first = not self.rejected[exc.reason]
        self.rejected[exc.reason] += 1
        if first:
            log.warning(
                "uplink_message_rejected",
                topic=topic,
                reason=exc.reason,
                detail=str(exc),
                note="logged once per reason; counted in proximity_uplink_rejected",
            )

    def _on_ack(self, payload: bytes) -> None:
        ack = parse_ack(payload)
        seqs = ack.seqs
        if ack.gateway != self.gateway:
            self.acks_ignored["other_gateway"] += len(seqs) + len(ack.refused)
            return
        deleted = self.measure.acknowledge(seqs)
        self.acked += len(deleted)
        moved = self.measure.refuse(ack.refused, self._clock.now()) if ack.refused else set()
        self.refused += len(moved)
        for seq, reason in ack.refused:
            if seq in moved:
                log.error(
                    "uplink_batch_refused",
                    seq=seq,
                    reason=reason,
                    note="hq's database refused it; kept in uplink_refused, not sent again",
                )
        for seq in deleted | moved:
            self._sent_at.pop(seq, None)
        last = self.measure.last_seq
        for seq in {*seqs, *(seq for seq, _ in ack.refused)} - deleted - moved:
            self.acks_ignored["unknown_seq" if seq > last else "already_acked"] += 1
        if deleted or moved:
            self._wake.set()  # the window has room again

    def _on_rules(self, payload: bytes, retained: bool) -> None:
        if not payload:
            return  # a retained bundle cleared: nothing to apply
        self.bundles_received += 1
        if self.on_bundle is None:
            raise DownlinkError("no_bundle_applier", "this gateway does not apply rule bundles")
        self._spawn(self._apply(self.on_bundle, payload), "uplink-bundle")

    async def _apply(self, on_bundle: Callable[[bytes], Awaitable[None]], payload: bytes) -> None:
        try:
            await on_bundle(payload)
        except Exception as exc:  # the applier reports its own refusals; this is a bug
            self.rollouts_refused += 1
            log.error("uplink_bundle_handler_failed", error=repr(exc))


def _json(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
