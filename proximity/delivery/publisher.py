"""The MQTT publisher: an async context manager over paho-mqtt 2.x, in the style of aiomqtt.

    async with MqttPublisher(url, store="store-001", gateway="gw-1", client_id="gw-1") as pub:
        await pub.publish_offer(token, offer)      # returns after the broker's PUBACK

- Offers go at QoS 1, not retained. With MQTT 5 the message expiry is the
  offer's remaining lifetime (rounded up, at least 1 s) and user properties
  carry ``offer_id``, ``rule`` and ``rules_version``; with MQTT 3.1.1 those are
  left out (``expires_at`` is in the payload anyway).
- A retained status on ``.../gateways/{gateway}/status``: ``online`` once
  connected, ``offline`` (``"graceful": true``) on a clean exit, and the same
  ``offline`` (``"graceful": false``) as the last will when the gateway vanishes.
- Threads: paho runs its own network thread (``loop_start``); its blocking
  ``connect`` and ``loop_stop`` run in worker threads; paho callbacks only
  hand their arguments to the event loop with ``call_soon_threadsafe``, where
  futures are resolved. Delivery is tracked by message id through
  ``on_publish`` (never ``wait_for_publish``, which raises for a message
  published while disconnected).
- Failures are typed: :class:`BrokerUnavailable` when the broker cannot be
  reached or the connection drops (every publish waiting for its PUBACK fails
  at once, nothing hangs), :class:`PublishTimeout` when no PUBACK comes in time.
  A publish that failed is never sent later behind the caller's back: paho would
  re-send it after reconnecting, possibly after the offer expired, so it is
  taken out of paho's queue (the caller, e.g. the outbox, retries it itself).
- paho reconnects on its own with backoff (1 s to 30 s); the status goes back
  to ``online`` and the feedback subscription is renewed on each connection.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers
from paho.mqtt.reasoncodes import ReasonCode

from proximity import __version__
from proximity.clock import Clock, SystemClock
from proximity.delivery._bridge import (
    Protocol,
    TlsFiles,
    close_client,
    connect_off_loop,
    forget_unacknowledged,
    is_failure,
    make_client,
    reason_text,
    to_loop,
)
from proximity.delivery.topics import (
    events_topic,
    feedback_filter,
    offers_topic,
    signage_topic,
    status_topic,
)
from proximity.delivery.url import BrokerUrl
from proximity.errors import BrokerUnavailable, PublishTimeout
from proximity.events import JourneyEvent
from proximity.offers import Offer

log = structlog.get_logger(__name__)

KEEPALIVE_S = 30
OFFLINE_STATUS_TIMEOUT_S = 2.0


_PUBLISH_TEMPLATE = Properties(PacketTypes.PUBLISH)
_MAX_UINT32 = 0xFFFFFFFF
_MAX_UTF8 = 0xFFFF


class PublishProperties(Properties):
    """PUBLISH properties with a message expiry and user properties, packed once.

    paho's :class:`Properties` looks every attribute up in its name table when it
    is set and again when it is packed: about 60 µs an offer, a quarter of the
    publishing cost under load. This packs the two properties an offer carries
    as MQTT 5.0 (3.3.2.3) lays them out: identifier 0x02, a four-byte integer;
    identifier 0x26 for each UTF-8 string pair. The tests check that it packs
    byte for byte what paho's own class packs. Reading it back works as for any
    :class:`Properties`.
    """

    _packed: bytes

    def __init__(self, expiry_s: int, user: list[tuple[str, str]]) -> None:
        if not 0 <= expiry_s <= _MAX_UINT32:
            raise ValueError(f"message expiry {expiry_s}s is out of range")
        self.__dict__.update(_PUBLISH_TEMPLATE.__dict__)  # its tables, shared, never changed
        body = bytearray(b"\x02")
        body += expiry_s.to_bytes(4, "big")
        for key, value in user:
            body += b"\x26"
            body += _utf8(key)
            body += _utf8(value)
        object.__setattr__(self, "MessageExpiryInterval", expiry_s)
        if user:
            object.__setattr__(self, "UserProperty", list(user))
        object.__setattr__(self, "_packed", VariableByteIntegers.encode(len(body)) + body)

    def pack(self) -> bytes:
        return self._packed


def _utf8(text: str) -> bytes:
    if "\x00" in text:  # MQTT 5.0 1.5.4: a receiver treats it as a malformed packet
        raise ValueError(f"a user property cannot hold U+0000: {text!r}")
    data = text.encode()
    if len(data) > _MAX_UTF8:
        raise ValueError(f"a user property of {len(data)} bytes is longer than MQTT allows")
    return len(data).to_bytes(2, "big") + data


class MqttPublisher:
    def __init__(
        self,
        url: BrokerUrl,
        *,
        store: str,
        gateway: str,
        client_id: str,
        protocol: Protocol = "5",
        connect_timeout: float = 10.0,
        publish_timeout: float = 10.0,
        version: str = __version__,
        rules_version: str | None = None,
        clock: Clock | None = None,
        tls: TlsFiles | None = None,
        require_connection: bool = True,
    ) -> None:
        """``tls``: CA and client certificate for an ``mqtts://`` broker (default: system CAs).

        ``require_connection=False``: start even when the broker is down, and connect
        (and reconnect) in the background; publishing raises BrokerUnavailable meanwhile.
        """
        if url.is_embedded:
            raise ValueError("start the EmbeddedBroker and pass its url, not 'embedded'")
        self.url = url
        self.store = store
        self.gateway = gateway
        self.protocol = protocol
        self.version = version
        self._connect_timeout = connect_timeout
        self._publish_timeout = publish_timeout
        self._rules_version = rules_version
        self._require_connection = require_connection
        self._clock = clock or SystemClock()
        # The broker counts message expiry in real seconds; a clock that runs faster than
        # real time (a simulated store hour in a minute) says how much faster.
        self._speed: float = getattr(self._clock, "speed", 1.0)
        self._status_topic = status_topic(store, gateway)
        self._client = make_client(url, client_id, protocol, tls)
        self._client.connect_timeout = connect_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = False
        self._closing = False
        self._refused = False
        self._first_connack: asyncio.Future[None] | None = None
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._acks: list[tuple[int, ReasonCode]] = []
        self._acks_lock = threading.Lock()
        self._acks_scheduled = False
        self.published = 0
        """Offers the broker acknowledged."""
        self.failed = 0
        """Offers that raised BrokerUnavailable or PublishTimeout."""
        self.expired = 0
        """Offers not sent because they expired first."""
        self.feedback_handler: Callable[[str, bytes], None] | None = None
        """Called on the event loop with (topic, payload) of each app feedback message."""

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._first_connack = self._loop.create_future()
        client = self._client
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self._set_will()
        if not self._require_connection:
            return await self._start_anyway()
        try:
            await connect_off_loop(client, self.url, self._connect_timeout, KEEPALIVE_S)
        except (OSError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            await asyncio.to_thread(close_client, client)
            raise BrokerUnavailable(f"cannot connect to {self.url}: {reason}") from exc
        client.loop_start()
        try:
            await asyncio.wait_for(asyncio.shield(self._first_connack), self._connect_timeout)
            await self._publish(self._status_topic, self._status("online"), qos=1, retain=True)
        except BaseException as exc:
            await asyncio.to_thread(close_client, client)
            if isinstance(exc, TimeoutError):
                raise BrokerUnavailable(self._no_connack_reason()) from exc
            raise
        log.info("mqtt_connected", broker=str(self.url), protocol=self.protocol)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._connected:
            try:
                await asyncio.wait_for(
                    self._publish(
                        self._status_topic,
                        self._status("offline", graceful=True),
                        qos=1,
                        retain=True,
                    ),
                    min(OFFLINE_STATUS_TIMEOUT_S, self._publish_timeout),
                )
            except (BrokerUnavailable, PublishTimeout, TimeoutError):
                log.warning("mqtt_offline_status_not_sent", broker=str(self.url))
        self._closing = True
        await asyncio.to_thread(close_client, self._client)
        self._connected = False
        self._fail_pending(BrokerUnavailable(f"publisher to {self.url} closed"))

    async def _start_anyway(self) -> Self:
        """Start whether or not the broker is there: paho keeps trying, the outbox keeps
        the offers. Only a broker that refuses this gateway (credentials) fails the start."""
        client = self._client
        try:
            # no asyncio timeout: paho's own connect_timeout bounds the socket, and this
            # thread must be done before paho's network thread takes the client over
            await asyncio.to_thread(client.connect, self.url.host, self.url.port, KEEPALIVE_S)
        except OSError as exc:
            log.warning("mqtt_broker_unreachable_at_start", broker=str(self.url), error=str(exc))
            client.connect_async(self.url.host, self.url.port, KEEPALIVE_S)
            client.loop_start()
            return self
        client.loop_start()
        assert self._first_connack is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._first_connack), self._connect_timeout)
        except TimeoutError:
            log.warning("mqtt_broker_unreachable_at_start", broker=str(self.url), error="no answer")
        except BrokerUnavailable:
            if self._refused:  # wrong credentials or client id: retrying will not help
                await asyncio.to_thread(close_client, client)
                raise
        return self

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def rules_version(self) -> str | None:
        return self._rules_version

    async def set_rules_version(self, version: str) -> None:
        """Serve a new rules version: the retained status (and the will) say so from now on."""
        self._rules_version = version
        self._set_will()
        if self._connected:
            await self._publish(self._status_topic, self._status("online"), qos=1, retain=True)

    # -- publishing ------------------------------------------------------------------------

    async def publish_offer(self, shopper_token: str, offer: Offer) -> bool:
        """Publish one offer at QoS 1 and wait for the PUBACK.

        Returns False (and counts it in ``expired``) when the offer expired before it
        could be sent: a late offer is never delivered. Raises BrokerUnavailable or
        PublishTimeout (counted in ``failed``) when the broker did not take it.
        """
        topic = offers_topic(self.store, shopper_token)
        remaining = self._remaining_s(offer)
        if remaining is None:
            log.info("offer_expired_before_publish", offer=offer.id, rule=offer.rule)
            return False
        user = [("offer_id", offer.id), ("rule", offer.rule)]
        if offer.rules_version is not None:
            user.append(("rules_version", offer.rules_version))
        properties = self._expiry(remaining, user)
        try:
            await self._publish(
                topic, offer.model_dump_json().encode(), qos=1, properties=properties
            )
        except (BrokerUnavailable, PublishTimeout):
            self.failed += 1
            raise
        self.published += 1
        return True

    async def publish_signage(self, offer: Offer) -> bool:
        """An anonymous call to action for a zone's screens (QoS 1, expiring like an offer)."""
        if offer.zone is None:
            raise ValueError("signage needs the offer's zone")
        remaining = self._remaining_s(offer)
        if remaining is None:
            return False
        await self._publish(
            signage_topic(self.store, offer.zone),
            offer.model_dump_json().encode(),
            qos=1,
            properties=self._expiry(remaining),
        )
        return True

    async def publish_event(self, event: JourneyEvent, qos: int = 0) -> None:
        """Publish a journey event for analytics (QoS 0 by default: fire and forget)."""
        await self._publish(events_topic(self.store), event.model_dump_json().encode(), qos=qos)

    def _remaining_s(self, offer: Offer) -> float | None:
        """Seconds ``offer`` has left; None (and counted) when it has expired."""
        remaining = (offer.expires_at - self._clock.now()).total_seconds()
        if remaining <= 0:
            self.expired += 1
            return None
        return remaining

    def _expiry(
        self, remaining_s: float, user: list[tuple[str, str]] | None = None
    ) -> Properties | None:
        """MQTT 5 PUBLISH properties: the message expiry (in real seconds: on a sped-up
        clock, the offer's remaining lifetime divided by the speed) and ``user``
        properties (None with MQTT 3.1.1)."""
        if self.protocol != "5":
            return None
        return PublishProperties(max(1, math.ceil(remaining_s / self._speed)), user or [])

    async def _publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        assert self._loop is not None, "use MqttPublisher as an async context manager"
        if not self._connected:
            raise BrokerUnavailable(f"not connected to {self.url}")
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc == mqtt.MQTT_ERR_NO_CONN:  # paho keeps it for after a reconnect: no
            forget_unacknowledged(self._client, info.mid)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise BrokerUnavailable(f"publish to {self.url} failed: {mqtt.error_string(info.rc)}")
        if qos == 0:
            return
        # No await between publish() and registering: on_publish reaches the loop
        # through call_soon_threadsafe, so it cannot run before the future exists.
        future = self._loop.create_future()
        self._pending[info.mid] = future
        # a timer rather than wait_for: hundreds of these are in flight under load
        timer = self._loop.call_later(self._publish_timeout, self._timed_out, future)
        try:
            await future
        finally:
            timer.cancel()
            if self._pending.get(info.mid) is future:
                del self._pending[info.mid]

    # -- paho callbacks (paho's thread) ----------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._to_loop(self._connack, reason_code)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        # Here, not on the loop: this must happen before paho's next reconnect.
        forget_unacknowledged(client)
        self._to_loop(self._lost, reason_text(reason_code))

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        # PUBACKs come in bursts under load: hand them over in batches, one wake-up each
        with self._acks_lock:
            self._acks.append((mid, reason_code))
            if self._acks_scheduled:
                return
            self._acks_scheduled = True
        self._to_loop(self._flush_acks)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self._to_loop(self._feedback, msg.topic, bytes(msg.payload))

    def _to_loop(self, callback: Callable[..., None], *args: object) -> None:
        to_loop(self._loop, callback, *args)

    # -- the same events, on the event loop ------------------------------------------------

    def _connack(self, reason_code: ReasonCode) -> None:
        assert self._first_connack is not None
        if is_failure(reason_code):
            reason = reason_text(reason_code)
            self._refused = True
            self._fail_start(BrokerUnavailable(f"{self.url} refused the connection: {reason}"))
            log.error("mqtt_connect_refused", broker=str(self.url), reason=reason)
            return
        first = not self._first_connack.done()
        self._connected = True
        self._refused = False
        # app feedback for this store, (re)subscribed on every connection
        self._client.subscribe(feedback_filter(self.store), qos=1)
        if first:
            self._first_connack.set_result(None)
            if self._require_connection:
                return  # __aenter__ publishes the status and waits for its PUBACK
        log.info("mqtt_connected" if first else "mqtt_reconnected", broker=str(self.url))
        self._client.publish(self._status_topic, self._status("online"), qos=1, retain=True)

    def _lost(self, reason: str) -> None:
        if self._closing:
            log.info("mqtt_disconnected", broker=str(self.url))
        elif self._connected:
            log.warning("mqtt_connection_lost", broker=str(self.url), reason=reason)
        self._connected = False
        error = BrokerUnavailable(f"connection to {self.url} lost: {reason}")
        self._fail_start(error)  # closed before CONNACK (a refused certificate, say)
        self._fail_pending(error)

    def _flush_acks(self) -> None:
        with self._acks_lock:
            acks, self._acks = self._acks, []
            self._acks_scheduled = False
        for mid, reason_code in acks:
            self._acked(mid, reason_code)

    def _timed_out(self, future: asyncio.Future[None]) -> None:
        if not future.done():
            future.set_exception(
                PublishTimeout(f"no PUBACK from {self.url} within {self._publish_timeout:g}s")
            )

    def _acked(self, mid: int, reason_code: ReasonCode) -> None:
        future = self._pending.get(mid)
        if future is None or future.done():
            return  # a publish we stopped waiting for (timed out), or QoS 0
        if is_failure(reason_code):
            future.set_exception(
                BrokerUnavailable(f"{self.url} refused the publish: {reason_text(reason_code)}")
            )
        else:
            future.set_result(None)

    def _feedback(self, topic: str, payload: bytes) -> None:
        if self.feedback_handler is not None:
            self.feedback_handler(topic, payload)

    def _fail_start(self, error: BrokerUnavailable) -> None:
        if self._first_connack is not None and not self._first_connack.done():
            self._first_connack.set_exception(error)
            self._first_connack.exception()  # retrieved: the waiter re-raises it

    def _fail_pending(self, error: BrokerUnavailable) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
                future.exception()  # mark retrieved; the waiter re-raises it

    # -- status ----------------------------------------------------------------------------

    def _set_will(self) -> None:
        """The broker publishes this (retained) if the connection ends without DISCONNECT."""
        will = self._status("offline", graceful=False, at=False)
        self._client.will_set(self._status_topic, will, qos=1, retain=True)

    def _status(self, state: str, *, graceful: bool | None = None, at: bool = True) -> bytes:
        status: dict[str, object] = {
            "state": state,
            "gateway": self.gateway,
            "version": self.version,
            "rules_version": self._rules_version,
        }
        if graceful is not None:
            status["graceful"] = graceful
        if at:  # not in the will: it is sent long after it was written
            status["at"] = self._clock.now().isoformat()
        return json.dumps(status).encode()

    def _no_connack_reason(self) -> str:
        reason = f"no answer to CONNECT from {self.url} within {self._connect_timeout:g}s"
        if self.protocol == "5":
            reason += " (an MQTT 3.1.1-only broker, such as the embedded one, ignores MQTT 5)"
        return reason
